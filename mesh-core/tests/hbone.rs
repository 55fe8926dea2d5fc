//! HBONE end to end in one process: real TLS, real HTTP/2, real sockets on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use mesh_core::cert::LocalCa;
use mesh_core::hbone::{ClientSettings, HboneClient, HboneError, headers};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap())
}

#[tokio::test]
async fn a_16_mib_payload_round_trips_intact() {
    let Fixture {
        server,
        app,
        client,
        ..
    } = Fixture::start().await;
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();

    let payload: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let echoed = echo_through(&mut tunnel, &payload).await;
    assert!(echoed == payload, "16 MiB came back altered");

    // Half-close travels as END_STREAM and comes back as EOF.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn ten_thousand_messages_echo_in_order() {
    let Fixture {
        server,
        app,
        client,
        ..
    } = Fixture::start().await;
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();
    for n in 0..10_000u32 {
        let message = format!("message {n:05}");
        tunnel.write_all(message.as_bytes()).await.unwrap();
        let mut reply = vec![0u8; message.len()];
        tunnel.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, message.as_bytes(), "message {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels_share_ten_connections() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let app = echo_app().await;
    let client = Arc::new(client(certs));
    let src = id("shop", "web");

    // Open all tunnels first and keep them open, so they are truly concurrent.
    let mut opening = Vec::new();
    for _ in 0..1000 {
        let (client, request) = (client.clone(), request(&src, &server, app));
        opening.push(tokio::spawn(async move { client.connect(request).await }));
    }
    let mut tunnels = Vec::new();
    for task in opening {
        tunnels.push(task.await.unwrap().unwrap());
    }
    let mut exchanges = Vec::new();
    for (n, mut tunnel) in tunnels.into_iter().enumerate() {
        exchanges.push(tokio::spawn(async move {
            let payload = format!("tunnel {n} ").repeat(100).into_bytes();
            assert_eq!(
                echo_through(&mut tunnel, &payload).await,
                payload,
                "tunnel {n}"
            );
            tunnel
        }));
    }
    let mut still_open = Vec::new();
    for exchange in exchanges {
        still_open.push(exchange.await.unwrap());
    }
    assert_eq!(client.pooled_connections(), 10);
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 10);
    assert_eq!(server.stats.tunnels.load(Ordering::Relaxed), 1000);
    drop(still_open);
}

#[tokio::test]
async fn the_server_sees_the_client_identity_and_istio_headers() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let app = echo_app().await;
    let client = client(certs.clone());
    let src = id("shop", "web");
    let mut request = request(&src, &server, app);
    request.headers.insert(
        headers::FORWARDED,
        headers::forwarded_for("10.244.1.2".parse().unwrap()),
    );
    let mut tunnel = client.connect(request).await.unwrap();
    assert_eq!(echo_through(&mut tunnel, b"hi").await, b"hi");

    let peers = server.seen.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].identity, src);
    assert_eq!(
        peers[0].cert_serial,
        certs.current(&src).unwrap().info().serial
    );
    let seen = server.seen.headers.lock().unwrap()[0].clone();
    assert_eq!(
        headers::parse_forwarded_for(&seen[headers::FORWARDED]),
        Some("10.244.1.2".parse().unwrap())
    );
    assert!(
        seen.contains_key(headers::TRACEPARENT),
        "a traceparent is always sent"
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_outside_the_expected_identities() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "impostor"), ca.roots()).await;
    let app = echo_app().await;
    let client = client(certs);
    let mut request = request(&id("shop", "web"), &server, app);
    request.dst_identities = vec![id("shop", "server"), id("shop", "server-canary")];
    let err = client.connect(request).await.unwrap_err();
    assert!(matches!(err, HboneError::Handshake { .. }), "{err:?}");
    let text = format!("{err}");
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/impostor is not among the expected")
            && text.contains("spiffe://cluster.local/ns/shop/sa/server-canary"),
        "{text}"
    );
    assert_eq!(server.stats.tunnels.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn denial_no_upstream_and_malformed_requests_get_their_statuses() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let client = client(certs);
    let src = id("shop", "web");

    let denied = format!("127.0.0.1:{DENIED_PORT}").parse().unwrap();
    match client
        .connect(request(&src, &server, denied))
        .await
        .unwrap_err()
    {
        HboneError::Refused { status, .. } => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    match client
        .connect(request(&src, &server, closed_port().await))
        .await
        .unwrap_err()
    {
        HboneError::Refused { status, .. } => assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE),
        other => panic!("expected 503, got {other:?}"),
    }
    // The connection survives refused tunnels and carries the next good one.
    let app = echo_app().await;
    let mut tunnel = client.connect(request(&src, &server, app)).await.unwrap();
    assert_eq!(
        echo_through(&mut tunnel, b"still fine").await,
        b"still fine"
    );
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let app = echo_app().await;
    let settings = ClientSettings {
        idle_timeout: Duration::from_millis(200),
        ..ClientSettings::default()
    };
    let client = HboneClient::new(certs, settings);
    let mut tunnel = client
        .connect(request(&id("shop", "web"), &server, app))
        .await
        .unwrap();
    assert_eq!(echo_through(&mut tunnel, b"x").await, b"x");
    assert_eq!(client.pooled_connections(), 1);

    // An active tunnel keeps its connection however long it lasts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.pooled_connections(), 1);
    drop(tunnel);
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.pooled_connections() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a burst that needed more connections than lanes, the surplus closes soon and the
/// lanes used last stay open for the (long) idle timeout, still carrying tunnels.
#[tokio::test]
async fn a_bursts_surplus_connections_close_before_the_lanes() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let app = echo_app().await;
    let src = id("shop", "web");
    let settings = ClientSettings {
        max_streams_per_connection: 1,
        lanes: 2,
        idle_timeout: Duration::from_secs(60),
        surplus_idle_timeout: Duration::from_millis(100),
        ..ClientSettings::default()
    };
    let client = HboneClient::new(certs, settings);
    let mut burst = Vec::new();
    for n in 0..5u8 {
        let mut tunnel = client.connect(request(&src, &server, app)).await.unwrap();
        assert_eq!(echo_through(&mut tunnel, &[n]).await, [n]);
        burst.push(tunnel);
    }
    assert_eq!(client.pooled_connections(), 5, "one stream per connection");
    drop(burst);

    let deadline = tokio::time::Instant::now() + WAIT;
    while client.pooled_connections() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the surplus never closed: {} open",
            client.pooled_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lanes outlive several surplus periods and carry the next tunnels, one each.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.pooled_connections(), 2);
    let mut first = client.connect(request(&src, &server, app)).await.unwrap();
    let mut second = client.connect(request(&src, &server, app)).await.unwrap();
    assert_eq!(echo_through(&mut first, b"a").await, b"a");
    assert_eq!(echo_through(&mut second, b"b").await, b"b");
    assert_eq!(client.pooled_connections(), 2, "the kept lanes were reused");
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced() {
    let ca = ca();
    let certs = certs(ca.clone());
    let identity = id("shop", "server");
    let first = hbone_server(certs.clone(), identity.clone(), ca.roots()).await;
    let app = echo_app().await;
    let client = client(certs.clone());
    let src = id("shop", "web");
    let mut tunnel = client.connect(request(&src, &first, app)).await.unwrap();
    assert_eq!(echo_through(&mut tunnel, b"one").await, b"one");
    drop(tunnel);

    // The server goes away (its connections with it) and comes back on the same port.
    let addr = first.addr;
    first.stop().await;
    let resolver = Arc::new(mesh_core::tls::ManagedCertResolver::new(
        certs.clone(),
        identity.clone(),
    ));
    let config = mesh_core::tls::server_config(resolver, ca.roots(), TRUST_DOMAIN).unwrap();
    let second = serve_with(config, identity, certs, addr).await;

    let mut tunnel = client.connect(request(&src, &second, app)).await.unwrap();
    assert_eq!(echo_through(&mut tunnel, b"two").await, b"two");
    assert_eq!(second.stats.connections.load(Ordering::Relaxed), 1);
}

/// ztunnel's outbound side: an app's TCP connection spliced into a tunnel, against the
/// server's splice into the echo app. Large transfers cross intact both ways, byte counts
/// are exact, and each side's EOF reaches the other as a half-close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_carries_both_directions_and_half_closes() {
    let fixture = Fixture::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let request = request(&id("shop", "web"), &fixture.server, fixture.app);
    let proxy = async {
        let (app, _) = listener.accept().await.unwrap();
        let tunnel = fixture.client.connect(request).await.unwrap();
        mesh_core::hbone::splice(&app, tunnel).await.unwrap()
    };

    let payload: Vec<u8> = (0..(24u32 << 20) / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let user = async {
        let stream = tokio::net::TcpStream::connect(front).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let send = async {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap(); // half-close: the echo app sees EOF and closes
        };
        let mut received = Vec::with_capacity(payload.len());
        let (_, got) = tokio::join!(send, read.read_to_end(&mut received));
        got.unwrap();
        received
    };
    let (counts, received) = tokio::time::timeout(WAIT, async { tokio::join!(proxy, user) })
        .await
        .unwrap();
    assert!(received == payload, "24 MiB echoed intact");
    assert_eq!(
        counts,
        mesh_core::hbone::Spliced {
            to_tunnel: payload.len() as u64,
            from_tunnel: payload.len() as u64
        }
    );
}

/// Request/response through both splices, as an app's RPCs cross the mesh: messages from
/// 1 byte to past a read chunk, some written in two parts with a pause between (data that
/// arrives just after a read took everything), the last one followed by the client's EOF.
/// A read that wrongly marked the socket drained would stall an exchange (each is bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_ping_pong_never_stalls() {
    let fixture = Fixture::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let request = request(&id("shop", "web"), &fixture.server, fixture.app);
    let proxy = tokio::spawn(async move {
        let (app, _) = listener.accept().await.unwrap();
        let tunnel = fixture.client.connect(request).await.unwrap();
        let counts = mesh_core::hbone::splice(&app, tunnel).await.unwrap();
        drop(fixture);
        counts
    });

    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let sizes = [1usize, 7, 1024, 4096, 65_535, 65_536, 65_537, 100_000, 300];
    let mut sent = 0u64;
    for round in 0..600usize {
        let size = sizes[round % sizes.len()];
        let message: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
        let exchange = async {
            if round % 3 == 0 && size > 1 {
                let (first, rest) = message.split_at(size / 2);
                stream.write_all(first).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                stream.write_all(rest).await.unwrap();
            } else {
                stream.write_all(&message).await.unwrap();
            }
            let mut echoed = vec![0u8; size];
            stream.read_exact(&mut echoed).await.unwrap();
            echoed
        };
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
            .await
            .unwrap_or_else(|_| panic!("exchange {round} ({size} bytes) stalled"));
        assert!(echoed == message, "exchange {round} ({size} bytes) intact");
        sent += size as u64;
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the client's EOF reached the echo app and its close came back")
        .unwrap();
    assert!(rest.is_empty());
    let counts = tokio::time::timeout(WAIT, proxy).await.unwrap().unwrap();
    assert_eq!(
        counts,
        mesh_core::hbone::Spliced {
            to_tunnel: sent,
            from_tunnel: sent
        }
    );
}

/// A server whose first connection goes away (GOAWAY with last stream 0: nothing processed)
/// as soon as it is made, as a ztunnel handing over may, and whose later connections
/// answer 200.
async fn goaway_first_server(
    ca: &Arc<LocalCa>,
    identity: &mesh_core::Identity,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let certs = certs(ca.clone());
    certs.fetch(identity).await.unwrap();
    let resolver = Arc::new(mesh_core::tls::ManagedCertResolver::new(
        certs,
        identity.clone(),
    ));
    let config = mesh_core::tls::server_config(resolver, ca.roots(), TRUST_DOMAIN).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut h2: h2::server::Connection<_, bytes::Bytes> =
                    h2::server::handshake(tls).await.unwrap();
                if first {
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                }
                while let Some(Ok((request, mut respond))) = h2.accept().await {
                    let _ = request;
                    let response = http::Response::builder().status(200).body(()).unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let _ = send.send_data(bytes::Bytes::new(), true);
                    });
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_tunnel_declined_unprocessed_by_a_server_going_away_is_retried_on_a_new_connection() {
    let ca = ca();
    let server_id = id("shop", "server");
    let (addr, connections) = goaway_first_server(&ca, &server_id).await;
    let client = client(certs(ca.clone()));
    let request = mesh_core::hbone::ConnectRequest {
        src: id("shop", "web"),
        dst: addr,
        dst_identities: vec![server_id],
        authority: "10.244.2.2:8080".parse().unwrap(),
        headers: http::HeaderMap::new(),
    };
    let tunnel = tokio::time::timeout(WAIT, client.connect(request))
        .await
        .expect("the retry never finished");
    assert!(tunnel.is_ok(), "{:?}", tunnel.err());
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the declined stream went to a second connection"
    );
}

/// Tunnels open at the same time spread over two connections (their TLS work can then run
/// on two cores); one after another they reuse one; with one lane they all share one.
#[tokio::test]
async fn concurrent_tunnels_spread_over_lanes() {
    let ca = ca();
    let certs = certs(ca.clone());
    let server = hbone_server(certs.clone(), id("shop", "server"), ca.roots()).await;
    let app = echo_app().await;
    let src = id("shop", "web");

    let client = HboneClient::new(certs.clone(), ClientSettings::default());
    let mut first = client.connect(request(&src, &server, app)).await.unwrap();
    assert_eq!(echo_through(&mut first, b"1").await, b"1");
    drop(first);
    let mut again = client.connect(request(&src, &server, app)).await.unwrap();
    assert_eq!(echo_through(&mut again, b"2").await, b"2");
    assert_eq!(client.pooled_connections(), 1, "one after another: one");
    // Tunnels opened and kept open, each carrying a byte.
    let hold = async |client: &HboneClient| {
        let mut held = Vec::new();
        for n in 0..4u8 {
            let mut tunnel = client.connect(request(&src, &server, app)).await.unwrap();
            assert_eq!(echo_through(&mut tunnel, &[n]).await, [n]);
            held.push(tunnel);
        }
        held
    };
    let _concurrent = hold(&client).await;
    assert_eq!(client.pooled_connections(), 2, "five at once: two lanes");

    let packed = HboneClient::new(
        certs,
        ClientSettings {
            lanes: 1,
            ..ClientSettings::default()
        },
    );
    let _held = hold(&packed).await;
    assert_eq!(packed.pooled_connections(), 1, "one lane: one connection");
}

/// A bulk upload through the splice travels in whole TLS records: a full socket read
/// becomes one DATA frame whose head and payload fit rustls's 64 KiB write, instead of
/// leaving the head's 9 bytes to a record (a `writev` and a packet) of their own after
/// every 64 KiB. Seen from a plain TCP forwarder between client and server that reads the
/// record headers going to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_upload_sends_no_tiny_tls_records() {
    let fixture = Fixture::start().await;
    let (forwarder, records) = record_counting_forwarder(fixture.server.addr).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    // A sink, not the echo app: an echo's window updates would be tiny records too.
    let sink = sink_app().await;
    let mut request = request(&id("shop", "web"), &fixture.server, sink);
    request.dst = forwarder;
    let proxy = async {
        let (app, _) = listener.accept().await.unwrap();
        let tunnel = fixture.client.connect(request).await.unwrap();
        mesh_core::hbone::splice(&app, tunnel).await.unwrap()
    };
    const UPLOAD: usize = 32 << 20;
    let user = async {
        let stream = tokio::net::TcpStream::connect(front).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let send = async {
            // Written far faster than the tunnel encrypts: the proxy's reads come full.
            write.write_all(&vec![7u8; UPLOAD]).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut answer = Vec::new();
        let (_, got) = tokio::join!(send, read.read_to_end(&mut answer));
        got.unwrap();
        u64::from_le_bytes(answer.try_into().expect("the sink's count"))
    };
    let (counts, received) = tokio::time::timeout(WAIT, async { tokio::join!(proxy, user) })
        .await
        .unwrap();
    assert_eq!((counts.to_tunnel, received), (UPLOAD as u64, UPLOAD as u64));

    let lengths = records.lock().unwrap().clone();
    let full = lengths.iter().filter(|&&len| len > 16 << 10).count();
    let tiny = lengths.iter().filter(|&&len| len <= 64).count();
    assert!(
        full >= UPLOAD / (16 << 10) / 2,
        "the upload went in full records ({full} of {} records)",
        lengths.len()
    );
    // What is left tiny is HTTP/2's own control frames (SETTINGS and its ACK, window
    // updates for the echo), not one per 64 KiB (512 here).
    assert!(
        tiny < 32,
        "{tiny} records of at most 64 bytes among {} records",
        lengths.len()
    );
}

/// A TCP app that reads to the end, answers how many bytes it got (8 bytes, little
/// endian) and closes.
async fn sink_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let got = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
                stream.write_all(&got.to_le_bytes()).await?;
                stream.shutdown().await
            });
        }
    });
    addr
}

/// A TCP forwarder to `to` that records the length of every TLS record sent towards `to`.
async fn record_counting_forwarder(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let records = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = records.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(to).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                let _ = client_write.shutdown().await;
            });
            let seen = seen.clone();
            tokio::spawn(async move {
                // Each record: a 5-byte header (type, version, length) and its body.
                let mut header = [0u8; 5];
                while client_read.read_exact(&mut header).await.is_ok() {
                    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
                    let mut body = vec![0u8; len];
                    if client_read.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    seen.lock().unwrap().push(len);
                    let forwarded = async {
                        server_write.write_all(&header).await?;
                        server_write.write_all(&body).await
                    };
                    if forwarded.await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
            });
        }
    });
    (addr, records)
}

/// On worker threads (`mesh_core::workers`) a tunnel rides a connection of its own
/// worker's, driven there: two workers holding tunnels to one destination at once open one
/// connection each, even with one lane. A server whose drain places connections on
/// workers serves each accepted connection and all its tunnels on one worker, and the two
/// connections on two workers.
#[tokio::test]
async fn on_workers_each_worker_has_its_own_connections_and_keeps_their_tunnels() {
    use mesh_core::hbone::{HboneServer, InboundTunnel, ServerSettings};
    use mesh_core::workers::{self, Workers};

    let ca = ca();
    let certs = certs(ca.clone());
    let server_id = id("shop", "server");
    certs.fetch(&server_id).await.unwrap();
    let resolver = Arc::new(mesh_core::tls::ManagedCertResolver::new(
        certs.clone(),
        server_id.clone(),
    ));
    let config = mesh_core::tls::server_config(resolver, ca.roots(), TRUST_DOMAIN).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let tunnels_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = tunnels_seen.clone();
    let handler = move |tunnel: InboundTunnel| {
        seen.lock()
            .unwrap()
            .push((tunnel.peer().addr, workers::current()));
        async move {
            let upstream = tokio::net::TcpStream::connect(tunnel.target())
                .await
                .unwrap();
            let downstream = tunnel.accept().unwrap();
            let _ = mesh_core::hbone::splice(&upstream, downstream).await;
        }
    };
    let server = HboneServer::new(listener, config, handler, ServerSettings::default());
    let server_workers = Workers::start(2, "server-worker").unwrap();
    let (drain, watch) = mesh_core::drain::new_on(server_workers);
    let serving = tokio::spawn(async move { server.run_with(&watch).await });
    let app = echo_app().await;

    let client = Arc::new(HboneClient::new(
        certs,
        ClientSettings {
            lanes: 1,
            ..ClientSettings::default()
        },
    ));
    let client_workers = Workers::start(2, "client-worker").unwrap();
    let (release, released) = tokio::sync::watch::channel(false);
    let request = mesh_core::hbone::ConnectRequest {
        src: id("shop", "web"),
        dst: server_addr,
        dst_identities: vec![server_id],
        authority: app,
        headers: http::HeaderMap::new(),
    };
    let (opened, mut all_open) = tokio::sync::mpsc::channel::<()>(4);
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (client, request, opened) = (client.clone(), request.clone(), opened.clone());
            let mut released = released.clone();
            client_workers.place(async move {
                let mut held = Vec::new();
                for n in 0..2u8 {
                    let mut tunnel = client.connect(request.clone()).await.unwrap();
                    assert_eq!(echo_through(&mut tunnel, &[n]).await, [n]);
                    held.push(tunnel);
                }
                opened.send(()).await.unwrap();
                let _ = released.wait_for(|r| *r).await;
                workers::current()
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(WAIT, all_open.recv()).await.unwrap();
    }
    assert_eq!(
        client.pooled_connections(),
        2,
        "one lane, but a connection per worker"
    );
    let seen = tunnels_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let mut by_connection = std::collections::BTreeMap::new();
    for (peer, worker) in &seen {
        assert!(worker.is_some(), "tunnel served off the workers: {seen:?}");
        by_connection
            .entry(*peer)
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(*worker);
    }
    assert_eq!(by_connection.len(), 2, "{seen:?}");
    assert!(
        by_connection.values().all(|workers| workers.len() == 1),
        "a connection's tunnels on one worker: {seen:?}"
    );
    let server_sides: std::collections::BTreeSet<_> = by_connection.values().flatten().collect();
    assert_eq!(
        server_sides.len(),
        2,
        "two connections, two workers: {seen:?}"
    );

    release.send_replace(true);
    let mut client_sides = Vec::new();
    for holder in holders {
        client_sides.push(holder.await.unwrap());
    }
    client_sides.sort();
    assert_eq!(client_sides, [Some(0), Some(1)]);
    assert!(drain.drain(WAIT).await);
    serving.await.unwrap();
}
