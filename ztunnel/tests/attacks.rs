//! Attacks on a captured pod, each reproduced on the simulated cluster against the real
//! in-pod rules and ztunnel's pod proxies, and the safe behaviour that answers it.
//!
//! The attacker is `legacy` (a pod outside the mesh, on the server's node) or the app in
//! `client` itself; where it needs a mesh identity it holds a certificate of `shop/web`
//! from the mesh's CA, as a compromised workload would.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mesh_core::Identity;
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_core::hbone::{ClientSettings, ConnectRequest, HboneClient, HboneError, headers};
use mesh_tests::Cluster;
use mesh_tests::apps::http_echo::EchoReply;
use support::{Mesh, TRUST_DOMAIN, cluster, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn web() -> Identity {
    Identity::new(TRUST_DOMAIN, "shop", "web").unwrap()
}

/// Opens an HBONE tunnel from pod `from` straight to `server`'s 15008 as `shop/web`, with
/// `extra` request headers, sends one HTTP/1.1 GET through it and returns the echo.
fn hbone_get(
    cluster: &Cluster,
    ca: &Arc<LocalCa>,
    from: &str,
    authority: SocketAddr,
    extra: HeaderMap,
) -> Result<EchoReply, String> {
    let server = Identity::new(TRUST_DOMAIN, "shop", "server").unwrap();
    let ca = ca.clone();
    cluster
        .pod(from)
        .block_on(|| async move {
            let certs = Arc::new(CertManager::new(ca, RenewalPolicy::default()));
            let client = HboneClient::new(certs, ClientSettings::default());
            let request = ConnectRequest {
                src: web(),
                dst: SocketAddr::new(authority.ip(), mesh_core::hbone::HBONE_PORT),
                dst_identities: vec![server],
                authority,
                headers: extra,
            };
            let exchange = async {
                let mut tunnel = client.connect(request).await.map_err(|e| match e {
                    HboneError::Refused { status, .. } => format!("refused {status}"),
                    other => other.to_string(),
                })?;
                tunnel
                    .write_all(b"GET / HTTP/1.1\r\nhost: server\r\nconnection: close\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                tunnel.flush().await.map_err(|e| e.to_string())?;
                let mut response = Vec::new();
                tunnel
                    .read_to_end(&mut response)
                    .await
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&response);
                let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                serde_json::from_str::<EchoReply>(body).map_err(|e| format!("{e}: {text}"))
            };
            tokio::time::timeout(Duration::from_secs(5), exchange)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        })
        .unwrap()
}

fn forwarded(ip: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        headers::FORWARDED,
        headers::forwarded_for(ip.parse().unwrap()),
    );
    map
}

/// The `shop` cluster captured, with an HTTP echo server on `server`:8080.
fn mesh_with_server() -> (Cluster, Mesh) {
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    let mesh = Mesh::start(&cluster);
    (cluster, mesh)
}

#[test]
fn a_forged_forwarded_header_neither_escapes_an_ip_deny_nor_spoofs_the_source() {
    let (cluster, mesh) = mesh_with_server();
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let attacker = cluster.pod("legacy").ip();
    let client = cluster.pod("client").ip().to_string();

    // Without policy: the app sees the attacker's real address, whatever the header says.
    for claimed in ["8.8.8.8", "127.0.0.1", client.as_str()] {
        let reply = hbone_get(&cluster, &mesh.ca, "legacy", server, forwarded(claimed)).unwrap();
        let peer: SocketAddr = reply.peer.parse().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(attacker), "forwarded: for={claimed}");
    }

    // A DENY on the attacker's address holds with and without a forged header.
    mesh.set_policies(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-legacy, namespace: shop}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [\"{attacker}/32\"]}}}}]\n"
    ));
    for extra in [HeaderMap::new(), forwarded(&client)] {
        let outcome = hbone_get(&cluster, &mesh.ca, "legacy", server, extra.clone());
        assert_eq!(outcome, Err("refused 401 Unauthorized".into()), "{extra:?}");
    }
    // The mesh client it pretended to be still gets through.
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");
}

/// File descriptors this process (which runs the pod proxies) holds.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Connects from `pod` to `to` and reports how the connection ended: ztunnel must close
/// it (or refuse it) at once rather than relay it into one of its own listeners.
fn plain_connection_is_closed(cluster: &Cluster, pod: &str, to: SocketAddr) -> bool {
    cluster
        .pod(pod)
        .run(|| {
            let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                return true;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let _ = stream.write_all(b"ping\n");
            let mut buf = [0u8; 64];
            match stream.read(&mut buf) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .unwrap()
}

fn refused_loops(mesh: &Mesh) -> u64 {
    let text = mesh.state.metrics.encode();
    text.lines()
        .filter(|l| {
            l.starts_with("ztunnel_connections_refused_total{") && l.contains("reason=\"loop\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn connections_aimed_at_ztunnels_own_ports_are_refused_instead_of_looping() {
    let (cluster, mesh) = mesh_with_server();
    let server_ip = cluster.pod("server").ip();
    let client_ip = cluster.pod("client").ip();
    let fds = open_fds();

    // Plaintext from outside the mesh to the inbound plaintext port itself, and to the
    // outbound port; from the app in its own pod to the outbound listener by loopback
    // and by its own address; through the outbound listener to a peer's HBONE port.
    let attempts = [
        ("legacy", SocketAddr::from((server_ip, 15006))),
        ("legacy", SocketAddr::from((server_ip, 15001))),
        ("client", SocketAddr::from(([127, 0, 0, 1], 15001))),
        ("client", SocketAddr::from((client_ip, 15001))),
        ("client", SocketAddr::from((client_ip, 15006))),
        ("client", SocketAddr::from((server_ip, 15008))),
    ];
    for (pod, to) in attempts {
        assert!(
            plain_connection_is_closed(&cluster, pod, to),
            "{pod} -> {to} was kept open"
        );
    }
    // An HBONE CONNECT naming one of the pod's ztunnel ports is refused, not answered 200.
    for port in [15001, 15006, 15008, 15053] {
        let outcome = hbone_get(
            &cluster,
            &mesh.ca,
            "legacy",
            SocketAddr::from((server_ip, port)),
            HeaderMap::new(),
        );
        assert_eq!(
            outcome,
            Err("refused 400 Bad Request".into()),
            "port {port}"
        );
    }
    let grown = open_fds().saturating_sub(fds);
    assert!(grown < 50, "ztunnel's process grew by {grown} fds");
    assert!(
        refused_loops(&mesh) >= 10,
        "refusals counted:\n{}",
        mesh.state.metrics.encode()
    );
    // Everyone else's traffic is untouched.
    let server = SocketAddr::from((server_ip, 8080));
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");
    assert_eq!(get(&cluster, "legacy", server).unwrap().pod, "server");
}
