//! The binary describes itself and names the settings it lacks.

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_ztunnel");

#[test]
fn help_says_what_it_is() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("per-node L4 proxy of the ambient mesh"),
        "{help}"
    );
}

#[test]
fn missing_settings_are_named() {
    for (args, missing) in [
        (&[][..], "--node-name"),
        (&["--node-name", "n1"][..], "--config-dir"),
    ] {
        let output = Command::new(BINARY)
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
