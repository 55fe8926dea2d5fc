//! The binaries describe themselves and refuse to run while they have nothing real to run.

use std::process::Command;

const BINARIES: [(&str, &str); 2] = [
    (env!("CARGO_BIN_EXE_istio-cni"), "a chained CNI plugin"),
    (
        env!("CARGO_BIN_EXE_istio-cni-agent"),
        "the node agent of istio-cni",
    ),
];

#[test]
fn help_says_what_each_is() {
    for (binary, needle) in BINARIES {
        let output = Command::new(binary).arg("--help").output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains(needle), "{binary}: {help}");
    }
}

#[test]
fn running_them_fails_honestly() {
    for (binary, _) in BINARIES {
        let output = Command::new(binary).output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not implemented yet"), "{binary}: {stderr}");
    }
}
