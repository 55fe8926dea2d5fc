//! Doing work inside another network namespace (a pod's), without moving the process.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a
//! short-lived thread that enters the namespace first. Sockets created there stay in
//! that namespace for their whole life, wherever they are used afterwards; child
//! processes spawned there (iptables) start in it too.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a fresh thread inside the network namespace `netns` (an open
/// `/proc/<pid>/ns/net` or `/run/netns/<name>`), and returns its result.
///
/// A panic in `f` propagates to the caller.
pub fn run_in<T: Send>(netns: &(impl AsFd + Sync), f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Opens a network namespace by path, for [`run_in`].
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("opening network namespace {}: {err}", path.display()),
        )
    })
}
