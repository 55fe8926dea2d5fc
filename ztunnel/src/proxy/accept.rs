//! The accept loop every in-pod TCP listener shares, with draining.
//!
//! Each connection is served on a task of the loop's own set. When the pod's proxy is
//! told to drain, the loop closes its listener (new connections are refused), lets live
//! connections finish for up to the drain limit, then closes what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// `None` while serving; `Some(limit)` once draining with that much time left.
pub(super) type DrainSignal = watch::Receiver<Option<Duration>>;

/// Accepts on `listener`, serving each connection with `serve`, until drained.
pub(super) async fn serve_until_drained<F, Fut>(
    listener: TcpListener,
    mut drain: DrainSignal,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let limit = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(stream, peer));
                }
                Err(err) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(listener = what, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = drain.changed() => match (changed, *drain.borrow()) {
                (Ok(()), Some(limit)) => break limit,
                (Ok(()), None) => {}
                (Err(_), _) => break Duration::ZERO,
            },
        }
    };
    drop(listener);
    let finished = tokio::time::timeout(limit, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::info!(
            listener = what,
            left = connections.len(),
            "drain time over; closing connections"
        );
    }
    connections.abort_all();
}
