//! The real proxy code, outbound -> HBONE -> inbound, in this process on plain loopback
//! sockets: no root, no network namespaces, no iptables ([`OnHost`] stands in for the pod's
//! sockets and the redirect). Routing, mutual TLS, policy and metrics are the production
//! code's; only where sockets come from differs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_model::config::{ConfigStore, parse_documents};
use mesh_model::model::{DataPlane, Settings, translate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use ztunnel::proxy::sockets::{OnHost, Redirects};
use ztunnel::proxy::{OUTBOUND_PORT, ProxyState, WorkloadProxy};

/// Two pods on their own loopback addresses (127.<pid>.<test>.2 and .3), unique per test so
/// tests run in parallel.
struct Pods {
    client: IpAddr,
    server: IpAddr,
}

fn pods() -> Pods {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let (a, b) = (
        (std::process::id() % 250 + 1) as u8,
        NEXT.fetch_add(1, Ordering::Relaxed),
    );
    Pods {
        client: IpAddr::V4(Ipv4Addr::new(127, a, b, 2)),
        server: IpAddr::V4(Ipv4Addr::new(127, a, b, 3)),
    }
}

fn cluster(pods: &Pods, extra: &str) -> DataPlane {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
spec: {{nodeName: n1, serviceAccountName: web, containers: [{{name: app}}]}}
status: {{phase: Running, podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec: {{nodeName: n2, serviceAccountName: server, containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]}}
status: {{phase: Running, podIP: {server}}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: server}}, ports: [{{port: 80, targetPort: http}}]}}
{extra}"#,
        client = pods.client,
        server = pods.server,
    );
    let store: ConfigStore = parse_documents(std::path::Path::new("in-process.yaml"), &yaml)
        .valid()
        .unwrap()
        .into_iter()
        .collect();
    translate(&store, &Settings::new("cluster.local"))
}

/// Both pods' proxies and the server's echo app, running.
struct Mesh {
    state: Arc<ProxyState>,
    redirects: Redirects,
    client: IpAddr,
    _proxies: Vec<WorkloadProxy>,
}

async fn start(pods: &Pods, plane: DataPlane) -> Mesh {
    mesh_core::tls::install_process_provider();
    let (_, receiver) = watch::channel(Arc::new(plane.clone()));
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let state = Arc::new(ProxyState {
        plane: receiver,
        certs: Arc::new(CertManager::new(ca, RenewalPolicy::default())),
        trust_domain: "cluster.local".into(),
        mark: 0,
        metrics: Arc::new(ztunnel::metrics::Metrics::default()),
        workers: None,
    });
    let redirects = Redirects::default();
    let mut proxies = Vec::new();
    for ip in [pods.client, pods.server] {
        let workload = plane.workload(ip).unwrap().clone();
        let sockets = Arc::new(OnHost::new(ip, redirects.clone()));
        proxies.push(
            WorkloadProxy::start(state.clone(), workload, sockets)
                .await
                .unwrap(),
        );
    }
    let app = TcpListener::bind(SocketAddr::new(pods.server, 8080))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    Mesh {
        state,
        redirects,
        client: pods.client,
        _proxies: proxies,
    }
}

impl Mesh {
    /// What the client app's `connect(dst)` becomes once redirected: a connection from the
    /// client pod's address to its proxy's outbound port, with `dst` as original destination.
    async fn connect(&self, dst: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(self.client, 0)).unwrap();
        self.redirects.redirect(socket.local_addr().unwrap(), dst);
        socket
            .connect(SocketAddr::new(self.client, OUTBOUND_PORT))
            .await
            .unwrap()
    }

    /// Sends `text` to `dst` and reads the echo; `Err` when the connection closes first.
    async fn echo(&self, dst: SocketAddr, text: &[u8]) -> Result<Vec<u8>, String> {
        let mut stream = self.connect(dst).await;
        stream.write_all(text).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; text.len()];
        match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await {
            Ok(Ok(_)) => Ok(back),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

#[tokio::test]
async fn outbound_to_inbound_over_hbone_by_service_vip() {
    let pods = pods();
    let mesh = start(&pods, cluster(&pods, "")).await;
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    assert_eq!(mesh.echo(vip, b"hello").await.unwrap(), b"hello");

    // Both sides counted it, with the service named and mutual TLS.
    let text = mesh.state.metrics.encode();
    for reporter in ["source", "destination"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(&format!("reporter=\"{reporter}\""))
            })
            .unwrap_or_else(|| panic!("no {reporter} line in:\n{text}"));
        for label in [
            "destination_service=\"server.shop.svc.cluster.local\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(line.contains(label), "{label} missing: {line}");
        }
    }
}

#[tokio::test]
async fn policy_applies_to_the_in_process_path() {
    let pods = pods();
    let deny = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
";
    let mesh = start(&pods, cluster(&pods, deny)).await;
    let server = SocketAddr::new(pods.server, 8080);
    let denied = mesh.echo(server, b"hello").await;
    assert!(denied.is_err(), "the DENY policy must close it: {denied:?}");
    let text = mesh.state.metrics.encode();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")),
        "nothing opened at the destination:\n{text}"
    );
}

/// Every line logged while serving a connection (its access-log line too) names it: the
/// connection's task runs in a `connection` span with the listener, source and destination.
#[tokio::test]
async fn lines_logged_for_a_connection_name_it() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    // Process-wide, not scoped to this thread: tracing caches whether a call site is enabled
    // once for all threads, so a scoped subscriber misses call sites a parallel test reached
    // first. The other tests' lines land here too; this one's are told apart by its pods.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let pods = pods();
    let mesh = start(&pods, cluster(&pods, "")).await;
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    assert_eq!(mesh.echo(vip, b"hello").await.unwrap(), b"hello");

    let access_line_in = |listener: &str, dst: &str| {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        text.lines().any(|line| {
            line.contains("connection{")
                && line.contains(listener)
                && line.contains(&format!("src={}:", pods.client))
                && line.contains(&format!("dst={dst}"))
                && line.contains(" access: ")
        })
    };
    let server = format!("{}:8080", pods.server);
    for _ in 0..100 {
        if access_line_in("outbound", "10.96.0.10:80") && access_line_in("inbound_hbone", &server) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no access lines inside the connection spans:\n{}",
        String::from_utf8_lossy(&captured.0.lock().unwrap())
    );
}

/// Bytes of direction `way` (0: to the server, 1: back) of connection `n`: a different
/// pseudo-random sequence for each, so a byte lost, repeated, reordered or crossed between
/// streams shows.
fn pattern(n: u64, way: u64, len: usize) -> Vec<u8> {
    let mut state = (n << 1 | way).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// In which order one side of a test connection sends and receives.
#[derive(Clone, Copy)]
enum Turn {
    /// Send everything and half-close, then read to the end.
    SendFirst,
    /// Read to the end (the other side's half-close), then send and half-close.
    ReadFirst,
    /// Both at once.
    Both,
}

/// One side's part of a test connection: sends `out` and ends its sending with a half-close
/// in `turn`'s order; returns everything it read until the other side's end.
async fn take_turn(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &[u8],
    turn: Turn,
) -> Vec<u8> {
    let mut got = Vec::new();
    match turn {
        Turn::SendFirst => {
            write.write_all(out).await.unwrap();
            write.shutdown().await.unwrap();
            read.read_to_end(&mut got).await.unwrap();
        }
        Turn::ReadFirst => {
            read.read_to_end(&mut got).await.unwrap();
            write.write_all(out).await.unwrap();
            write.shutdown().await.unwrap();
        }
        Turn::Both => {
            let send = async {
                write.write_all(out).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let ((), _) = tokio::join!(send, read.read_to_end(&mut got));
        }
    }
    got
}

/// 64 concurrent bulk streams through outbound -> HBONE -> inbound, half-closing each way:
/// a third send to the server and half-close before it answers, a third have the server
/// send first and half-close before the client answers (so each half-close must travel
/// through both proxies and the tunnel, or the stream hangs), a third send both ways at
/// once. Every byte arrives, in order, on its own stream, and each side sees the other's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_bulk_streams_with_half_closes_lose_and_reorder_nothing() {
    const STREAMS: u64 = 64;
    // Connection n: bytes to the server, bytes back, and the client's turn (the server's
    // is the opposite).
    let plan = |n: u64| match n % 3 {
        0 => (384 << 10, 8 << 10, Turn::SendFirst, Turn::ReadFirst),
        1 => (8 << 10, 384 << 10, Turn::ReadFirst, Turn::SendFirst),
        _ => (256 << 10, 256 << 10, Turn::Both, Turn::Both),
    };

    let pods = pods();
    let mesh = start(&pods, cluster(&pods, "")).await;
    let app = TcpListener::bind(SocketAddr::new(pods.server, 9090))
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        let mut checks = Vec::new();
        for _ in 0..STREAMS {
            let (stream, _) = app.accept().await.unwrap();
            checks.push(tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let n = read.read_u64().await.unwrap();
                let (to_server, to_client, _, turn) = plan(n);
                let got = take_turn(&mut read, &mut write, &pattern(n, 1, to_client), turn).await;
                assert!(
                    got == pattern(n, 0, to_server),
                    "stream {n}: {} bytes arrived at the server, {to_server} sent, or they differ",
                    got.len()
                );
                n
            }));
        }
        let mut seen = Vec::new();
        for check in checks {
            seen.push(check.await.unwrap());
        }
        seen.sort_unstable();
        seen
    });

    let target = SocketAddr::new(pods.server, 9090);
    let mut clients = Vec::new();
    for n in 0..STREAMS {
        let stream = mesh.connect(target).await;
        clients.push(tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let (to_server, to_client, turn, _) = plan(n);
            write.write_u64(n).await.unwrap();
            let got = take_turn(&mut read, &mut write, &pattern(n, 0, to_server), turn).await;
            assert!(
                got == pattern(n, 1, to_client),
                "stream {n}: {} bytes came back, {to_client} sent, or they differ",
                got.len()
            );
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        for client in clients {
            client.await.unwrap();
        }
        server.await.unwrap()
    })
    .await
    .expect("all streams finish");
    assert_eq!(all, (0..STREAMS).collect::<Vec<_>>());
}

/// The tests above, run again as user 65534 when this runs as root (CI does): they need
/// no privilege. Run unprivileged, they prove it themselves.
#[test]
fn the_in_process_tests_need_no_privileges() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let output = mesh_tests::process::run_copy_unprivileged(
        &std::env::current_exe().unwrap(),
        &[
            "outbound_to_inbound",
            "policy_applies",
            "--test-threads",
            "1",
        ],
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("2 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
