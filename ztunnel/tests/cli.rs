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

/// The environment a running ztunnel was started with (`/proc/<pid>/environ`), once it
/// has started: the first exec may still be replacing itself.
fn environment_of(child: &std::process::Child) -> Vec<String> {
    let path = format!("/proc/{}/environ", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let environ = std::fs::read(&path).unwrap_or_default();
        let vars: Vec<String> = environ
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if vars.iter().any(|v| v.starts_with("GLIBC_TUNABLES="))
            || std::time::Instant::now() > deadline
        {
            return vars;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A ztunnel that waits for its ZDS socket, on ports of its own.
fn start_waiting(tunables: Option<&str>) -> std::process::Child {
    let dir = std::env::temp_dir().join(format!("ztunnel-cli-{}", std::process::id()));
    let config = dir.join(format!("config-{}", tunables.is_some()));
    std::fs::create_dir_all(&config).unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["--node-name", "n1", "--config-dir"])
        .arg(&config)
        .arg("--ca-dir")
        .arg(dir.join(format!("ca-{}", tunables.is_some())))
        .arg("--zds-socket")
        .arg(dir.join("no-agent.sock"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--readiness-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env_remove("GLIBC_TUNABLES")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(tunables) = tunables {
        command.env("GLIBC_TUNABLES", tunables);
    }
    command.spawn().unwrap()
}

#[test]
#[cfg(target_env = "gnu")]
fn it_runs_with_its_heap_tunables_unless_the_operator_set_their_own() {
    let mut ours = start_waiting(None);
    let vars = environment_of(&ours);
    let _ = ours.kill();
    let _ = ours.wait();
    // glibc splits the variable in place as it parses it (the environment's memory is what
    // /proc shows), so its settings may follow one another as separate strings.
    let tunables = vars
        .iter()
        .skip_while(|v| !v.starts_with("GLIBC_TUNABLES="))
        .take(2)
        .cloned()
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        tunables.starts_with(&format!(
            "GLIBC_TUNABLES={}",
            ztunnel::memory::HEAP_TUNABLES
        )),
        "{vars:?}"
    );

    let mut theirs = start_waiting(Some("glibc.malloc.check=0"));
    let vars = environment_of(&theirs);
    let _ = theirs.kill();
    let _ = theirs.wait();
    assert!(
        vars.contains(&"GLIBC_TUNABLES=glibc.malloc.check=0".to_string()),
        "{vars:?}"
    );
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("ztunnel-cli-{}", std::process::id())),
    );
}
