//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS, port 15008.
//!
//! ```text
//!  client::HboneClient::connect ─► pool (one TLS+h2 connection per src/dst/address,
//!        │                          ≤ 100 streams each) ─► CONNECT :authority=ip:port
//!        ▼                                                         │ TLS 1.3, ALPN h2
//!   stream::H2Stream  ◄══════════ bytes in DATA frames ═══════════►│
//!                                         server::HboneServer ─► handler(InboundTunnel)
//!                                                                  accept → 200 + H2Stream
//!                                                                  reject → 401/403/503
//! ```

pub mod client;
pub mod headers;
pub(crate) mod holding;
pub mod limits;
mod pool;
pub mod server;
pub mod splice;
pub mod stream;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{ClientSettings, ConnectRequest, DialFuture, Dialer, DirectDialer, HboneClient};
pub use server::{
    HboneServer, InboundTunnel, PeerInfo, ServerSettings, ServerStats, TunnelHandler,
};
pub use splice::{Meter, Spliced, splice, splice_metered};
pub use stream::H2Stream;

use crate::cert::CertError;
use crate::tls::TlsError;

/// The HBONE port on every captured pod.
pub const HBONE_PORT: u16 = crate::inpod::HBONE_PORT;

/// HTTP/2 flow-control and framing shared by client and server.
///
/// HTTP/2's 64 KiB default windows stall a tunnel on WINDOW_UPDATE round trips; the stream
/// window also bounds what one slow reader makes a connection buffer. Measured with
/// `benches/benches/hbone.rs` (16 MiB bulk on loopback, 2 cores, 2026-11-28): 64 KiB
/// windows took 2.9x plain TCP's time, 1 MiB stream / 4 MiB connection 1.20x, 4 MiB / 16
/// MiB 1.30x. The default is the smaller of the two fast settings: as fast, a quarter of
/// the buffering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Initial window of each stream, bytes.
    pub stream_window: u32,
    /// Initial window of the whole connection, bytes.
    pub connection_window: u32,
    /// Largest DATA frame we accept, bytes.
    pub max_frame_size: u32,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            max_frame_size: 1 << 20,
        }
    }
}

/// Most streams one connection carries; a new connection opens past that (as Istio).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Time allowed for TCP connect plus TLS and HTTP/2 handshakes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl HboneError {
    /// Classifies a failed TLS handshake, naming the reason rustls found.
    pub(crate) fn handshake(addr: SocketAddr, source: std::io::Error) -> Self {
        let reason = match source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
                format!("peer certificate refused: {}", other.0)
            }
            Some(rustls::Error::InvalidCertificate(problem)) => {
                format!("peer certificate refused: {problem:?}")
            }
            Some(rustls::Error::AlertReceived(alert)) => {
                format!("the peer refused our certificate or the handshake ({alert:?})")
            }
            Some(other) => other.to_string(),
            None => source.to_string(),
        };
        HboneError::Handshake {
            addr,
            reason,
            source,
        }
    }
}

/// Why opening or serving a tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// No certificate for the source identity.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// TCP connect to the peer's HBONE port failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (the peer's certificate was refused, or it refused ours).
    #[error("TLS handshake with {addr}: {reason}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// Why, in words: expired, unknown issuer, unexpected identity, the peer's alert.
        reason: String,
        /// The underlying error (wrapping rustls's).
        #[source]
        source: std::io::Error,
    },
    /// HTTP/2 failed (handshake, reset, GOAWAY).
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: h2::Error,
    },
    /// The server answered the CONNECT with a non-200 status.
    #[error("{addr} refused the tunnel to {authority} with {status}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Where the tunnel was to go.
        authority: SocketAddr,
        /// The status (401/403 denied, 503 no upstream, 400 malformed).
        status: http::StatusCode,
    },
    /// A handshake took longer than allowed.
    #[error("{what} with {addr} timed out after {after:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// Which step.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
}
