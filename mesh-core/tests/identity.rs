//! Whose certificate is it? Certificates signed by the mesh's own CA but shaped to confuse
//! the identity check: two URI SANs (a foreign one first), no SPIFFE URI, the wrong
//! extended key usages. Each is refused during the handshake, on both sides.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_core::cert::LocalCa;
use mesh_core::tls;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The mesh's CA, plus the same CA as an rcgen issuer that signs whatever a test asks.
struct Forger {
    ca: Arc<LocalCa>,
    issuer: Issuer<'static, KeyPair>,
}

impl Forger {
    fn new() -> Forger {
        let ca = LocalCa::generate(TRUST_DOMAIN).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.write_to(dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let key = KeyPair::from_pem(&read("ca-key.pem")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read("ca-cert.pem"), key).unwrap();
        Forger {
            ca: Arc::new(ca),
            issuer,
        }
    }

    /// A leaf with these URI SANs and extended key usages, signed by the mesh's CA.
    fn leaf(
        &self,
        uris: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI(uri.to_string().try_into().unwrap()))
            .collect();
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key)
    }
}

const EVIL: &str = "spiffe://evil.org/ns/shop/sa/admin";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const BOTH: [ExtendedKeyUsagePurpose; 2] = [
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

/// Presents `chain` as the client certificate to `server`; returns how it ended.
async fn present(
    forger: &Forger,
    server: &TestServer,
    (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> String {
    let verifier = tls::SpiffeServerVerifier::new(
        tls::root_store(forger.ca.roots()).unwrap(),
        vec![server.identity.clone()],
    );
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = match connector
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
    {
        Err(err) => return err.to_string(),
        Ok(tls) => tls,
    };
    // TLS 1.3 clients learn of a refused certificate from the alert that answers their
    // first read: the HTTP/2 handshake.
    match tokio::time::timeout(WAIT, h2::client::handshake(tls)).await {
        Err(_) => "the server never answered".into(),
        Ok(Err(err)) => err.to_string(),
        Ok(Ok((send, connection))) => {
            let mut connection = tokio::spawn(connection);
            // Accepted once the server's SETTINGS arrive; refused if its alert ends the
            // connection first.
            let settled = async {
                loop {
                    if send.current_max_send_streams() != usize::MAX {
                        return "accepted".to_string();
                    }
                    tokio::select! {
                        ended = &mut connection => return match ended.unwrap() {
                            Ok(()) => "closed".to_string(),
                            Err(err) => err.to_string(),
                        },
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            };
            tokio::time::timeout(WAIT, settled)
                .await
                .unwrap_or_else(|_| "the server never answered".into())
        }
    }
}

#[tokio::test]
async fn the_server_refuses_client_certificates_that_do_not_name_exactly_one_identity() {
    let forger = Forger::new();
    let server = hbone_server(
        certs(forger.ca.clone()),
        id("shop", "server"),
        forger.ca.roots(),
    )
    .await;
    let cases: [(&[&str], &[ExtendedKeyUsagePurpose]); 6] = [
        (&[EVIL, WEB], &BOTH),
        (&[WEB, EVIL], &BOTH),
        (&[WEB, "spiffe://cluster.local/ns/shop/sa/admin"], &BOTH),
        (&["https://shop.example/web"], &BOTH),
        (&[WEB], &[ExtendedKeyUsagePurpose::ServerAuth]),
        (&[WEB], &[]),
    ];
    for (uris, usages) in cases {
        let outcome = present(&forger, &server, forger.leaf(uris, usages)).await;
        assert_ne!(outcome, "accepted", "{uris:?} {usages:?}");
    }
    assert_eq!(
        server.stats.handshake_failures.load(Ordering::Relaxed),
        cases.len() as u64
    );
    assert!(server.seen.peers.lock().unwrap().is_empty());
    // The well-formed certificate from the same forge is accepted: the refusals were
    // about the shape, not the signer.
    let outcome = present(&forger, &server, forger.leaf(&[WEB], &BOTH)).await;
    assert_eq!(outcome, "accepted");
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 1);
}

/// A TLS server presenting `chain`, which answers nothing and closes.
async fn forged_server(
    (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn the_client_refuses_servers_with_two_identities_or_without_server_auth() {
    let forger = Forger::new();
    let server_id = "spiffe://cluster.local/ns/shop/sa/server";
    let expected = vec![id("shop", "server")];
    let verifier = Arc::new(tls::SpiffeServerVerifier::new(
        tls::root_store(forger.ca.roots()).unwrap(),
        expected,
    ));
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    );
    let cases: [(&[&str], &[ExtendedKeyUsagePurpose], bool); 4] = [
        (&[EVIL, server_id], &BOTH, false),
        (&[server_id, EVIL], &BOTH, false),
        (&[server_id], &[ExtendedKeyUsagePurpose::ClientAuth], false),
        (&[server_id], &BOTH, true),
    ];
    for (uris, usages, accepted) in cases {
        let addr = forged_server(forger.leaf(uris, usages)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let outcome = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await;
        assert_eq!(
            outcome.is_ok(),
            accepted,
            "{uris:?} {usages:?}: {outcome:?}"
        );
        if let Err(err) = outcome {
            let text = err.to_string();
            assert!(
                text.contains("Several")
                    || text.contains("serverAuth")
                    || text.contains("server authentication"),
                "the error names the problem: {text}"
            );
        }
    }
}
