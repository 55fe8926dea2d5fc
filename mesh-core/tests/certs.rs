//! Certificates: issuance, CA files, renewal, and what TLS refuses on either side.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use mesh_core::cert::{
    CertError, CertManager, CertificateProvider, IssueFuture, LocalCa, RenewalPolicy, WorkloadCert,
};
use mesh_core::hbone::HboneError;
use mesh_core::tls;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const HOUR: Duration = Duration::from_secs(3600);

fn ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap())
}

#[test]
fn issued_certificates_carry_the_identity_and_ttl() {
    let ca = LocalCa::generate(TRUST_DOMAIN).unwrap().with_ttl(2 * HOUR);
    let web = id("shop", "web");
    let cert = ca.issue_now(&web).unwrap();
    assert_eq!(cert.identity(), &web);
    assert_eq!(cert.info().identities, vec![web]);
    let lifetime = cert
        .info()
        .not_after
        .duration_since(cert.info().not_before)
        .unwrap();
    assert!(
        lifetime >= 2 * HOUR && lifetime <= 2 * HOUR + Duration::from_secs(61),
        "{lifetime:?}"
    );
    assert!(cert.is_valid_at(SystemTime::now()));
    let other = ca.issue_now(&id("shop", "web")).unwrap();
    assert_ne!(cert.info().serial, other.info().serial);
    let foreign = Identity::new("other.domain", "shop", "web").unwrap();
    assert!(matches!(
        ca.issue_now(&foreign),
        Err(CertError::Unavailable { .. })
    ));
}

#[test]
fn a_generated_ca_is_persisted_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_generate(dir.path(), TRUST_DOMAIN).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    let second = LocalCa::load_or_generate(dir.path(), TRUST_DOMAIN).unwrap();
    assert_eq!(
        first.roots(),
        second.roots(),
        "the second start reuses the stored root"
    );
    // A certificate from the reloaded CA verifies against the original root.
    let cert = second.issue_now(&id("shop", "web")).unwrap();
    assert_eq!(cert.roots(), first.roots());
}

#[test]
fn broken_ca_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::generate(TRUST_DOMAIN)
        .unwrap()
        .write_to(dir.path())
        .unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), "not a key").unwrap();
    let err = LocalCa::load(dir.path(), TRUST_DOMAIN)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca-key.pem"), "{err}");
    std::fs::write(dir.path().join("ca-cert.pem"), "").unwrap();
    let err = LocalCa::load(dir.path(), TRUST_DOMAIN)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ca-cert.pem") && err.contains("no CERTIFICATE"),
        "{err}"
    );
}

#[tokio::test]
async fn an_intermediate_ca_from_files_issues_certificates_peers_accept() {
    let root = LocalCa::generate(TRUST_DOMAIN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    root.intermediate("mesh intermediate")
        .unwrap()
        .write_to(dir.path())
        .unwrap();
    let intermediate = Arc::new(LocalCa::load(dir.path(), TRUST_DOMAIN).unwrap());
    assert_eq!(intermediate.roots(), root.roots());

    // Server certs from the intermediate, client certs from the root: both chain.
    let server = hbone_server(
        certs(intermediate.clone()),
        id("shop", "server"),
        root.roots(),
    )
    .await;
    let client = client(certs(Arc::new(root)));
    let app = echo_app().await;
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();
    assert_eq!(echo_through(&mut tunnel, b"chained").await, b"chained");
}

/// A server presenting one fixed certificate, whatever its dates.
async fn fixed_cert_server(
    cert: WorkloadCert,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> TestServer {
    let resolver = Arc::new(SingleCertAndKey::from(cert.certified_key().clone()));
    let config = tls::server_config(resolver, roots, TRUST_DOMAIN).unwrap();
    let manager = certs(ca());
    serve_with(
        config,
        cert.identity().clone(),
        manager,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
}

#[tokio::test]
async fn the_client_refuses_expired_not_yet_valid_and_foreign_servers() {
    let ca = ca();
    let now = SystemTime::now();
    let server_id = id("shop", "server");
    let foreign_ca = LocalCa::generate(TRUST_DOMAIN).unwrap();
    let cases = [
        (
            ca.issue_valid_between(&server_id, now - 2 * HOUR, now - HOUR)
                .unwrap(),
            "Expired",
        ),
        (
            ca.issue_valid_between(&server_id, now + HOUR, now + 2 * HOUR)
                .unwrap(),
            "NotValidYet",
        ),
        (foreign_ca.issue_now(&server_id).unwrap(), "UnknownIssuer"),
    ];
    let client = client(certs(ca.clone()));
    let app = echo_app().await;
    for (cert, reason) in cases {
        let server = fixed_cert_server(cert, ca.roots()).await;
        let err = client
            .connect(request(&id("shop", "web"), &server, app))
            .await
            .unwrap_err();
        assert!(matches!(err, HboneError::Handshake { .. }), "{err:?}");
        assert!(err.to_string().contains(reason), "expected {reason}: {err}");
        assert_eq!(server.stats.tunnels.load(Ordering::Relaxed), 0);
    }
}

/// Does a TLS handshake with `cert` as client certificate, then tries to read: in TLS 1.3
/// the server's verdict on the client certificate arrives after the client's handshake.
async fn present_client_cert(server: &TestServer, config: rustls::ClientConfig) -> String {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
    {
        Err(err) => err.to_string(),
        Ok(mut tls) => {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .expect("the server never answered")
            {
                Err(err) => err.to_string(),
                Ok(n) => format!("read {n} bytes"),
            }
        }
    }
}

#[tokio::test]
async fn the_server_refuses_expired_not_yet_valid_foreign_and_missing_client_certs() {
    let ca = ca();
    let server = hbone_server(certs(ca.clone()), id("shop", "server"), ca.roots()).await;
    let now = SystemTime::now();
    let web = id("shop", "web");
    let foreign_ca = LocalCa::generate(TRUST_DOMAIN).unwrap();
    let other_domain = LocalCa::generate("other.domain").unwrap();
    let expected = vec![server.identity.clone()];
    let with_cert = |cert: WorkloadCert| {
        let mut config = tls::client_config(&cert, expected.clone()).unwrap();
        // The client must trust the server; only the client's own cert is bad.
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
                tls::root_store(ca.roots()).unwrap(),
                expected.clone(),
            )));
        config
    };
    let cases = [
        (
            with_cert(
                ca.issue_valid_between(&web, now - 2 * HOUR, now - HOUR)
                    .unwrap(),
            ),
            "CertificateExpired",
        ),
        (
            with_cert(
                ca.issue_valid_between(&web, now + HOUR, now + 2 * HOUR)
                    .unwrap(),
            ),
            "CertificateExpired",
        ),
        (with_cert(foreign_ca.issue_now(&web).unwrap()), "UnknownCA"),
        (
            with_cert(
                other_domain
                    .issue_now(&Identity::new("other.domain", "shop", "web").unwrap())
                    .unwrap(),
            ),
            "UnknownCA",
        ),
    ];
    let mut refused = 0;
    for (config, alert) in cases {
        let outcome = present_client_cert(&server, config).await;
        assert!(
            outcome.contains(alert),
            "expected alert {alert}, got: {outcome}"
        );
        refused += 1;
    }
    // No client certificate at all.
    let no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
            tls::root_store(ca.roots()).unwrap(),
            expected.clone(),
        )))
        .with_no_client_auth();
    let outcome = present_client_cert(&server, no_cert).await;
    assert!(outcome.contains("CertificateRequired"), "{outcome}");
    refused += 1;
    assert_eq!(
        server.stats.handshake_failures.load(Ordering::Relaxed),
        refused
    );
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_server_refuses_a_client_of_another_trust_domain_even_from_a_shared_root() {
    // One root, two trust domains: chain checks pass, the trust-domain check must not.
    let root = LocalCa::generate(TRUST_DOMAIN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    root.write_to(dir.path()).unwrap();
    let other = LocalCa::load(dir.path(), "other.domain").unwrap();
    let server = hbone_server(certs(Arc::new(root)), id("shop", "server"), other.roots()).await;
    let stranger = other
        .issue_now(&Identity::new("other.domain", "shop", "web").unwrap())
        .unwrap();
    let config = tls::client_config(&stranger, vec![server.identity.clone()]).unwrap();
    let outcome = present_client_cert(&server, config).await;
    assert!(
        outcome.contains("BadCertificate") || outcome.contains("alert"),
        "{outcome}"
    );
    assert_eq!(server.stats.handshake_failures.load(Ordering::Relaxed), 1);
}

/// Wraps the real CA to count issuances and to fail on demand.
struct Flaky {
    ca: LocalCa,
    calls: AtomicUsize,
    failing: AtomicBool,
    delay: Duration,
}

impl CertificateProvider for Flaky {
    fn issue<'a>(&'a self, identity: &'a Identity) -> IssueFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(CertError::Unavailable {
                    identity: identity.clone(),
                    reason: "CA unreachable".into(),
                });
            }
            self.ca.issue_now(identity)
        })
    }
}

fn flaky(ttl: Duration, delay: Duration) -> Arc<Flaky> {
    Arc::new(Flaky {
        ca: LocalCa::generate(TRUST_DOMAIN).unwrap().with_ttl(ttl),
        calls: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
        delay,
    })
}

fn fast_retry() -> RenewalPolicy {
    RenewalPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn concurrent_first_fetches_share_one_issuance() {
    let provider = flaky(HOUR, Duration::from_millis(100));
    let manager = Arc::new(CertManager::new(provider.clone(), fast_retry()));
    let web = id("shop", "web");
    let fetches: Vec<_> = (0..50)
        .map(|_| {
            let (manager, web) = (manager.clone(), web.clone());
            tokio::spawn(async move { manager.fetch(&web).await.unwrap().info().serial.clone() })
        })
        .collect();
    let mut serials = Vec::new();
    for fetch in fetches {
        serials.push(fetch.await.unwrap());
    }
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    assert!(serials.windows(2).all(|w| w[0] == w[1]));
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Rotation and expiry of day-long certificates, in paused time: the manager's deadlines
/// are on tokio's clock, so nothing here sleeps for real.
#[tokio::test(start_paused = true)]
async fn renewal_happens_at_half_life_and_failures_keep_the_valid_cert_in_service() {
    let provider = flaky(24 * HOUR, Duration::ZERO);
    let manager = CertManager::new(provider.clone(), fast_retry());
    let web = id("shop", "web");
    let first = manager.fetch(&web).await.unwrap();
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);

    // Before half-life nothing happens.
    tokio::time::sleep(11 * HOUR).await;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1, "no early renewal");

    // Renewal fails for a while: the first certificate stays in service meanwhile.
    provider.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(HOUR + Duration::from_secs(60)).await;
    assert!(
        provider.calls.load(Ordering::SeqCst) >= 3,
        "renewal was attempted at half-life and retried"
    );
    assert_eq!(
        manager.fetch(&web).await.unwrap().info().serial,
        first.info().serial
    );

    provider.failing.store(false, Ordering::SeqCst);
    let second = within(
        "the renewed certificate",
        manager.next_rotation(&web, &first),
    )
    .await;
    assert_ne!(second.info().serial, first.info().serial);
    assert_eq!(
        manager.current(&web).unwrap().info().serial,
        second.info().serial
    );

    // The CA goes away for good: past the second certificate's lifetime there is none.
    provider.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(25 * HOUR).await;
    assert!(manager.current(&web).is_none(), "expired");
    let err = manager.fetch(&web).await.unwrap_err().to_string();
    assert!(
        err.contains("CA unreachable") || err.contains("expired"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_issuance_is_reported_and_retried() {
    let provider = flaky(HOUR, Duration::ZERO);
    provider.failing.store(true, Ordering::SeqCst);
    let manager = CertManager::new(provider.clone(), fast_retry());
    let web = id("shop", "web");
    let err = manager.fetch(&web).await.unwrap_err().to_string();
    assert!(
        err.contains("CA unreachable") && err.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{err}"
    );
    provider.failing.store(false, Ordering::SeqCst);
    within("a certificate after the CA recovers", async {
        loop {
            if let Ok(cert) = manager.fetch(&web).await {
                break cert;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn rotation_keeps_live_tunnels_and_new_tunnels_use_the_new_cert() {
    let server_ca = ca();
    let server = hbone_server(
        certs(server_ca.clone()),
        id("shop", "server"),
        server_ca.roots(),
    )
    .await;
    // The client's CA shares the server's root but issues short-lived certificates.
    let dir = tempfile::tempdir().unwrap();
    server_ca.write_to(dir.path()).unwrap();
    let short_lived = Arc::new(
        LocalCa::load(dir.path(), TRUST_DOMAIN)
            .unwrap()
            .with_ttl(Duration::from_secs(2)),
    );
    let manager = certs(short_lived);
    let client = client(manager.clone());
    let web = id("shop", "web");
    let app = echo_app().await;

    let mut live = client.connect(request(&web, &server, app)).await.unwrap();
    assert_eq!(echo_through(&mut live, b"before").await, b"before");
    let first = manager.current(&web).unwrap();
    let second = within(
        "the client cert to rotate",
        manager.next_rotation(&web, &first),
    )
    .await;

    assert_eq!(
        echo_through(&mut live, b"after rotation").await,
        b"after rotation",
        "live tunnel survives"
    );
    let mut fresh = client.connect(request(&web, &server, app)).await.unwrap();
    assert_eq!(echo_through(&mut fresh, b"new").await, b"new");
    let peers = server.seen.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].cert_serial, first.info().serial);
    assert_eq!(
        peers[1].cert_serial,
        second.info().serial,
        "the new tunnel presents the new cert"
    );
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 2);
}

/// The CA commands deploy/README.md gives operators (openssl, Istio's cacerts layout).
fn readme_ca_commands() -> String {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/README.md"),
    )
    .unwrap();
    let start = readme
        .find("openssl req")
        .expect("the README's openssl command");
    let end = readme[start..].find("kubectl").unwrap() + start;
    readme[start..end].to_string()
}

#[tokio::test]
async fn the_ca_an_operator_makes_with_the_readmes_openssl_commands_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .args(["-euc", &readme_ca_commands()])
        .current_dir(dir.path())
        .output()
        .expect("bash and openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = Arc::new(LocalCa::load(dir.path(), TRUST_DOMAIN).unwrap());
    let server = hbone_server(certs(ca.clone()), id("shop", "server"), ca.roots()).await;
    let client = client(certs(ca));
    let app = echo_app().await;
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();
    assert_eq!(
        echo_through(&mut tunnel, b"operator CA").await,
        b"operator CA"
    );
}
