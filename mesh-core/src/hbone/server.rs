//! Accepting HBONE tunnels: TLS with a required client certificate, HTTP/2, CONNECT.
//!
//! The server owns the protocol; a [`TunnelHandler`] owns the decision. Each CONNECT
//! becomes an [`InboundTunnel`] carrying the peer's verified identity, the target address
//! and the headers; the handler accepts it (200 and a byte stream) or rejects it with a
//! status. Requests the server can judge alone are answered before the handler runs:
//! anything but CONNECT, or an `:authority` that is not `ip:port`, gets 400.
//!
//! Every wait is bounded and every peer's share is capped: handshakes have
//! [`ServerSettings::handshake_timeout`], a connection with no tunnel for
//! [`ServerSettings::idle_timeout`] is closed, and one source address may hold at most
//! [`ServerSettings::max_connections_per_source`] connections and
//! [`ServerSettings::max_tunnels_per_source`] tunnels (more are answered 429).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

use crate::drain::DrainWatch;
use tokio_rustls::TlsAcceptor;

use super::holding::Holding;
use super::limits::{SourceLimit, SourceSlot};
use super::stream::H2Stream;
use super::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_STREAMS_PER_CONNECTION, FlowControl};
use crate::cert::parse_leaf;
use crate::identity::Identity;

/// Server tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// HTTP/2 windows and frame size.
    pub flow_control: FlowControl,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub max_streams_per_connection: u32,
    /// Limit for the TLS and HTTP/2 handshakes of a new connection.
    pub handshake_timeout: Duration,
    /// A connection with no open tunnel for this long (checked once per period, so closed
    /// after one to two periods) gets GOAWAY. Above the client pool's own idle timeout
    /// (60 s), so our clients close first.
    pub idle_timeout: Duration,
    /// Connections one source address may hold at once (handshaking or established);
    /// more are closed on accept.
    pub max_connections_per_source: usize,
    /// Tunnels one source address may hold open at once, over all its connections.
    pub max_tunnels_per_source: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            flow_control: FlowControl::default(),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION as u32,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Duration::from_secs(90),
            // A client pool opens one connection per (identity, destination) and a new
            // one per 100 tunnels: these leave a busy pod ample room. Tunnels: a client
            // pod holding 10,000 connections to one server pod is a real workload (a
            // connection-heavy gateway, the benchmark's idle-connection figure); at ~6 KiB
            // each, 16,384 bound one source's hold on this pod near 100 MiB.
            max_connections_per_source: 256,
            max_tunnels_per_source: 16_384,
        }
    }
}

/// Counters of what the server has seen, for tests and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TLS + HTTP/2 connections established.
    pub connections: AtomicU64,
    /// Connections refused during TLS or HTTP/2 setup (bad cert, garbage, timeouts).
    pub handshake_failures: AtomicU64,
    /// CONNECT requests handed to the handler.
    pub tunnels: AtomicU64,
    /// Requests answered 400 by the server itself.
    pub malformed: AtomicU64,
    /// Connections closed on accept because their source held too many.
    pub over_connection_limit: AtomicU64,
    /// Tunnels answered 429 because their source held too many.
    pub over_tunnel_limit: AtomicU64,
    /// Connections closed after staying idle (no tunnel) for the idle timeout.
    pub idle_closed: AtomicU64,
}

impl ServerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who is on the other end of an inbound connection, as TLS proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's SPIFFE identity.
    pub identity: Identity,
    /// Serial of the client's certificate.
    pub cert_serial: String,
    /// The TCP peer (the source node's ztunnel, or a waypoint).
    pub addr: SocketAddr,
}

/// Decides what happens to each inbound tunnel.
pub trait TunnelHandler: Send + Sync + 'static {
    /// Accepts or rejects `tunnel`, then (if accepted) serves it to the end. The future
    /// owns what it needs: it becomes the tunnel's task as it is, so a live tunnel costs
    /// its future and nothing of the request it came from.
    fn serve(&self, tunnel: InboundTunnel) -> impl Future<Output = ()> + Send + 'static;
}

impl<F, Fut> TunnelHandler for F
where
    F: Fn(InboundTunnel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn serve(&self, tunnel: InboundTunnel) -> impl Future<Output = ()> + Send + 'static {
        self(tunnel)
    }
}

/// A CONNECT request waiting for the handler's answer. Dropped unanswered, it is refused
/// with 503 (no upstream).
#[derive(Debug)]
pub struct InboundTunnel {
    peer: PeerInfo,
    target: SocketAddr,
    headers: HeaderMap,
    request: Option<(h2::RecvStream, SendResponse<Bytes>)>,
}

impl InboundTunnel {
    /// The verified client.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Where the client wants to go (`:authority`).
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The request headers (`forwarded`, `baggage`, `traceparent`, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Answers 200 and returns the tunnel's byte stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let (recv, mut respond) = self
            .request
            .take()
            .expect("an InboundTunnel is answered once");
        let send = respond.send_response(status_response(StatusCode::OK), false)?;
        Ok(H2Stream::new(send, recv, None))
    }

    /// Answers `status` (401/403 denied, 503 no upstream) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        self.answer(status);
    }

    fn answer(&mut self, status: StatusCode) {
        if let Some((_, mut respond)) = self.request.take() {
            let _ = respond.send_response(status_response(status), true);
        }
    }
}

impl Drop for InboundTunnel {
    fn drop(&mut self) {
        self.answer(StatusCode::SERVICE_UNAVAILABLE);
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Serves HBONE on a listener.
pub struct HboneServer<H> {
    listener: TcpListener,
    shared: Arc<Shared<H>>,
}

/// What every connection task needs.
struct Shared<H> {
    acceptor: TlsAcceptor,
    handler: H,
    settings: ServerSettings,
    stats: Arc<ServerStats>,
    connections_per_source: Arc<SourceLimit>,
    tunnels_per_source: Arc<SourceLimit>,
}

impl<H: TunnelHandler> HboneServer<H> {
    /// A server on `listener` with `tls` (see [`crate::tls::server_config`]).
    pub fn new(
        listener: TcpListener,
        tls: ServerConfig,
        handler: H,
        settings: ServerSettings,
    ) -> Self {
        let shared = Shared {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            handler,
            settings,
            stats: Arc::default(),
            connections_per_source: SourceLimit::new(settings.max_connections_per_source),
            tunnels_per_source: SourceLimit::new(settings.max_tunnels_per_source),
        };
        HboneServer {
            listener,
            shared: Arc::new(shared),
        }
    }

    /// Counters, shared with the running server.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Accepts connections until `shutdown` completes with a drain time, then drains: the
    /// listener closes, every connection gets GOAWAY (clients open no new tunnels on it),
    /// live tunnels have the drain time to finish, and whatever is left is then closed.
    pub async fn run_until(self, shutdown: impl Future<Output = Duration>) {
        let (drain, watch) = crate::drain::new();
        tokio::select! {
            () = self.run_with(&watch) => {}
            limit = shutdown => {
                drain.drain(limit).await;
            }
        }
    }

    /// Accepts connections until `watch`'s drain starts; then every connection gets GOAWAY
    /// and the drain's owner decides how long they have. Each connection is served on its
    /// own task, so one bad client never holds up another.
    pub async fn run_with(self, watch: &DrainWatch) {
        let HboneServer { listener, shared } = self;
        let connections_watch = watch.clone();
        crate::drain::accept_until_drained(listener, watch, "hbone", move |tcp, peer| {
            let Some(slot) = shared.connections_per_source.try_acquire(peer.ip()) else {
                ServerStats::bump(&shared.stats.over_connection_limit);
                tracing::debug!(%peer, "HBONE connection refused: source over its connection limit");
                return None;
            };
            let serving = shared
                .clone()
                .serve_connection(tcp, peer, connections_watch.clone());
            Some(Holding::new(serving, slot))
        })
        .await;
    }
}

impl<H: TunnelHandler> Shared<H> {
    async fn serve_connection(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        drain: DrainWatch,
    ) {
        let _ = tcp.set_nodelay(true);
        let limit = self.settings.handshake_timeout;
        let tls = match tokio::time::timeout(limit, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => return self.refuse(addr, &format!("TLS: {err}")),
            Err(_) => return self.refuse(addr, "TLS handshake timed out"),
        };
        let Some(peer) = peer_info(&tls, addr) else {
            return self.refuse(addr, "client certificate carries no SPIFFE identity");
        };
        let flow = self.settings.flow_control;
        let handshake = h2::server::Builder::new()
            .initial_window_size(flow.stream_window)
            .initial_connection_window_size(flow.connection_window)
            .max_frame_size(flow.max_frame_size)
            .max_concurrent_streams(self.settings.max_streams_per_connection)
            .handshake::<_, Bytes>(tls);
        let mut connection = match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => return self.refuse(addr, &format!("HTTP/2: {err}")),
            Err(_) => return self.refuse(addr, "HTTP/2 handshake timed out"),
        };
        ServerStats::bump(&self.stats.connections);
        tracing::debug!(%addr, peer = %peer.identity, "HBONE connection accepted");
        // Tunnels of this connection still open (clones of `open` held by their tasks). One
        // timer checks every idle period: a connection that had no tunnel open and none
        // started for a whole period is closed (so after between one and two periods of
        // idleness); nothing is done per request but a flag and a clone.
        let open = Arc::new(());
        let idle = self.settings.idle_timeout;
        let check = tokio::time::sleep(idle);
        tokio::pin!(check);
        let mut started_since_check = false;
        let mut draining = false;
        // Made once: the loop polls it on every wake-up of the connection.
        let stopping = drain.stopping();
        tokio::pin!(stopping);
        loop {
            let next = tokio::select! {
                next = connection.accept() => next,
                () = &mut stopping, if !draining => {
                    draining = true;
                    connection.graceful_shutdown();
                    continue;
                }
                () = &mut check, if !draining => {
                    let busy = Arc::strong_count(&open) > 1;
                    if busy || std::mem::take(&mut started_since_check) {
                        check.as_mut().reset(tokio::time::Instant::now() + idle);
                    } else {
                        ServerStats::bump(&self.stats.idle_closed);
                        tracing::debug!(%addr, ?idle, "HBONE connection idle; closing");
                        draining = true;
                        connection.graceful_shutdown();
                    }
                    continue;
                }
            };
            match next {
                Some(Ok((request, respond))) => {
                    started_since_check = true;
                    // Checked and answered here, so the tunnel's task holds the handler's
                    // future and the two counts, not the request it came from.
                    if let Some((tunnel, slot)) = self.open_tunnel(request, respond, &peer) {
                        let serving = self.handler.serve(tunnel);
                        tokio::spawn(Holding::new(serving, (open.clone(), slot)));
                    }
                }
                Some(Err(err)) => {
                    tracing::debug!(%addr, error = %err, "HBONE connection ended");
                    break;
                }
                None => break,
            }
        }
    }

    /// A CONNECT as the handler's tunnel and its slot in the source's tunnel count; `None`
    /// when it was answered here (400 not a CONNECT to ip:port, 429 over the limit).
    fn open_tunnel(
        &self,
        request: Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer: &PeerInfo,
    ) -> Option<(InboundTunnel, SourceSlot)> {
        let Some(target) = connect_target(&request) else {
            ServerStats::bump(&self.stats.malformed);
            tracing::debug!(peer = %peer.identity, method = %request.method(), uri = %request.uri(), "not a CONNECT to ip:port");
            let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
            return None;
        };
        let Some(slot) = self.tunnels_per_source.try_acquire(peer.addr.ip()) else {
            ServerStats::bump(&self.stats.over_tunnel_limit);
            tracing::debug!(peer = %peer.addr, "tunnel refused: source over its tunnel limit");
            let _ = respond.send_response(status_response(StatusCode::TOO_MANY_REQUESTS), true);
            return None;
        };
        ServerStats::bump(&self.stats.tunnels);
        let (parts, recv) = request.into_parts();
        let tunnel = InboundTunnel {
            peer: peer.clone(),
            target,
            headers: parts.headers,
            request: Some((recv, respond)),
        };
        Some((tunnel, slot))
    }

    fn refuse(&self, addr: SocketAddr, reason: &str) {
        ServerStats::bump(&self.stats.handshake_failures);
        tracing::debug!(%addr, reason, "HBONE connection refused");
    }
}

/// Where a request asks to be tunneled: a CONNECT whose `:authority` is `ip:port`. Any
/// other request is answered 400 by the server itself.
pub fn connect_target<B>(request: &Request<B>) -> Option<SocketAddr> {
    if request.method() != Method::CONNECT {
        return None;
    }
    request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
}

fn peer_info(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
) -> Option<PeerInfo> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let info = parse_leaf(leaf).ok()?;
    // The same rule the verifier applied, so the identity authorized is the one checked.
    let identity = info.workload_identity().ok()?.clone();
    Some(PeerInfo {
        identity,
        cert_serial: info.serial,
        addr,
    })
}
