//! Opening HBONE tunnels: certificate, pooled mTLS HTTP/2 connection, CONNECT.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pool::{IdleTimeouts, Pool, PoolKey, PooledConnection};
use super::stream::H2Stream;
use super::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_STREAMS_PER_CONNECTION, FlowControl, HboneError, headers,
};
use crate::cert::{CertManager, WorkloadCert};
use crate::identity::Identity;

/// Client tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// HTTP/2 windows and frame size.
    pub flow_control: FlowControl,
    /// Most tunnels on one connection before another opens.
    pub max_streams_per_connection: usize,
    /// Connections the tunnels of one destination spread over as soon as two are open at
    /// once (each new tunnel takes the least busy): a connection's TLS and HTTP/2 work runs
    /// on one task, so concurrent tunnels use more than one core only over more than one
    /// connection. ztunnel's default of 2 matches its worker threads; 1 packs tunnels.
    pub lanes: usize,
    /// How long an unused connection stays open.
    pub idle_timeout: Duration,
    /// How long an unused connection stays open when `lanes` connections to its destination
    /// were used more recently: such a connection was opened for a burst (more tunnels at
    /// once than `max_streams_per_connection` allows on the lanes), a new burst would open
    /// its own, and each holds its TLS and HTTP/2 buffers until it closes (about 300 KiB
    /// after bulk transfers: the benchmark's burst left ten such connections holding 3.8 MiB
    /// of ztunnel's heap for the whole idle timeout).
    pub surplus_idle_timeout: Duration,
    /// Limit for TCP connect + TLS + HTTP/2 handshakes.
    pub handshake_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            flow_control: FlowControl::default(),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            lanes: 2,
            idle_timeout: Duration::from_secs(60),
            surplus_idle_timeout: Duration::from_secs(5),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Whose certificate to present (the source workload).
    pub src: Identity,
    /// The peer's HBONE address, normally `<dst pod ip>:15008`.
    pub dst: SocketAddr,
    /// Identities the peer may prove (the destination workload's, or a service's SANs).
    pub dst_identities: Vec<Identity>,
    /// Where the tunnel goes: the `:authority`, `<dst pod ip>:<port>`.
    pub authority: SocketAddr,
    /// Extra request headers (`forwarded`, `baggage`; a `traceparent` is added if absent).
    pub headers: HeaderMap,
}

/// Future returned by [`Dialer::dial`].
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>>;

/// Opens the TCP connection under an HBONE connection: from this process's namespace, or
/// from a pod's (in-pod mode), with the mark that lets it pass the pod's rules.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `dst`.
    fn dial(&self, dst: SocketAddr) -> DialFuture<'_>;
}

/// Connects from the current network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectDialer;

impl Dialer for DirectDialer {
    fn dial(&self, dst: SocketAddr) -> DialFuture<'_> {
        Box::pin(TcpStream::connect(dst))
    }
}

/// Opens tunnels, sharing connections through its pool.
pub struct HboneClient {
    certs: Arc<CertManager>,
    settings: ClientSettings,
    pool: Arc<Pool>,
    dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HboneClient {
    /// A client presenting certificates from `certs`, connecting from this namespace.
    pub fn new(certs: Arc<CertManager>, settings: ClientSettings) -> Self {
        Self::with_dialer(certs, settings, Arc::new(DirectDialer))
    }

    /// A client whose connections are opened by `dialer` (in-pod mode).
    pub fn with_dialer(
        certs: Arc<CertManager>,
        settings: ClientSettings,
        dialer: Arc<dyn Dialer>,
    ) -> Self {
        let pool = Pool::new(
            settings.max_streams_per_connection,
            settings.lanes,
            IdleTimeouts {
                lanes: settings.idle_timeout,
                surplus: settings.surplus_idle_timeout,
            },
        );
        HboneClient {
            certs,
            settings,
            pool,
            dialer,
        }
    }

    /// Opens a tunnel and returns its byte stream once the server answered 200.
    ///
    /// A pooled connection that turns out dead is dropped and the tunnel retried on a
    /// fresh one; so is a tunnel the server declined without processing it (a GOAWAY that
    /// stops short of its stream, or REFUSED_STREAM: a server handing over to its
    /// successor), on any connection; three attempts in all. Other failures are returned
    /// as they are.
    pub async fn connect(&self, request: ConnectRequest) -> Result<H2Stream, HboneError> {
        let cert = self.certs.fetch(&request.src).await?;
        let key = PoolKey::new(
            request.src.clone(),
            request.dst_identities.clone(),
            request.dst,
        );
        let mut stale_error = None;
        // A server handing over to its successor may decline on every connection it
        // still holds: a few attempts reach a connection to the successor.
        for _attempt in 0..MAX_ATTEMPTS {
            let (conn, reservation, reused) = self
                .pool
                .checkout(&key, &cert.info().serial, || {
                    // Boxed: a TLS and HTTP/2 handshake in progress is most of a tunnel's
                    // connect state, and only the rare connect that opens a connection needs
                    // it; inline, every caller's future would carry its size.
                    Box::pin(self.open_connection(&cert, &request))
                })
                .await?;
            match self.send_connect(&conn, &request).await {
                Ok((send, recv)) => {
                    return Ok(H2Stream::new(send, recv, Some(Box::new(reservation))));
                }
                Err(SendError::BeforeRequest(err)) if reused => {
                    conn.closed.store(true, Ordering::Release);
                    stale_error = Some(err);
                }
                Err(SendError::Unprocessed(err)) => {
                    conn.closed.store(true, Ordering::Release);
                    stale_error = Some(err);
                }
                Err(SendError::BeforeRequest(err) | SendError::Exchange(err)) => return Err(err),
            }
        }
        // Only reachable when every attempt met a dead or declining connection: report
        // what the last one said.
        Err(stale_error.unwrap_or(HboneError::Timeout {
            addr: request.dst,
            what: "finding a live connection",
            after: self.settings.handshake_timeout,
        }))
    }

    /// Open connections in the pool, all destinations: for tests and admin.
    pub fn pooled_connections(&self) -> usize {
        self.pool.connection_count()
    }

    async fn open_connection(
        &self,
        cert: &WorkloadCert,
        request: &ConnectRequest,
    ) -> Result<PooledConnection, HboneError> {
        let addr = request.dst;
        let limit = self.settings.handshake_timeout;
        let timeout = |what| HboneError::Timeout {
            addr,
            what,
            after: limit,
        };
        let config = crate::tls::client_config(cert, request.dst_identities.clone())?;

        let tcp = tokio::time::timeout(limit, self.dialer.dial(addr))
            .await
            .map_err(|_| timeout("TCP connect"))?
            .map_err(|source| HboneError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            limit,
            TlsConnector::from(Arc::new(config))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp),
        )
        .await
        .map_err(|_| timeout("TLS handshake"))?
        .map_err(|source| HboneError::handshake(addr, source))?;

        let flow = self.settings.flow_control;
        let (send_request, mut connection) = tokio::time::timeout(
            limit,
            h2::client::Builder::new()
                .initial_window_size(flow.stream_window)
                .initial_connection_window_size(flow.connection_window)
                .max_frame_size(flow.max_frame_size)
                .handshake::<_, Bytes>(tls),
        )
        .await
        .map_err(|_| timeout("HTTP/2 handshake"))?
        .map_err(|source| HboneError::Http2 { addr, source })?;

        let closed = Arc::new(AtomicBool::new(false));
        let driver_closed = closed.clone();
        tokio::spawn(async move {
            // Awaited through a reference: awaiting the value would store the connection's
            // state (h2's and rustls's) a second time in this task.
            if let Err(err) = (&mut connection).await {
                tracing::debug!(%addr, error = %err, "HBONE connection ended");
            }
            driver_closed.store(true, Ordering::Release);
        });
        tracing::debug!(%addr, src = %request.src, "HBONE connection opened");
        Ok(PooledConnection::new(
            send_request,
            cert.info().serial.clone(),
            closed,
        ))
    }

    async fn send_connect(
        &self,
        conn: &PooledConnection,
        request: &ConnectRequest,
    ) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), SendError> {
        let addr = request.dst;
        let http2 = |source| HboneError::Http2 { addr, source };
        let mut send_request = conn.send_request.clone().ready().await.map_err(|err| {
            if declined(&err) {
                SendError::Unprocessed(http2(err))
            } else {
                SendError::BeforeRequest(http2(err))
            }
        })?;

        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(request.authority.to_string())
            .version(Version::HTTP_2);
        if let Some(headers) = builder.headers_mut() {
            headers.extend(request.headers.clone());
            if !headers.contains_key(headers::TRACEPARENT) {
                headers.insert(headers::TRACEPARENT, headers::new_traceparent());
            }
        }
        let connect = builder.body(()).map_err(|_| {
            SendError::Exchange(HboneError::Refused {
                addr,
                authority: request.authority,
                status: StatusCode::BAD_REQUEST,
            })
        })?;
        let (response, send) = send_request
            .send_request(connect, false)
            .map_err(|err| SendError::BeforeRequest(http2(err)))?;
        let response = response.await.map_err(|err| {
            if declined(&err) {
                SendError::Unprocessed(http2(err))
            } else {
                SendError::Exchange(http2(err))
            }
        })?;
        if response.status() != StatusCode::OK {
            return Err(SendError::Exchange(HboneError::Refused {
                addr,
                authority: request.authority,
                status: response.status(),
            }));
        }
        Ok((send, response.into_body()))
    }
}

/// Attempts at one tunnel: the first, then retries after a dead pooled connection or a
/// stream the server declined unprocessed.
const MAX_ATTEMPTS: usize = 3;

/// Whether the server declined the stream without processing it. RFC 9113 8.7: a stream
/// past the GOAWAY's last id, or refused, may be retried. (No tunnel byte is sent before
/// the 200, so even a CONNECT the server did see costs the app one empty connection.)
fn declined(err: &h2::Error) -> bool {
    err.is_go_away() || err.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// How far a CONNECT got before it failed: what decides whether it may be retried.
enum SendError {
    /// Before the request was sent (a dead pooled connection): retried on a fresh one.
    BeforeRequest(HboneError),
    /// Declined unprocessed by the server (before or after it was sent): retried, up to
    /// [`MAX_ATTEMPTS`] in all.
    Unprocessed(HboneError),
    /// The server may have acted on it: never retried.
    Exchange(HboneError),
}
