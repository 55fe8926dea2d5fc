//! Making sure the harness leaves nothing behind: on drop, on panic, on Ctrl-C, and after
//! a test process that was killed outright.
//!
//! * Drop and panic: [`crate::NetNs`] and [`crate::Process`] clean up in `Drop`, which also
//!   runs while a panic unwinds.
//! * Ctrl-C / SIGTERM: [`install_interrupt_handler`] kills every tracked process group,
//!   deletes every tracked namespace and work directory (which holds the CA's private
//!   key), then exits.
//! * SIGKILL: nothing runs, so [`sweep_stale`] (run when a process first builds a cluster)
//!   deletes namespaces and work directories whose names carry the pid of a harness
//!   process that no longer exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::Result;
use crate::netns;

/// What every harness namespace name starts with.
pub const NAME_PREFIX: &str = "mtest-";

#[derive(Default)]
struct Registry {
    namespaces: BTreeSet<String>,
    process_groups: BTreeSet<i32>,
    work_dirs: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: BTreeSet::new(),
    process_groups: BTreeSet::new(),
    work_dirs: BTreeSet::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The prefix shared by all namespaces of this process: `mtest-<pid>-`.
pub fn run_prefix() -> String {
    format!("{NAME_PREFIX}{}-", std::process::id())
}

/// A prefix no other cluster of any process uses: `mtest-<pid>-<n>`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}{}", run_prefix(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn track_netns(name: &str) {
    registry().namespaces.insert(name.to_string());
}

pub(crate) fn untrack_netns(name: &str) {
    registry().namespaces.remove(name);
}

pub(crate) fn track_process_group(pgid: i32) {
    registry().process_groups.insert(pgid);
}

pub(crate) fn untrack_process_group(pgid: i32) {
    registry().process_groups.remove(&pgid);
}

/// A cluster's private work directory (`<tmp>/mtest-<pid>-<n>-*`, mode 0700): removed on
/// drop, and by the interrupt handler, which exits without running drops.
#[derive(Debug)]
pub(crate) struct WorkDir(tempfile::TempDir);

impl WorkDir {
    /// Creates it, named after the cluster's unique prefix `id`.
    pub(crate) fn create(id: &str) -> std::io::Result<WorkDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()?;
        registry().work_dirs.insert(dir.path().to_path_buf());
        Ok(WorkDir(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        registry().work_dirs.remove(self.0.path());
    }
}

/// Makes Ctrl-C (and SIGTERM) tear down every cluster of this process before exiting.
///
/// Installed once per process; if the program already has its own handler, that one is
/// kept and only drop-based cleanup applies.
pub fn install_interrupt_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            eprintln!("harness: interrupted, removing the simulated cluster(s)");
            remove_everything_tracked();
            std::process::exit(130);
        });
        if let Err(err) = installed {
            eprintln!("harness: no Ctrl-C cleanup ({err}); drop-based cleanup still applies");
        }
    });
}

/// Kills every tracked process group and deletes every tracked namespace, now.
fn remove_everything_tracked() {
    let (groups, namespaces, dirs) = {
        let registry = registry();
        (
            registry.process_groups.clone(),
            registry.namespaces.clone(),
            registry.work_dirs.clone(),
        )
    };
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    for name in namespaces {
        if let Err(err) = netns::delete(&name) {
            eprintln!("harness: could not delete {name}: {err}");
        }
    }
    for dir in dirs {
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            eprintln!("harness: could not remove {}: {err}", dir.display());
        }
    }
}

/// Runs [`sweep_stale`] the first time a process builds a cluster, reporting on stderr;
/// a failed sweep is reported and does not stop the build.
pub fn sweep_stale_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| match sweep_stale() {
        Ok(removed) => {
            for name in removed {
                eprintln!("harness: removed {name}, left by a test process that died");
            }
        }
        Err(err) => eprintln!("harness: could not sweep leftover namespaces: {err}"),
    });
}

/// Deletes namespaces and work directories left by harness processes that died without
/// cleaning up (SIGKILL, OOM), and returns their names. Those of live processes are never
/// touched, so parallel test binaries are safe.
pub fn sweep_stale() -> Result<Vec<String>> {
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut removed = Vec::new();
    for name in netns::list()? {
        if dead(&name) {
            netns::delete(&name)?;
            removed.push(name);
        }
    }
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path().display().to_string());
        }
    }
    Ok(removed)
}

/// This process's cluster work directories that exist now (for tests of the cleanup).
pub fn work_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{NAME_PREFIX}{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// The pid encoded in a harness namespace name (`mtest-<pid>-...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_harness_names() {
        assert_eq!(owner_pid("mtest-4242-3-n1"), Some(4242));
        assert_eq!(owner_pid("mtest-x-3"), None);
        assert_eq!(owner_pid("cni-1234"), None);
    }

    #[test]
    fn unique_prefixes_differ_and_carry_this_pid() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
    }
}
