//! Data-path threads with connection affinity.
//!
//! On a work-stealing runtime the tasks of one tunnel (the app's connection, its HTTP/2
//! connection's driver, the peer's tunnel task) end up on different threads, and every
//! hand-off between them is a cross-thread wake-up: a futex call and often an
//! inter-processor interrupt (a client ztunnel made ~22,000 futex calls carrying one bulk
//! stream for 5 s; a TLS relay 222). Here each worker is its own single-threaded runtime:
//! a connection is placed once, on the worker with the fewest live connections, and
//! everything it spawns (tunnels, pooled HBONE connections opened for it, their drivers)
//! runs on that worker. The pool keys its connections by [`current`] worker, so a tunnel
//! always rides an HBONE connection driven by its own thread.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::hbone::holding::Holding;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this thread is, if it is one.
pub fn current() -> Option<usize> {
    CURRENT.get()
}

/// A set of worker threads; dropping it stops them (their tasks are dropped).
#[derive(Debug)]
pub struct Workers {
    workers: Box<[Worker]>,
    /// Where the search for the least busy worker starts, so ties rotate.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` (at least one) threads named `<name>-<index>`.
    pub fn start(count: usize, name: &str) -> std::io::Result<Arc<Self>> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    CURRENT.set(Some(index));
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Arc::new(Workers {
            workers: workers.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }))
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Live connections per worker (placed and not yet finished), for tests and admin.
    pub fn live(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs a connection on the worker with the fewest live connections; it counts as
    /// live there until it finishes.
    pub fn place<F>(&self, connection: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let worker = self.least_busy();
        worker.handle.spawn(worker.counted(connection))
    }

    fn least_busy(&self) -> &Worker {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[0])
    }
}

impl Worker {
    /// `connection`, counted live here until it ends. Not an `async` block holding the
    /// count: that would store the connection's future twice for its whole life.
    fn counted<F>(&self, connection: F) -> Holding<F, LiveGuard> {
        self.live.fetch_add(1, Ordering::Relaxed);
        Holding::new(connection, LiveGuard(self.live.clone()))
    }
}

/// Takes a connection off its worker's count when its task ends or is dropped.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_run_there() {
        let workers = Workers::start(2, "test-worker").unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let mut placed = Vec::new();
        for _ in 0..4 {
            let mut released = released.clone();
            placed.push(workers.place(async move {
                let here = current();
                let _ = released.wait_for(|r| *r).await;
                // Still on the same thread after waiting: a current-thread runtime.
                assert_eq!(current(), here);
                here
            }));
        }
        // Counted while they run.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(workers.live(), [2, 2]);
        release.send_replace(true);
        let mut on = Vec::new();
        for task in placed {
            on.push(task.await.unwrap());
        }
        on.sort();
        assert_eq!(on, [Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(workers.live(), [0, 0]);
        assert_eq!(current(), None, "the test's own thread is no worker");
    }

    #[test]
    fn a_placed_connection_is_held_once() {
        async fn connection() {
            let buffer = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&buffer);
        }
        let workers = Workers::start(1, "test-worker").unwrap();
        let alone = std::mem::size_of_val(&connection());
        let counted = workers.workers[0].counted(connection());
        assert!(std::mem::size_of_val(&counted) <= alone + 16);
    }

    #[tokio::test]
    async fn a_new_connection_goes_to_the_idle_worker_whatever_the_rotation() {
        let workers = Workers::start(2, "test-worker").unwrap();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let long = workers.place(async move {
            let here = current();
            let _ = released.await;
            here
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // Round robin would put every other one beside the long connection.
        let mut on = Vec::new();
        for _ in 0..4 {
            on.push(workers.place(async { current() }).await.unwrap());
        }
        let _ = release.send(());
        let busy = long.await.unwrap();
        assert!(busy.is_some());
        assert!(
            on.iter().all(|w| w.is_some() && *w != busy),
            "{busy:?} vs {on:?}"
        );
    }
}
