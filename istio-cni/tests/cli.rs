//! The binaries describe themselves; run by hand (not by a container runtime), the plugin
//! says so; the agent names the settings it lacks.

use std::process::Command;

const PLUGIN: &str = env!("CARGO_BIN_EXE_istio-cni");
const AGENT: &str = env!("CARGO_BIN_EXE_istio-cni-agent");

#[test]
fn help_says_what_each_is() {
    for (binary, needle) in [
        (PLUGIN, "a chained CNI plugin"),
        (AGENT, "the node agent of istio-cni"),
    ] {
        let output = Command::new(binary).arg("--help").output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains(needle), "{binary}: {help}");
    }
}

#[test]
fn run_by_hand_each_says_what_is_missing() {
    let output = Command::new(PLUGIN)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("CNI_COMMAND is not set"));

    for (args, missing) in [
        (&[][..], "--node-name"),
        (&["--node-name", "n1"][..], "--config-dir"),
    ] {
        let output = Command::new(AGENT)
            .args(args)
            .env_remove("NODE_NAME")
            .env_remove("MESH_CONFIG_DIR")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(missing), "{stderr}");
    }
}
