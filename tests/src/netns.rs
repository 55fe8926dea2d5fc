//! Network namespaces: create them, run code or programs inside them, delete them.
//!
//! A namespace is named (it appears in `ip netns list`) so people and tools such as
//! `ip netns exec`, `tcpdump` or `nsenter` can reach it while a test runs. Names start with
//! the process's [`crate::cleanup::run_prefix`], which is how leftovers are recognized.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns};

use crate::cleanup;
use crate::error::{HarnessError, Result};

/// Where iproute2 keeps the bind mounts that name network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted (with every process still inside it) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` with its loopback up.
    ///
    /// The name is recorded for emergency cleanup before the namespace exists, so an
    /// interrupt at any point leaves nothing behind.
    pub fn create(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        ensure_can_build()?;
        cleanup::track_netns(&name);
        let netns = NetNs { name };
        ip(&["netns", "add", &netns.name])?;
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace open; what `setns(2)` and ZDS are handed.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <this namespace> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    ///
    /// Only that thread changes namespace, so tests running in parallel are unaffected. A
    /// panic in `f` propagates to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        mesh_core::netns::run_in(&file, f).map_err(|err| {
            HarnessError::io(format!("entering network namespace {}", self.name), err)
        })
    }

    /// A [`Command`] whose process starts inside this namespace (files and mounts are the
    /// host's; only the network is the namespace's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in(&self.path(), program)
    }

    /// Sets a sysctl (`net.ipv4.ip_forward`, ...) inside this namespace only.
    ///
    /// `/proc/sys/net` shows the namespace of the thread that opens it, so the write is
    /// made from a thread inside the namespace; the host's value never changes.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .map_err(|err| HarnessError::io(format!("{key}={value} in {}", self.name), err))
    }
}

/// A [`Command`] whose process starts inside the network namespace at `netns` (a
/// `/run/netns/<name>` bind mount or `/proc/<pid>/ns/net`).
pub fn command_in(netns: &Path, program: impl AsRef<OsStr>) -> Result<Command> {
    let file = File::open(netns)
        .map_err(|err| HarnessError::io(format!("opening {}", netns.display()), err))?;
    let mut command = Command::new(program);
    // SAFETY: the hook runs in the forked child before exec; it only calls setns(2),
    // which is async-signal-safe, and converts an errno without allocating.
    unsafe {
        command
            .pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(command)
}

impl NetNs {
    /// Reads a sysctl inside this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path))?
            .map(|value| value.trim().to_string())
            .map_err(|err| HarnessError::io(format!("reading {key} in {}", self.name), err))
    }

    fn open(&self) -> Result<File> {
        File::open(self.path())
            .map_err(|err| HarnessError::io(format!("opening {}", self.path().display()), err))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = delete(&self.name) {
            eprintln!(
                "harness: could not delete network namespace {}: {err}",
                self.name
            );
        }
        cleanup::untrack_netns(&self.name);
    }
}

/// Kills every process still inside the namespace `name`, then deletes it.
///
/// A namespace whose name is gone but that still holds a process would live on unseen,
/// so the processes go first.
pub(crate) fn delete(name: &str) -> Result<()> {
    if !PathBuf::from(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    match ip(&["netns", "delete", name]) {
        // Someone else (a parallel sweep, the Ctrl-C handler) deleted it first: fine.
        Err(_) if !PathBuf::from(NETNS_DIR).join(name).exists() => Ok(()),
        result => result.map(drop),
    }
}

/// Names of the network namespaces that exist now.
pub fn list() -> Result<Vec<String>> {
    let listing = ip(&["netns", "list"])?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Runs `ip <args>` and returns its stdout, or an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    run_tool("ip", "iproute2", args)
}

/// Runs a system tool to completion; names the Debian package when the tool is missing.
pub(crate) fn run_tool(
    program: &'static str,
    package: &'static str,
    args: &[&str],
) -> Result<String> {
    let output = Command::new(program).args(args).output().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            HarnessError::MissingTool { program, package }
        } else {
            HarnessError::io(format!("running {program}"), err)
        }
    })?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails with a clear message unless this process can build namespaces: root and iproute2.
pub fn ensure_can_build() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(HarnessError::NotRoot);
    }
    run_tool("ip", "iproute2", &["-V"]).map(drop)
}
