//! Programs running inside a pod or node: output captured to files, stopped on drop.
//!
//! Each program runs in a process group of its own, so stopping it also stops anything it
//! started, and Ctrl-C at the terminal reaches the harness (which cleans up) rather than the
//! programs directly.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cleanup;
use crate::error::{HarnessError, Result};

/// How long a program may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running program whose stdout and stderr are kept for failure messages.
#[derive(Debug)]
pub struct Process {
    label: String,
    pid: i32,
    child: Mutex<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Process {
    /// Starts `command` with its output sent to `<log_dir>/<label>.{stdout,stderr}`.
    pub fn spawn(label: &str, mut command: Command, log_dir: &Path) -> Result<Self> {
        let stdout_path = log_dir.join(format!("{label}.stdout"));
        let stderr_path = log_dir.join(format!("{label}.stderr"));
        let create = |path: &Path| {
            File::create(path)
                .map_err(|err| HarnessError::io(format!("creating {}", path.display()), err))
        };
        command
            .stdin(Stdio::null())
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|err| HarnessError::io(format!("starting {label} ({command:?})"), err))?;
        let pid = child.id() as i32;
        cleanup::track_process_group(pid);
        Ok(Process {
            label: label.to_string(),
            pid,
            child: Mutex::new(child),
            stdout_path,
            stderr_path,
        })
    }

    /// The name it was started under, unique within its cluster.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything it has written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both outputs, headed by the label: what a failing test prints.
    pub fn logs(&self) -> String {
        format!(
            "----- {} (pid {}) stdout -----\n{}----- {} stderr -----\n{}",
            self.label,
            self.pid,
            self.stdout(),
            self.label,
            self.stderr()
        )
    }

    /// Its exit status if it has exited.
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        self.lock_child()
            .try_wait()
            .map_err(|err| HarnessError::io(format!("checking on {}", self.label), err))
    }

    /// Waits until its stdout contains `needle` (a readiness line such as `listening on`).
    ///
    /// Fails at once, with its output, if it exits first.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exit_status()? {
                return Err(HarnessError::Exited {
                    label: self.label.clone(),
                    status: status.to_string(),
                    awaited: format!("printing {needle:?}"),
                    logs: self.logs(),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{} to print {needle:?}", self.label),
                    waited: timeout,
                    last: self.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops it: SIGTERM to its group, then SIGKILL after a grace period; returns how it
    /// exited. Stopping a program that already exited just reports its status.
    pub fn stop(&self) -> Result<ExitStatus> {
        let mut child = self.lock_child();
        if let Ok(Some(status)) = child.try_wait() {
            cleanup::untrack_process_group(self.pid);
            return Ok(status);
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
                    break child.wait();
                }
                Err(err) => break Err(err),
            }
        };
        // Children it left in its group go too.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        cleanup::untrack_process_group(self.pid);
        status.map_err(|err| HarnessError::io(format!("stopping {}", self.label), err))
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("harness: {err}");
        }
    }
}

/// Runs a copy of `binary` as user 65534 (nobody) with `args`, from `/`, and returns its
/// output: how tests prove something needs no privileges. The copy sits in a directory
/// anyone may enter (the checkout may be under a 0700 directory). A child forked by another
/// test thread while the copy was open for writing holds it until that child execs, and the
/// kernel refuses to run it meanwhile (ETXTBSY): that is retried for up to 5 s.
pub fn run_copy_unprivileged(
    binary: &Path,
    args: &[&str],
) -> std::io::Result<std::process::Output> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.path().join(binary.file_name().unwrap_or_default());
    std::fs::copy(binary, &copy)?;
    let run = || {
        Command::new(&copy)
            .args(args)
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
    };
    crate::eventually(
        "the copied binary to be runnable",
        Duration::from_secs(5),
        || match run() {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => Err(err),
            other => Ok(other),
        },
    )
    .map_err(|timeout| std::io::Error::other(timeout.to_string()))?
}
