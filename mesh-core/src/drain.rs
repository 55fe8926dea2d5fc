//! Graceful shutdown, written once for every listener the mesh runs (a pod's in-pod
//! listeners, the HBONE server, the node's HTTP endpoints), on tokio-util's cancellation
//! tokens and task tracker.
//!
//! Whoever decides when to stop holds the [`Drain`]; listeners and their connections hold
//! a [`DrainWatch`]. [`Drain::drain`] stops accepting (listeners close; HBONE connections
//! send GOAWAY), lets tracked connections finish for up to a limit, then closes what is
//! left. Dropping the `Drain` without draining closes everything at once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::workers::Workers;

/// Starts the drain; the other half of [`DrainWatch`].
#[derive(Debug)]
pub struct Drain {
    watch: DrainWatch,
}

/// Held by listeners and connections: when to stop accepting, and where to spawn
/// connections so the drain can wait for them.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    stop: Signal,
    force: Signal,
    tracker: TaskTracker,
    /// Where accepted connections run: placed on these threads, or (none) spawned on the
    /// accepting runtime.
    workers: Option<Arc<Workers>>,
}

/// A one-way signal that hot futures can watch cheaply: raised once, never lowered.
///
/// A token's own wait takes two locks on every poll (the token's and its waiter list's,
/// shared by every connection of a listener); [`Signal::raised`] takes them only when it
/// registers, and after that a poll by the same task is one atomic load.
#[derive(Debug, Clone, Default)]
struct Signal {
    token: CancellationToken,
    raised: Arc<AtomicBool>,
}

impl Signal {
    fn raise(&self) {
        // Set before the token wakes the waiters, so a woken waiter sees it.
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    fn raised(&self) -> Raised {
        Raised {
            raised: self.raised.clone(),
            registered: None,
            wait: self.token.clone().cancelled_owned(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes once its [`Signal`] is raised.
    struct Raised {
        raised: Arc<AtomicBool>,
        // The waker the token's wait holds; while the task polling is the same one, the
        // token wakes it when raised and polling the wait again would only take its locks.
        registered: Option<Waker>,
        #[pin]
        wait: WaitForCancellationFutureOwned,
    }
}

impl Future for Raised {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if this.wait.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A new drain and its watch; connections run on the runtime that accepts them.
pub fn new() -> (Drain, DrainWatch) {
    new_with(None)
}

/// A new drain whose listeners place each connection they accept on one of `workers`
/// (see [`crate::workers`]).
pub fn new_on(workers: Arc<Workers>) -> (Drain, DrainWatch) {
    new_with(Some(workers))
}

fn new_with(workers: Option<Arc<Workers>>) -> (Drain, DrainWatch) {
    let watch = DrainWatch {
        stop: Signal::default(),
        force: Signal::default(),
        tracker: TaskTracker::new(),
        workers,
    };
    (
        Drain {
            watch: watch.clone(),
        },
        watch,
    )
}

impl Drain {
    /// Stops accepting, waits up to `limit` for the tracked connections, then closes those
    /// left. Returns whether all finished in time.
    pub async fn drain(self, limit: Duration) -> bool {
        let watch = &self.watch;
        watch.stop.raise();
        watch.tracker.close();
        let finished = tokio::time::timeout(limit, watch.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::info!(
                left = watch.tracker.len(),
                "drain time over; closing remaining connections"
            );
            watch.force.raise();
            watch.tracker.wait().await;
        }
        finished
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.watch.stop.raise();
        self.watch.force.raise();
    }
}

impl DrainWatch {
    /// Completes once the drain has started: stop accepting, ask peers to go away. Made
    /// once and polled by one task, it costs an atomic load per poll (a connection's loop
    /// polls it on every wake-up).
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stop.raised()
    }

    /// Whether the drain has started.
    pub fn is_stopping(&self) -> bool {
        self.stop.raised.load(Ordering::Acquire)
    }

    /// Runs a connection on its own task, which the drain waits for and closes (drops)
    /// when the drain time is over.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(UntilForced {
            connection,
            force: self.force.raised(),
        });
    }

    /// Connections still running.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Serves an accepted connection with `serve`: here, or on the least busy worker.
    fn serve_accepted<F, Fut>(&self, stream: TcpStream, peer: SocketAddr, serve: &Arc<F>)
    where
        F: Fn(TcpStream, SocketAddr) -> Option<Fut> + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(workers) = &self.workers else {
            if let Some(connection) = serve(stream, peer) {
                self.spawn(connection);
            }
            return;
        };
        // The stream is registered with the accepting thread's reactor, which would then
        // wake the worker for every readable event: it is registered again on the worker.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, error = %err, "accepted connection lost moving it to a worker");
                return;
            }
        };
        workers.place(self.tracker.track_future(UntilForced {
            connection: ServeMoved::new(stream, peer, serve.clone()),
            force: self.force.raised(),
        }));
    }
}

pin_project_lite::pin_project! {
    /// An accepted stream on its way to a worker: registered with the reactor of the
    /// thread that first polls it, then served. A named future, so the task holds the
    /// connection's future once (an `async` block keeps `serve`'s `Option` beside it).
    #[project = ServeMovedProj]
    enum ServeMoved<F, Fut> {
        Start { stream: Option<std::net::TcpStream>, peer: SocketAddr, serve: Arc<F> },
        Serving { #[pin] connection: Fut },
        Done,
    }
}

impl<F, Fut> ServeMoved<F, Fut>
where
    F: Fn(TcpStream, SocketAddr) -> Option<Fut>,
{
    fn new(stream: std::net::TcpStream, peer: SocketAddr, serve: Arc<F>) -> Self {
        ServeMoved::Start {
            stream: Some(stream),
            peer,
            serve,
        }
    }
}

impl<F, Fut> Future for ServeMoved<F, Fut>
where
    F: Fn(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ServeMovedProj::Start {
                    stream,
                    peer,
                    serve,
                } => {
                    let peer = *peer;
                    let next = match stream.take().map(TcpStream::from_std) {
                        Some(Ok(stream)) => match serve(stream, peer) {
                            Some(connection) => ServeMoved::Serving { connection },
                            None => ServeMoved::Done,
                        },
                        Some(Err(err)) => {
                            tracing::warn!(%peer, error = %err, "accepted connection lost moving it to a worker");
                            ServeMoved::Done
                        }
                        None => ServeMoved::Done,
                    };
                    self.set(next);
                }
                ServeMovedProj::Serving { connection } => return connection.poll(cx),
                ServeMovedProj::Done => return Poll::Ready(()),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that ends early when the drain time is over. A named future rather than
    /// an `async` block with `select!`: those hold the connection's future twice (the
    /// captured value and the selected one), which doubled the memory of every idle
    /// proxied connection. It is polled on every wake-up of the connection, so the drain
    /// is watched through a [`Signal`].
    struct UntilForced<F> {
        #[pin]
        connection: F,
        #[pin]
        force: Raised,
    }
}

impl<F: Future<Output = ()>> Future for UntilForced<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.force.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.connection.poll(cx)
    }
}

/// Accepts on `listener` until the drain starts, each accepted connection served on its
/// own tracked task (on a worker, for a watch made by [`new_on`]) by what `serve` returns
/// (`None`: refused, the stream is dropped). An accept error (out of descriptors, say)
/// backs off instead of spinning. The listener is closed on return, so new connections
/// are refused from then on.
pub async fn accept_until_drained<F, Fut>(
    listener: TcpListener,
    watch: &DrainWatch,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Option<Fut> + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let stopping = watch.stopping();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            biased;
            () = &mut stopping => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => watch.serve_accepted(stream, peer, &serve),
                Err(err) => {
                    tracing::warn!(listener = what, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_finish_within_the_limit_or_are_closed_after_it() {
        let (drain, watch) = new();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        for secs in [1, 5, 100] {
            let done_tx = done_tx.clone();
            watch.spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let _ = done_tx.send(secs);
            });
        }
        drop(done_tx);
        let started = tokio::time::Instant::now();
        assert!(!drain.drain(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let mut finished = Vec::new();
        while let Some(secs) = done.recv().await {
            finished.push(secs);
        }
        assert_eq!(finished, [1, 5], "the 100 s one was closed at the limit");
        assert_eq!(watch.connections(), 0);
    }

    #[test]
    fn a_tracked_connection_is_held_once() {
        async fn connection() {
            let buffer = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&buffer);
        }
        let (_drain, watch) = new();
        let alone = std::mem::size_of_val(&connection());
        let wrapped = UntilForced {
            connection: connection(),
            force: watch.force.raised(),
        };
        assert!(std::mem::size_of_val(&wrapped) < alone + 256);
    }

    #[test]
    fn a_connection_moved_to_a_worker_is_held_once() {
        async fn connection() {
            let buffer = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&buffer);
        }
        let alone = std::mem::size_of_val(&connection());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let stream = std::net::TcpStream::connect(peer).unwrap();
        let moved = ServeMoved::new(stream, peer, Arc::new(|_, _| Some(connection())));
        assert!(std::mem::size_of_val(&moved) < alone + 256);
    }

    #[tokio::test]
    async fn a_raised_signal_wakes_a_waiter_registered_before_it() {
        let signal = Signal::default();
        let mut raised = std::pin::pin!(signal.raised());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(raised.as_mut().poll(&mut cx).is_pending());
        // Polled again by the same waker: the registration stands.
        assert!(raised.as_mut().poll(&mut cx).is_pending());
        // The waiter of another task (another waker) is woken by the raise.
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.raised().await }
        });
        tokio::task::yield_now().await;
        signal.raise();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the raise")
            .unwrap();
        assert!(raised.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_connections_are_closed_however_often_they_were_polled() {
        let (drain, watch) = new();
        // A connection woken many times before the drain (each wake a poll of its
        // UntilForced), then idle forever: only the force ends it.
        let (ping, mut pings) = tokio::sync::mpsc::channel::<()>(1);
        watch.spawn(async move {
            while pings.recv().await.is_some() {}
            std::future::pending::<()>().await;
        });
        for _ in 0..100 {
            ping.send(()).await.unwrap();
        }
        // A lost registration would leave the drain waiting for ever: bounded, it fails.
        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            drain.drain(Duration::from_millis(50)),
        )
        .await
        .expect("the forced connection closed at the limit");
        assert!(!drained);
        assert_eq!(watch.connections(), 0);
    }

    #[tokio::test]
    async fn the_listener_closes_when_the_drain_starts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, watch) = new();
        let accepting = {
            let watch = watch.clone();
            tokio::spawn(async move {
                accept_until_drained(listener, &watch, "test", |_, _| Some(async {})).await
            })
        };
        TcpStream::connect(addr).await.unwrap();
        assert!(drain.drain(Duration::from_secs(1)).await);
        accepting.await.unwrap();
        assert!(watch.is_stopping());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "refused once drained"
        );
    }
}
