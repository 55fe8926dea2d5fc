//! What the HBONE port does with clients that are not HBONE clients: it refuses each one
//! cleanly, and keeps serving everyone else. Also: another HTTP/2 stack can use it.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mesh_core::cert::LocalCa;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_and_app() -> (Arc<LocalCa>, TestServer, std::net::SocketAddr) {
    let ca = Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap());
    let server = hbone_server(certs(ca.clone()), id("shop", "server"), ca.roots()).await;
    (ca, server, echo_app().await)
}

/// After a refusal, a real client still gets a working tunnel.
async fn still_serves(ca: &Arc<LocalCa>, server: &TestServer, app: std::net::SocketAddr) {
    let client = client(certs(ca.clone()));
    let mut tunnel = client
        .connect(request(&id("shop", "web"), server, app))
        .await
        .unwrap();
    assert_eq!(
        echo_through(&mut tunnel, b"still serving").await,
        b"still serving"
    );
}

/// Reads until the server closes; returns what was read (a TLS alert at most).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server kept the connection open")
        {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let (ca, server, app) = server_and_app().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0x17, 0x03, 0x03, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(
        answer.len() <= 7,
        "at most a TLS alert comes back, got {answer:?}"
    );
    assert_eq!(server.stats.handshake_failures.load(Ordering::Relaxed), 1);
    still_serves(&ca, &server, app).await;
}

#[tokio::test]
async fn a_plaintext_http1_request_is_refused() {
    let (ca, server, app) = server_and_app().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "no HTTP answer over plaintext"
    );
    assert_eq!(server.stats.handshake_failures.load(Ordering::Relaxed), 1);
    still_serves(&ca, &server, app).await;
}

#[tokio::test]
async fn http1_over_mutual_tls_is_refused_by_alpn() {
    let (ca, server, app) = server_and_app().await;
    let cert = ca.issue_now(&id("shop", "web")).unwrap();
    let mut config = mesh_core::tls::client_config(&cert, vec![server.identity.clone()]).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let err = connector
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
        .expect_err("an http/1.1-only client must not get a session");
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    still_serves(&ca, &server, app).await;
}

#[tokio::test]
async fn non_connect_and_malformed_authority_get_400() {
    let (ca, server, app) = server_and_app().await;
    let (mut h2, _connection) = h2_connection(&ca, &server).await;
    let requests = [
        http::Request::get(format!("http://{app}/"))
            .body(())
            .unwrap(),
        http::Request::builder()
            .method("CONNECT")
            .uri("server.shop.svc:80")
            .body(())
            .unwrap(),
    ];
    for request in requests {
        let described = format!("{} {}", request.method(), request.uri());
        h2 = h2.ready().await.unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 400, "{described}");
    }
    assert_eq!(server.stats.malformed.load(Ordering::Relaxed), 2);
    assert_eq!(server.stats.tunnels.load(Ordering::Relaxed), 0);
    still_serves(&ca, &server, app).await;
}

#[tokio::test]
async fn python_h2_over_openssl_opens_a_tunnel() {
    let (ca, server, app) = server_and_app().await;
    let web = id("shop", "web");
    let pem = ca.issue_pem(&web).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, roots) = (
        write("cert.pem", &pem.cert_chain),
        write("key.pem", &pem.key),
        write("root.pem", &pem.roots),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/h2_connect.py");
    let args = [
        script.to_string(),
        "--server".into(),
        server.addr.to_string(),
        "--authority".into(),
        app.to_string(),
        "--cert".into(),
        cert,
        "--key".into(),
        key,
        "--ca".into(),
        roots,
        "--message".into(),
        "hello from python h2".into(),
    ];
    // Debian's python3 with python3-h2 (scripts/setup-machine installs it).
    let output =
        tokio::task::spawn_blocking(move || Command::new("/usr/bin/python3").args(args).output())
            .await
            .unwrap()
            .expect(
                "running /usr/bin/python3; scripts/setup-machine installs python3 and python3-h2",
            );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "spiffe://cluster.local/ns/shop/sa/server",
            "hello from python h2"
        ]
    );
    assert_eq!(
        server.seen.peers.lock().unwrap()[0].identity,
        web,
        "the server saw the python client's identity"
    );
}
