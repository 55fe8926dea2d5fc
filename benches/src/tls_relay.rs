//! The floor any mutual-TLS tunnel must pay: two minimal relays, app -> relay A over TCP,
//! relay A -> relay B over one TLS 1.3 connection per app connection (the mesh's own rustls
//! configuration: aws-lc-rs, the same cipher suites, SPIFFE certificates from the mesh CA
//! checked both ways), relay B -> app over TCP. No HTTP/2, no policy, no metrics: what is
//! left of a mesh hop when everything but the encryption and the three TCP legs is gone.
//! The benchmark reports the mesh as a ratio to it as well as to direct TCP.
//!
//! Placed like ztunnel's sockets (inside the pods, behind the in-pod capture rules, with
//! ztunnel's mark and each connection's original destination), the same pair also prices
//! the capture and the pod's route on their own.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::cert::WorkloadCert;
use mesh_core::identity::Identity;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bytes each direction of a relayed connection copies at a time (the mesh's splice reads
/// up to this much per readable event too).
const BUFFER: usize = 64 << 10;

/// The one identity both relays present.
pub fn identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, "bench", "tls-relay").expect("a valid identity")
}

/// Which leg a relay is on.
#[derive(Clone)]
pub enum Side {
    /// Relay A: accepts plain TCP from the app, opens TLS to relay B.
    Connect(TlsConnector),
    /// Relay B: accepts TLS from relay A, opens plain TCP to the app.
    Accept(TlsAcceptor),
}

impl Side {
    /// Relay A's side, presenting `cert` and accepting only relay B's identity.
    pub fn connect(cert: &WorkloadCert) -> Result<Self, mesh_core::tls::TlsError> {
        let config = mesh_core::tls::client_config(cert, vec![cert.identity().clone()])?;
        Ok(Side::Connect(TlsConnector::from(Arc::new(config))))
    }

    /// Relay B's side, presenting `cert` and requiring a client certificate of its trust
    /// domain.
    pub fn accept(cert: &WorkloadCert) -> Result<Self, mesh_core::tls::TlsError> {
        let resolver = Arc::new(SingleCertAndKey::from(cert.certified_key().clone()));
        let config =
            mesh_core::tls::server_config(resolver, cert.roots(), cert.identity().trust_domain())?;
        Ok(Side::Accept(TlsAcceptor::from(Arc::new(config))))
    }
}

/// Where a relay sends what it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Always this address.
    Fixed(SocketAddr),
    /// Where the app sent it before the pod's rules REDIRECTed it here (`SO_ORIGINAL_DST`),
    /// as ztunnel's outbound listener learns it.
    Redirected,
    /// The accepted connection's own local address: a TPROXYed connection keeps its
    /// original destination there, as ztunnel's inbound listener sees it.
    Tproxied,
}

impl Target {
    fn resolve(self, accepted: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            Target::Fixed(to) => Ok(to),
            Target::Redirected => mesh_core::socket::original_dst(accepted),
            Target::Tproxied => accepted.local_addr(),
        }
    }
}

/// Relays every connection accepted on `listener` to `to`, each on its own task. With
/// `mark`, the upstream sockets carry that `SO_MARK`, as ztunnel's do, so a pod's
/// redirection rules let them pass.
pub async fn serve(
    listener: TcpListener,
    to: Target,
    side: Side,
    mark: Option<u32>,
) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let side = side.clone();
        tokio::spawn(async move {
            if let Err(err) = relay(stream, to, side, mark).await {
                eprintln!("tls-relay: connection from {peer}: {err}");
            }
        });
    }
}

async fn connect(to: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    socket.connect(to).await
}

async fn relay(
    mut accepted: TcpStream,
    to: Target,
    side: Side,
    mark: Option<u32>,
) -> io::Result<()> {
    accepted.set_nodelay(true)?;
    let to = to.resolve(&accepted)?;
    match side {
        Side::Connect(connector) => {
            let upstream = connect(to, mark).await?;
            upstream.set_nodelay(true)?;
            // The verifier checks the SPIFFE identity, not a name; SNI is off.
            let name = ServerName::try_from("tls-relay").expect("a valid name");
            let mut tls = connector.connect(name, upstream).await?;
            tokio::io::copy_bidirectional_with_sizes(&mut accepted, &mut tls, BUFFER, BUFFER)
                .await?;
        }
        Side::Accept(acceptor) => {
            let mut tls = acceptor.accept(accepted).await?;
            let mut upstream = connect(to, mark).await?;
            upstream.set_nodelay(true)?;
            tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, BUFFER, BUFFER)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mesh_core::cert::LocalCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A position-weighted sum: differs when a byte is lost, changed or reordered.
    fn digest(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| (i as u64 + 1) * u64::from(b))
            .sum()
    }

    /// Bytes go through both relays intact and in order, in both directions, and a
    /// half-close travels through the TLS leg (the server answers only after it).
    #[tokio::test]
    async fn relays_bytes_both_ways_with_half_close() {
        mesh_core::tls::install_process_provider();
        let ca = LocalCa::generate("cluster.local").unwrap();
        let cert = ca.issue_now(&identity("cluster.local")).unwrap();

        // The app: reads to the end, then answers with a digest of what it read.
        let (app, app_addr) = listener().await;
        tokio::spawn(async move {
            let (mut stream, _) = app.accept().await.unwrap();
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.unwrap();
            stream
                .write_all(&digest(&received).to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&received).await.unwrap();
        });
        let (b, b_addr) = listener().await;
        tokio::spawn(serve(
            b,
            Target::Fixed(app_addr),
            Side::accept(&cert).unwrap(),
            None,
        ));
        let (a, a_addr) = listener().await;
        tokio::spawn(serve(
            a,
            Target::Fixed(b_addr),
            Side::connect(&cert).unwrap(),
            None,
        ));

        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut client = TcpStream::connect(a_addr).await.unwrap();
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer[..8], digest(&sent).to_be_bytes());
        assert!(answer[8..] == sent[..], "the echo differs");
    }

    /// A relay holding a certificate from another CA gets nothing through.
    #[tokio::test]
    async fn a_relay_from_another_ca_gets_nothing_through() {
        mesh_core::tls::install_process_provider();
        let ca = LocalCa::generate("cluster.local").unwrap();
        let cert = ca.issue_now(&identity("cluster.local")).unwrap();
        let other = LocalCa::generate("cluster.local").unwrap();
        let stranger = other.issue_now(&identity("cluster.local")).unwrap();

        // An echo app: were the TLS leg to let the stranger through, "hello" would return.
        let (app, app_addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = app.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let (b, b_addr) = listener().await;
        tokio::spawn(serve(
            b,
            Target::Fixed(app_addr),
            Side::accept(&cert).unwrap(),
            None,
        ));
        let (a, a_addr) = listener().await;
        tokio::spawn(serve(
            a,
            Target::Fixed(b_addr),
            Side::connect(&stranger).unwrap(),
            None,
        ));

        let mut client = TcpStream::connect(a_addr).await.unwrap();
        let _ = client.write_all(b"hello").await;
        let _ = client.shutdown().await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await
        .expect("closed, not hung");
        assert!(
            read.is_err() || rest.is_empty(),
            "nothing comes back: {rest:?}"
        );
    }
}
