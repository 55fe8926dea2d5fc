//! The small real applications that run in simulated pods: a TCP echo server, an HTTP echo
//! server (HTTP/1.1 and HTTP/2 on one port) that answers with its pod's name and the
//! request's headers, and clients for both.
//!
//! Tests start the servers as processes of the `mesh-testapp` binary inside pods, and call
//! the clients either through that binary or directly with [`crate::Pod::block_on`].

pub mod http_echo;
pub mod tcp_echo;
pub mod tcp_sink;

use std::path::PathBuf;

use crate::error::{HarnessError, Result};

/// What a server prints on stdout once it accepts connections; the harness waits for it.
pub const READY_LINE: &str = "listening on";

/// Environment variable that overrides where `mesh-testapp` is found.
pub const TESTAPP_ENV: &str = "MESH_TESTAPP";

/// Finds the `mesh-testapp` binary built alongside the running test, bench or demo.
pub fn testapp_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(TESTAPP_ENV) {
        return Ok(PathBuf::from(path));
    }
    workspace_binary("mesh-testapp")
}

/// Finds a binary of this workspace (`ztunnel`, `istio-cni-agent`, ...) built alongside
/// the running test, bench or demo.
///
/// Cargo puts test executables in `target/<profile>/deps/` and binaries in
/// `target/<profile>/`, so both the executable's directory and its parent are searched.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|err| HarnessError::io("locating the running executable", err))?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            HarnessError::Spec(format!(
                "{name} not found at {candidates:?}; build the workspace's binaries first \
             (`cargo build --workspace --bins`; `cargo test --workspace` does it)"
            ))
        })
}
