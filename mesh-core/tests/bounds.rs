//! What one peer may hold on the HBONE port is bounded: connections that open no tunnel
//! are closed, one source address gets a capped share of connections and tunnels, and
//! the stream limit is advertised. Each bound is tested by a client that overstays it.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_core::hbone::ServerSettings;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

async fn server(settings: ServerSettings) -> (Arc<mesh_core::cert::LocalCa>, TestServer) {
    let ca = Arc::new(mesh_core::cert::LocalCa::generate(TRUST_DOMAIN).unwrap());
    let server = hbone_server_with(
        certs(ca.clone()),
        id("shop", "server"),
        ca.roots(),
        settings,
    )
    .await;
    (ca, server)
}

#[tokio::test]
async fn a_connection_that_opens_no_tunnel_is_closed_after_the_idle_timeout() {
    let settings = ServerSettings {
        idle_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let (ca, server) = server(settings).await;
    let (send, connection) = h2_connection(&ca, &server).await;
    // The server's SETTINGS arrive just after the handshake.
    let advertised = async {
        while send.current_max_send_streams() == usize::MAX {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        send.current_max_send_streams()
    };
    assert_eq!(
        tokio::time::timeout(WAIT, advertised).await.unwrap(),
        100,
        "SETTINGS_MAX_CONCURRENT_STREAMS is advertised"
    );
    tokio::time::timeout(WAIT, connection)
        .await
        .expect("the idle connection was kept open")
        .unwrap()
        .unwrap();
    assert_eq!(server.stats.idle_closed.load(Ordering::Relaxed), 1);

    // A connection with a long tunnel is not idle, however long the tunnel stays quiet.
    let app = echo_app().await;
    let client = client(certs(ca.clone()));
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        echo_through(&mut tunnel, b"still here").await,
        b"still here"
    );
    assert_eq!(server.stats.idle_closed.load(Ordering::Relaxed), 1);
}

/// A plain TCP connection to `server` from `source`.
async fn tcp_from(source: &str, server: &TestServer) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Whether the server closed `stream` (EOF or reset) within a second.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn one_source_holds_at_most_its_share_of_connections() {
    let settings = ServerSettings {
        max_connections_per_source: 3,
        ..ServerSettings::default()
    };
    let (ca, server) = server(settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from("127.0.0.1", &server).await);
    }
    let mut fourth = tcp_from("127.0.0.1", &server).await;
    assert!(closed_by_server(&mut fourth).await, "a fourth is closed");
    assert!(
        !closed_by_server(&mut held[0]).await,
        "the first three stay (until their handshake times out)"
    );
    assert_eq!(
        server.stats.over_connection_limit.load(Ordering::Relaxed),
        1
    );
    // Another source address is not affected, and a freed slot is reusable.
    let client = client(certs(ca.clone()));
    let app = echo_app().await;
    let _other = tcp_from("127.0.0.2", &server).await;
    assert!(!closed_by_server(&mut tcp_from("127.0.0.2", &server).await).await);
    held.clear();
    let mut tunnel = tokio::time::timeout(
        WAIT,
        client.connect(request(&id("shop", "web"), &server, app)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        echo_through(&mut tunnel, b"room again").await,
        b"room again"
    );
}

#[tokio::test]
async fn one_source_holds_at_most_its_share_of_tunnels() {
    let settings = ServerSettings {
        max_tunnels_per_source: 2,
        ..ServerSettings::default()
    };
    let (ca, server) = server(settings).await;
    let app = echo_app().await;
    let client = client(certs(ca.clone()));
    let web = id("shop", "web");
    let mut first = client.connect(request(&web, &server, app)).await.unwrap();
    let _second = client.connect(request(&web, &server, app)).await.unwrap();
    let third = client.connect(request(&web, &server, app)).await;
    assert!(
        matches!(
            third,
            Err(mesh_core::hbone::HboneError::Refused { status, .. }) if status == 429
        ),
        "{third:?}"
    );
    assert_eq!(server.stats.over_tunnel_limit.load(Ordering::Relaxed), 1);
    assert_eq!(echo_through(&mut first, b"unaffected").await, b"unaffected");
    drop(first);
    // The slot comes back when a tunnel ends.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(tunnel) = client.connect(request(&web, &server, app)).await {
            again = Some(tunnel);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.expect("a tunnel slot was never given back");
    assert_eq!(echo_through(&mut again, b"freed").await, b"freed");
}
