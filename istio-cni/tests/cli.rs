//! The binaries describe themselves; the plugin refuses to run until it is real; the agent
//! names the settings it lacks.

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
fn the_plugin_fails_honestly_and_the_agent_names_missing_settings() {
    let output = Command::new(PLUGIN).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not implemented yet"));

    let output = Command::new(AGENT)
        .env_remove("NODE_NAME")
        .env_remove("MESH_CONFIG_DIR")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--config-dir") && stderr.contains("--node-name"),
        "{stderr}"
    );
}
