//! One record per connection: its labels built once, its byte counters fetched once and
//! counted as bytes pass (a long-lived connection shows in `/metrics` while it is open),
//! and one access-log line when it ends, whatever the outcome, under the `access` target.
//!
//! Errors are typed per phase ([`ProxyError`]); [`ProxyError::status`] is the one place
//! an inbound failure becomes an HBONE response status.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::StatusCode;
use mesh_core::hbone::Meter;
use mesh_model::policy::Decision;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::route::RouteError;
use crate::metrics::{Metrics, TcpLabels, TcpSeries};

/// The `tracing` target of the access log (`RUST_LOG=access=info` keeps just it).
pub const ACCESS_LOG: &str = "access";

/// Which side of the connection this ztunnel is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// From a local pod's app out (reporter `source`).
    Outbound,
    /// Into a local pod (reporter `destination`).
    Inbound,
}

/// Why a connection did not go through, by phase.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
    /// Outbound: no upstream for the original destination.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Its target is one of ztunnel's own listeners or loopback.
    #[error("aimed at a ztunnel port (loop)")]
    Loop,
    /// Outbound: the pod has the most upstream connects in progress it may have.
    #[error("too many upstream connects in progress")]
    PendingConnects,
    /// Outbound: the HBONE tunnel could not be opened.
    #[error("HBONE: {0}")]
    Tunnel(String),
    /// Outbound passthrough: the destination could not be reached.
    #[error("connecting to the destination: {0}")]
    Upstream(std::io::Error),
    /// Inbound: the tunnel is for an address that is not this pod's.
    #[error("tunnel for another workload")]
    NotThisPod,
    /// Inbound: authorization said no.
    #[error("denied: {0:?}")]
    Denied(Decision),
    /// Inbound plaintext: PeerAuthentication requires mutual TLS.
    #[error("plaintext refused: PeerAuthentication STRICT")]
    PlaintextRefused,
    /// Inbound: the application did not accept the connection.
    #[error("application unreachable: {0}")]
    AppUnreachable(std::io::Error),
}

impl ProxyError {
    /// The HBONE response status for an inbound tunnel that fails this way: the only place
    /// the mapping is written, and exhaustive, so a new error must choose its status.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotThisPod | ProxyError::Loop => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_) | ProxyError::PlaintextRefused => StatusCode::UNAUTHORIZED,
            ProxyError::AppUnreachable(_) | ProxyError::Upstream(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::PendingConnects => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Route(_) | ProxyError::Tunnel(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Refusals counted in metrics and expected under attack or misconfiguration: logged at
    /// debug so a flood cannot fill the log.
    fn is_refusal(&self) -> bool {
        matches!(self, ProxyError::Loop | ProxyError::PendingConnects)
    }
}

/// One connection, from accept to close.
pub(super) struct Record {
    direction: Direction,
    src: SocketAddr,
    dst: SocketAddr,
    started: Instant,
    /// The identities, for the log line of a connection that failed before it was opened
    /// (an opened one logs its labels' principals; nothing is formatted twice).
    pub(super) src_identity: Option<String>,
    pub(super) dst_identity: Option<String>,
    pub(super) forwarded_for: Option<IpAddr>,
    /// How it was carried: `hbone`, `passthrough` (outbound plain TCP) or `plaintext`
    /// (inbound from outside the mesh).
    pub(super) mode: &'static str,
    /// Its metric series, once established.
    open: Option<Arc<TcpSeries>>,
    sent: AtomicU64,
    received: AtomicU64,
    error: Option<ProxyError>,
}

impl Record {
    /// A connection accepted from `src` for `dst`.
    pub(super) fn new(direction: Direction, src: SocketAddr, dst: SocketAddr) -> Self {
        Record {
            direction,
            src,
            dst,
            started: Instant::now(),
            src_identity: None,
            dst_identity: None,
            forwarded_for: None,
            mode: "-",
            open: None,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            error: None,
        }
    }

    /// The connection is established: counts it opened under `labels` and keeps the
    /// series' counters to add bytes to.
    pub(super) fn open(&mut self, metrics: &Metrics, labels: TcpLabels) {
        self.open = Some(metrics.opened(labels));
    }

    /// The connection failed with `error` (logged once, when the record is dropped).
    pub(super) fn fail(&mut self, error: impl Into<ProxyError>) -> &ProxyError {
        self.error.insert(error.into())
    }

    /// `n` bytes went towards the destination.
    fn towards_destination(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        if let Some(open) = &self.open {
            open.sent.inc_by(n);
        }
    }

    /// `n` bytes came back from the destination.
    fn back_from_destination(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        if let Some(open) = &self.open {
            open.received.inc_by(n);
        }
    }

    /// Counts the bytes a TCP-to-TCP copy moves as it moves them; `source_side` is the
    /// stream facing the connection's source.
    pub(super) fn count<'a, S>(&'a self, source_side: &'a mut S) -> Counted<'a, S> {
        Counted {
            record: self,
            stream: source_side,
        }
    }
}

/// The tunnel side of a splice: outbound, into the tunnel is towards the destination;
/// inbound, out of it is.
impl Meter for Record {
    fn entered_tunnel(&self, n: u64) {
        match self.direction {
            Direction::Outbound => self.towards_destination(n),
            Direction::Inbound => self.back_from_destination(n),
        }
    }

    fn left_tunnel(&self, n: u64) {
        match self.direction {
            Direction::Outbound => self.back_from_destination(n),
            Direction::Inbound => self.towards_destination(n),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let direction = match self.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        };
        if let Some(open) = &self.open {
            open.closed();
        }
        let (src, dst, mode) = (self.src, self.dst, self.mode);
        let (src_identity, dst_identity) = match &self.open {
            Some(open) => (
                open.labels.source_principal.as_str(),
                open.labels.destination_principal.as_str(),
            ),
            None => (
                self.src_identity.as_deref().unwrap_or("-"),
                self.dst_identity.as_deref().unwrap_or("-"),
            ),
        };
        let service = self
            .open
            .as_ref()
            .map_or("-", |o| o.labels.destination_service.as_str());
        let security = self
            .open
            .as_ref()
            .map_or("-", |o| o.labels.connection_security_policy.as_str());
        let (sent, received) = (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        );
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let forwarded_for = self.forwarded_for.map(|ip| ip.to_string());
        let forwarded_for = forwarded_for.as_deref().unwrap_or("-");
        match &self.error {
            None => tracing::info!(
                target: ACCESS_LOG, direction, mode, %src, %dst, src_identity, dst_identity,
                destination_service = service, connection_security_policy = security,
                forwarded_for, bytes_sent = sent, bytes_received = received, duration_ms,
                "connection complete"
            ),
            Some(error) if error.is_refusal() => tracing::debug!(
                target: ACCESS_LOG, direction, %src, %dst, src_identity, %error, "connection refused"
            ),
            Some(error) => tracing::info!(
                target: ACCESS_LOG, direction, mode, %src, %dst, src_identity, dst_identity,
                forwarded_for, %error, duration_ms, "connection failed"
            ),
        }
    }
}

/// A stream whose reads count towards the destination and whose writes count back from it.
pub(super) struct Counted<'a, S> {
    record: &'a Record,
    stream: &'a mut S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.record.towards_destination(n as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.record.back_from_destination(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}
