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

#[test]
fn a_worker_thread_count_out_of_range_is_named() {
    for value in ["0", "65", "many"] {
        let output = Command::new(BINARY)
            .args(["--node-name", "n1", "--config-dir", "/nonexistent"])
            .args(["--worker-threads", value])
            .env_remove("ZTUNNEL_WORKER_THREADS")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--worker-threads"), "{value}: {stderr}");
    }
    // Istio's variable sets it too.
    let output = Command::new(BINARY)
        .args(["--node-name", "n1", "--config-dir", "/nonexistent"])
        .env("ZTUNNEL_WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--worker-threads"));
}

/// `build.rs` links with packed relative relocations (idle RSS): the binary carries a
/// DT_RELR table and only a small RELA one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn relative_relocations_are_packed() {
    let output = Command::new("readelf")
        .args(["--dynamic", BINARY])
        .output()
        .expect("readelf (binutils) runs");
    assert!(output.status.success());
    let dynamic = String::from_utf8_lossy(&output.stdout);
    assert!(dynamic.contains("(RELR)"), "no DT_RELR entry:\n{dynamic}");
}
