//! Contenders for the HBONE micro-benchmarks, all on 127.0.0.1 in one process:
//!
//! * `tcp`: the client talks to the app directly, the baseline;
//! * `tls`: the client talks mutual TLS 1.3 to a relay that forwards to the app over TCP;
//! * `hbone`: the client opens an HBONE tunnel (mutual TLS + HTTP/2 CONNECT) to a server
//!   whose handler forwards to the app over TCP, as ztunnel's inbound does.
//!
//! `tls` and `hbone` have the same topology (one relay), so their difference is the cost
//! of HTTP/2 framing; `hbone` against `tcp` is the cost a tunnel adds.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_core::Identity;
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_core::hbone::{
    ClientSettings, ConnectRequest, FlowControl, HboneClient, HboneServer, InboundTunnel,
    ServerSettings,
};
use mesh_core::tls::{self, ManagedCertResolver};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes one bulk iteration sends.
pub const BULK_BYTES: usize = 16 << 20;
/// Size of a request and of its response in the request/response benchmark.
pub const MESSAGE_BYTES: usize = 1024;
const TRUST_DOMAIN: &str = "cluster.local";

/// A bidirectional byte stream of any contender.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A boxed stream, so one benchmark body serves every contender.
pub type Stream = Box<dyn Duplex>;

/// Which application a stream reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Echoes every byte.
    Echo,
    /// Reads [`BULK_BYTES`], answers one byte, repeats.
    Sink,
}

/// The ways a client can reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Direct TCP: the baseline.
    Tcp,
    /// Mutual TLS to a relay.
    Tls,
    /// An HBONE tunnel to a relaying server.
    Hbone,
}

impl Contender {
    /// All of them, baseline first.
    pub const ALL: [Contender; 3] = [Contender::Tcp, Contender::Tls, Contender::Hbone];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Tcp => "tcp",
            Contender::Tls => "tls",
            Contender::Hbone => "hbone",
        }
    }
}

/// The running servers of all contenders.
pub struct Loopback {
    echo: SocketAddr,
    sink: SocketAddr,
    tls_echo: SocketAddr,
    tls_sink: SocketAddr,
    tls_client: Arc<rustls::ClientConfig>,
    hbone: SocketAddr,
    server_identity: Identity,
    src: Identity,
    client: HboneClient,
}

impl Loopback {
    /// Starts the apps, the TLS relays and an HBONE server using `flow` on both sides.
    /// Must run inside a Tokio runtime.
    pub async fn start(flow: FlowControl) -> std::io::Result<Self> {
        let ca = Arc::new(LocalCa::generate(TRUST_DOMAIN).map_err(std::io::Error::other)?);
        let certs = Arc::new(CertManager::new(ca.clone(), RenewalPolicy::default()));
        let server_identity = identity("bench", "server");
        let src = identity("bench", "client");
        certs
            .fetch(&server_identity)
            .await
            .map_err(std::io::Error::other)?;
        let client_cert = certs.fetch(&src).await.map_err(std::io::Error::other)?;
        let server_config = || {
            let resolver = Arc::new(ManagedCertResolver::new(
                certs.clone(),
                server_identity.clone(),
            ));
            tls::server_config(resolver, ca.roots(), TRUST_DOMAIN).map_err(std::io::Error::other)
        };

        let echo = spawn_app(App::Echo).await?;
        let sink = spawn_app(App::Sink).await?;
        let tls_echo = spawn_tls_relay(server_config()?, echo).await?;
        let tls_sink = spawn_tls_relay(server_config()?, sink).await?;
        let tls_client = tls::client_config(&client_cert, vec![server_identity.clone()])
            .map_err(std::io::Error::other)?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let settings = ServerSettings {
            flow_control: flow,
            ..ServerSettings::default()
        };
        let server = HboneServer::new(listener, server_config()?, forward, settings);
        let hbone = server.local_addr()?;
        tokio::spawn(server.run());
        let client = HboneClient::new(
            certs,
            ClientSettings {
                flow_control: flow,
                ..ClientSettings::default()
            },
        );
        Ok(Loopback {
            echo,
            sink,
            tls_echo,
            tls_sink,
            tls_client: Arc::new(tls_client),
            hbone,
            server_identity,
            src,
            client,
        })
    }

    /// A plain TCP connection to `app`.
    pub async fn tcp(&self, app: App) -> std::io::Result<Stream> {
        let stream = TcpStream::connect(self.app(app)).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }

    /// A mutual-TLS connection through the relay in front of `app`.
    pub async fn tls(&self, app: App) -> std::io::Result<Stream> {
        let relay = match app {
            App::Echo => self.tls_echo,
            App::Sink => self.tls_sink,
        };
        let tcp = TcpStream::connect(relay).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.tls_client.clone());
        Ok(Box::new(
            connector
                .connect(ServerName::IpAddress(relay.ip().into()), tcp)
                .await?,
        ))
    }

    /// An HBONE tunnel to `app` (on the pooled connection, once one exists).
    pub async fn hbone(&self, app: App) -> std::io::Result<Stream> {
        let request = ConnectRequest {
            src: self.src.clone(),
            dst: self.hbone,
            dst_identities: vec![self.server_identity.clone()],
            authority: self.app(app),
            headers: http::HeaderMap::new(),
        };
        Ok(Box::new(
            self.client
                .connect(request)
                .await
                .map_err(std::io::Error::other)?,
        ))
    }

    /// A stream of `contender` to `app`.
    pub async fn open(&self, contender: Contender, app: App) -> std::io::Result<Stream> {
        match contender {
            Contender::Tcp => self.tcp(app).await,
            Contender::Tls => self.tls(app).await,
            Contender::Hbone => self.hbone(app).await,
        }
    }

    fn app(&self, app: App) -> SocketAddr {
        match app {
            App::Echo => self.echo,
            App::Sink => self.sink,
        }
    }
}

fn identity(namespace: &str, account: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, namespace, account).expect("a valid constant identity")
}

/// The HBONE handler: dial the target, then splice both ways (what ztunnel's inbound does).
async fn forward(tunnel: InboundTunnel) {
    let Ok(upstream) = TcpStream::connect(tunnel.target()).await else {
        return tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
    };
    let _ = upstream.set_nodelay(true);
    let Ok(downstream) = tunnel.accept() else {
        return;
    };
    let _ = mesh_core::hbone::splice(&upstream, downstream).await;
}

async fn relay(mut downstream: impl Duplex, mut upstream: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
}

async fn spawn_app(app: App) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_app(app, stream));
        }
    });
    Ok(addr)
}

async fn serve_app(app: App, mut stream: TcpStream) -> std::io::Result<()> {
    match app {
        App::Echo => {
            let (mut read, mut write) = stream.split();
            tokio::io::copy(&mut read, &mut write).await?;
        }
        App::Sink => {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let mut left = BULK_BYTES;
                while left > 0 {
                    let n = stream.read(&mut buf[..left.min(256 << 10)]).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    left -= n;
                }
                stream.write_all(&[1]).await?;
            }
        }
    }
    Ok(())
}

async fn spawn_tls_relay(
    config: rustls::ServerConfig,
    app: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(downstream) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(upstream) = TcpStream::connect(app).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                relay(downstream, upstream).await;
            });
        }
    });
    Ok(addr)
}

/// One request/response: [`MESSAGE_BYTES`] out, the same back (the echo app).
pub async fn round_trip(stream: &mut Stream, buf: &mut [u8; MESSAGE_BYTES]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    // TLS streams hold the last record until flushed.
    stream.flush().await?;
    stream.read_exact(buf).await?;
    Ok(())
}

/// One bulk transfer: [`BULK_BYTES`] out, a one-byte acknowledgement back (the sink app).
pub async fn bulk(stream: &mut Stream, chunk: &[u8]) -> std::io::Result<()> {
    let mut left = BULK_BYTES;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).await?;
        left -= n;
    }
    stream.flush().await?;
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await?;
    Ok(())
}

/// A new connection (or tunnel) carrying a one-byte ping-pong, then closed.
pub async fn ping_once(mut stream: Stream) -> std::io::Result<()> {
    stream.write_all(b"p").await?;
    stream.flush().await?;
    let mut pong = [0u8; 1];
    stream.read_exact(&mut pong).await?;
    stream.shutdown().await
}
