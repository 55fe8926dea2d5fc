//! The agent describes itself and names the settings it lacks (the plugin's own CLI tests
//! are in `istio-cni/plugin/tests`).

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_istio-cni-agent");

#[test]
fn help_says_what_it_is() {
    let output = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("the node agent of istio-cni"), "{help}");
}

#[test]
fn run_by_hand_it_says_what_is_missing() {
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
