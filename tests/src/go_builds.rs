//! Test infrastructure built from Go modules by a `scripts/build-*` script, which caches it
//! outside the repo and prints where it is.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};

/// The directory `$env` names, else what `scripts/<script>` prints (building it if needed).
pub fn built(env: &str, script: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(env) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|err| HarnessError::io(format!("running {}", script.display()), err))?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            command: script.display().to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// The standard CNI plugins (ptp, bridge, host-local, loopback) and cnitool, the CNI
/// project's reference runtime (`$MESH_CNI_BIN` or `scripts/build-cni-plugins`).
pub fn cni_plugins() -> Result<PathBuf> {
    built("MESH_CNI_BIN", "build-cni-plugins")
}
