//! The plugin describes itself, and run by hand (not by a container runtime) it says what
//! is missing.

use std::process::Command;

const PLUGIN: &str = env!("CARGO_BIN_EXE_istio-cni");

#[test]
fn help_says_what_it_is() {
    let output = Command::new(PLUGIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("a chained CNI plugin"), "{help}");
}

#[test]
fn run_by_hand_it_says_what_is_missing() {
    let output = Command::new(PLUGIN)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("CNI_COMMAND is not set"));
}
