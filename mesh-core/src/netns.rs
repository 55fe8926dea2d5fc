//! Doing work inside another network namespace (a pod's), without moving the process.
//!
//! `setns(2)` changes the namespace of the calling thread only. [`run_in`] runs work on a
//! short-lived thread that enters the namespace first (for anything that may block or
//! spawn: iptables); [`run_here`] switches the calling thread in and straight back, for
//! the proxy's per-connection socket creation, where a thread per connection would cost
//! more than the connection. Sockets created in a namespace stay in it for their whole
//! life, wherever they are used afterwards.

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

thread_local! {
    /// The namespace this thread started in, opened once, to come back to.
    static HOME: std::cell::OnceCell<io::Result<File>> = const { std::cell::OnceCell::new() };
}

/// Runs `f` on the calling thread switched into `netns`, then switches back: a pair of
/// `setns` calls (a few µs) instead of a thread. `f` must be short and must not block or
/// yield (it runs on an async worker). If switching back fails the process aborts: a
/// worker left in a pod's namespace would carry other pods' traffic in the wrong network.
pub fn run_here<T>(netns: &impl AsFd, f: impl FnOnce() -> T) -> io::Result<T> {
    HOME.with(|home| {
        let home = match home.get_or_init(|| File::open("/proc/thread-self/ns/net")) {
            Ok(file) => file,
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("this thread's namespace: {err}"),
                ));
            }
        };
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Err(err) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("fatal: cannot return to this thread's network namespace: {err}");
            std::process::abort();
        }
        result.map_err(|panic| std::panic::resume_unwind(panic))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    /// A fresh network namespace, held open by the returned file (needs root).
    fn fresh_namespace() -> File {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn run_here_enters_and_returns() {
        let home = inode("/proc/thread-self/ns/net");
        let other = fresh_namespace();
        let inside = run_here(&other, || inode("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(inside, home);
        assert_eq!(
            inside,
            other
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        );
        assert_eq!(inode("/proc/thread-self/ns/net"), home, "back home");
        // A socket made inside stays there: home's loopback cannot reach it.
        let inside_listener = run_here(&other, || std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = inside_listener.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        // A panic inside still comes home.
        let panicked = std::panic::catch_unwind(|| run_here(&other, || panic!("inside")));
        assert!(panicked.is_err());
        assert_eq!(
            inode("/proc/thread-self/ns/net"),
            home,
            "back home after a panic"
        );
    }
}
