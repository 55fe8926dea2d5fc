//! The binary describes itself and refuses to run while it has nothing real to run.

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_waypoint");

#[test]
fn help_says_what_it_is() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("optional L7 proxy of the ambient mesh"),
        "{help}"
    );
}

#[test]
fn running_it_fails_honestly() {
    let output = Command::new(BINARY).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not implemented yet"), "{stderr}");
}
