//! Shared pieces of the in-process HBONE tests: a real CA, a real HBONE server on
//! loopback whose handler dials the target like ztunnel's inbound does, and a TCP echo
//! app behind it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use mesh_core::Identity;
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_core::hbone::{
    ClientSettings, ConnectRequest, HboneClient, HboneServer, InboundTunnel, PeerInfo,
    ServerSettings, ServerStats,
};
use mesh_core::tls::{self, ManagedCertResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "cluster.local";

pub fn id(namespace: &str, account: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, namespace, account).unwrap()
}

pub fn certs(ca: Arc<LocalCa>) -> Arc<CertManager> {
    Arc::new(CertManager::new(ca, RenewalPolicy::default()))
}

/// A TCP echo app on loopback: the "application" behind the HBONE server.
pub async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// What the test server saw.
#[derive(Default)]
pub struct Seen {
    pub peers: Mutex<Vec<PeerInfo>>,
    pub headers: Mutex<Vec<http::HeaderMap>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub identity: Identity,
    pub stats: Arc<ServerStats>,
    pub seen: Arc<Seen>,
    pub certs: Arc<CertManager>,
    pub task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Shuts the server down with no drain time, closing every connection; returns once
    /// its port is free.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Port the handler always denies with 403, to test policy answers.
pub const DENIED_PORT: u16 = 1;

/// An HBONE server on loopback for `identity`, certificates from `certs`; it records each
/// peer, denies port [`DENIED_PORT`], and otherwise dials the target (503 if it cannot).
pub async fn hbone_server(
    certs: Arc<CertManager>,
    identity: Identity,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> TestServer {
    hbone_server_with(certs, identity, roots, ServerSettings::default()).await
}

/// [`hbone_server`] with other settings.
pub async fn hbone_server_with(
    certs: Arc<CertManager>,
    identity: Identity,
    roots: &[rustls::pki_types::CertificateDer<'static>],
    settings: ServerSettings,
) -> TestServer {
    certs.fetch(&identity).await.unwrap();
    let resolver = Arc::new(ManagedCertResolver::new(certs.clone(), identity.clone()));
    let config = tls::server_config(resolver, roots, TRUST_DOMAIN).unwrap();
    let bind = "127.0.0.1:0".parse().unwrap();
    serve_with_settings(config, identity, certs, bind, settings).await
}

pub async fn serve_with(
    config: rustls::ServerConfig,
    identity: Identity,
    certs: Arc<CertManager>,
    bind: SocketAddr,
) -> TestServer {
    serve_with_settings(config, identity, certs, bind, ServerSettings::default()).await
}

pub async fn serve_with_settings(
    config: rustls::ServerConfig,
    identity: Identity,
    certs: Arc<CertManager>,
    bind: SocketAddr,
    settings: ServerSettings,
) -> TestServer {
    let listener = TcpListener::bind(bind).await.unwrap();
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let handler = move |tunnel: InboundTunnel| {
        let seen = recorder.clone();
        async move {
            seen.peers.lock().unwrap().push(tunnel.peer().clone());
            seen.headers.lock().unwrap().push(tunnel.headers().clone());
            if tunnel.target().port() == DENIED_PORT {
                return tunnel.reject(StatusCode::FORBIDDEN);
            }
            let Ok(upstream) = TcpStream::connect(tunnel.target()).await else {
                return tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
            };
            let Ok(downstream) = tunnel.accept() else {
                return;
            };
            // As ztunnel's inbound side does.
            let _ = mesh_core::hbone::splice(&upstream, downstream).await;
        }
    };
    let server = HboneServer::new(listener, config, handler, settings);
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
        Duration::ZERO
    }));
    TestServer {
        addr,
        identity,
        stats,
        seen,
        certs,
        task,
        stop: Some(stop),
    }
}

pub fn client(certs: Arc<CertManager>) -> HboneClient {
    HboneClient::new(certs, ClientSettings::default())
}

pub fn request(src: &Identity, server: &TestServer, target: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        src: src.clone(),
        dst: server.addr,
        dst_identities: vec![server.identity.clone()],
        authority: target,
        headers: http::HeaderMap::new(),
    }
}

/// Writes `payload` and reads the same number of bytes back.
pub async fn echo_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    payload: &[u8],
) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        write.write_all(payload).await.unwrap();
        write.flush().await.unwrap();
    };
    let mut received = vec![0u8; payload.len()];
    let receive = read.read_exact(&mut received);
    let (_, got) = tokio::join!(send, receive);
    got.unwrap();
    received
}

pub const WAIT: Duration = Duration::from_secs(10);

/// The usual setup: a CA, a certificate manager, an HBONE server for `shop/server` in
/// front of an echo app, and a client sharing the manager.
pub struct Fixture {
    pub ca: Arc<LocalCa>,
    pub certs: Arc<CertManager>,
    pub server: TestServer,
    pub app: SocketAddr,
    pub client: HboneClient,
}

impl Fixture {
    pub async fn start() -> Fixture {
        let ca = Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap());
        let certs = certs(ca.clone());
        let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
        let app = echo_app().await;
        let client = client(certs.clone());
        Fixture {
            ca,
            certs,
            server,
            app,
            client,
        }
    }
}

/// A raw TLS + HTTP/2 connection to `server` as `shop/web`, for tests that speak HTTP/2
/// themselves; the connection's driver runs on its own task.
pub async fn h2_connection(
    ca: &LocalCa,
    server: &TestServer,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let cert = ca.issue_now(&id("shop", "web")).unwrap();
    let config = tls::client_config(&cert, vec![server.identity.clone()]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(connection))
}
