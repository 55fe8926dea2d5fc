//! Floods against the real ztunnels: 10,000 TLS connections held idle on a pod's HBONE
//! port by one source (`legacy`), and 10,000 connections from an app (`client`) to a
//! destination that drops every SYN. ztunnel stays within a stated memory bound, keeps
//! serving the bystanders (`cache` -> `server`, through both flooded ztunnels, every
//! request answered, p99 within 2x), and gives the descriptors and the memory back when
//! the floods end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::cert::LocalCa;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::{Cluster, Process, eventually, mesh};
use rustls::pki_types::ServerName;

const FLOOD: usize = 10_000;
/// What the floods may add to a ztunnel's resident memory (measured: about 8 MiB).
const MEMORY_BOUND_MIB: f64 = 32.0;
/// What may stay resident once the floods are over (measured: 1 to 2.5 MiB).
const RETURNED_MIB: f64 = 5.0;

fn rss_mib(process: &Process) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn open_fds(process: &Process) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", process.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// p99 of `n` fresh HTTP requests from `cache` (a bystander on the flooding app's node)
/// to `server`, all of which must succeed.
fn p99(cluster: &Cluster, server: SocketAddr, n: usize) -> Duration {
    let mut took: Vec<Duration> = cluster
        .pod("cache")
        .block_on(|| async move {
            let mut took = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let fetch = http_echo::get(server, "/", HttpVersion::Http1, &[]);
                let reply = tokio::time::timeout(Duration::from_secs(5), fetch)
                    .await
                    .expect("normal traffic timed out")
                    .expect("normal traffic failed");
                assert_eq!(reply.status, 200);
                took.push(started.elapsed());
            }
            took
        })
        .unwrap();
    took.sort();
    took[n * 99 / 100]
}

/// Enough descriptors for the attackers' sides, held by this process: its soft limit
/// raised to the hard one (which needs at least 12,000).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 12_000,
        "RLIMIT_NOFILE hard limit {hard} is too low for the floods"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// `ztunnel_connections_refused_total{reason}` of a node's ztunnel.
fn refused(cluster: &Cluster, node: &str, reason: &str) -> u64 {
    let out = cluster
        .node(node)
        .exec(
            "curl",
            ["-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("ztunnel_connections_refused_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn floods_stay_within_a_memory_bound_and_spare_other_traffic() {
    raise_fd_limit();
    let cluster = mesh_tests::topology::shop().build().unwrap();
    cluster
        .pod("server")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    // The black hole: `legacy` drops every SYN to port 9999.
    let dropped = cluster
        .pod("legacy")
        .exec(
            "iptables-nft",
            ["-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"],
        )
        .unwrap();
    assert!(dropped.status.success(), "{dropped:?}");
    let mesh = mesh::Mesh::start(&cluster).unwrap();
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let (n1, n2) = (mesh.ztunnel("n1").clone(), mesh.ztunnel("n2").clone());
    eventually(
        "the mesh to carry cache -> server",
        Duration::from_secs(20),
        || {
            http_get_ok(&cluster, server)?;
            if n2.stdout().contains("mutual_tls") {
                Ok(())
            } else {
                Err("not through the mesh yet".to_string())
            }
        },
    )
    .unwrap();
    let before = p99(&cluster, server, 300);
    let idle = (rss_mib(&n1), rss_mib(&n2));
    let idle_fds = (open_fds(&n1), open_fds(&n2));

    // Flood 1: one source opens 10,000 TLS connections to the server pod's HBONE port
    // with a valid mesh certificate and leaves them idle.
    let ca = Arc::new(LocalCa::load(&mesh::ca_dir(&cluster), "cluster.local").unwrap());
    let hbone = SocketAddr::from((cluster.pod("server").ip(), 15008));
    let (tls_held, tls_refused) = std::thread::scope(|scope| {
        let attacker = cluster.pod("legacy");
        let ca = ca.clone();
        scope
            .spawn(move || attacker.block_on(|| hold_tls(ca, hbone)))
            .join()
            .unwrap()
            .unwrap()
    });
    // Flood 2: the app in `client` opens 10,000 connections to the black hole.
    let hole = SocketAddr::from((cluster.pod("legacy").ip(), 9999));
    let black_hole = cluster
        .pod("client")
        .block_on(|| async move {
            let mut held = Vec::with_capacity(FLOOD);
            for _ in 0..FLOOD {
                // ztunnel accepts at once (its upstream connect is what hangs).
                if let Ok(stream) = tokio::net::TcpStream::connect(hole).await {
                    held.push(stream);
                }
            }
            held
        })
        .unwrap();
    assert_eq!(
        black_hole.len(),
        FLOOD,
        "ztunnel accepted every app connection"
    );
    // Past the per-pod limit of upstream connects in progress, the rest were refused.
    let pending = ztunnel::proxy::MAX_PENDING_CONNECTS_PER_POD;
    eventually(
        "the refusals to be counted",
        Duration::from_secs(10),
        || {
            let refused = refused(&cluster, "n1", "pending_connects");
            if refused >= (FLOOD - pending) as u64 {
                Ok(())
            } else {
                Err(format!("{refused} refused"))
            }
        },
    )
    .unwrap();
    assert!(
        open_fds(&n1) <= idle_fds.0 + 2 * pending + 100,
        "n1's ztunnel holds {} fds",
        open_fds(&n1)
    );

    let during = p99(&cluster, server, 300);
    let peak = (rss_mib(&n1), rss_mib(&n2));
    eprintln!(
        "flood: TLS held {} refused {}; black hole {}; RSS MiB n1 {:.1} -> {:.1}, n2 {:.1} -> {:.1}; fds n1 {} -> {}, n2 {} -> {}; p99 {before:?} -> {during:?}",
        tls_held.len(),
        tls_refused,
        black_hole.len(),
        idle.0,
        peak.0,
        idle.1,
        peak.1,
        idle_fds.0,
        open_fds(&n1),
        idle_fds.1,
        open_fds(&n2),
    );
    assert!(
        tls_held.len() <= 256,
        "one source held {} connections",
        tls_held.len()
    );
    for (node, idle, peak) in [("n1", idle.0, peak.0), ("n2", idle.1, peak.1)] {
        assert!(
            peak - idle <= MEMORY_BOUND_MIB,
            "{node}'s ztunnel grew {:.1} MiB",
            peak - idle
        );
    }
    // Within 2x of the p99 measured just before, in the same run; the 2 ms floor absorbs
    // a scheduler hiccup on a shared 2-core machine (measured: 0.9x to 1.05x).
    assert!(
        during <= before * 2 + Duration::from_millis(2),
        "the bystander's p99 went from {before:?} to {during:?}"
    );

    // The black-hole connections are closed by ztunnel's connect timeout, the idle TLS
    // connections by the server's idle timeout (or here, by their client): descriptors
    // come back.
    drop(tls_held);
    eventually(
        "n1's upstream connects to time out",
        Duration::from_secs(30),
        || {
            let fds = open_fds(&n1);
            if fds <= idle_fds.0 + 50 {
                Ok(())
            } else {
                Err(format!("{fds} fds"))
            }
        },
    )
    .unwrap();
    drop(black_hole);
    eventually(
        "the descriptors to come back",
        Duration::from_secs(30),
        || {
            let fds = (open_fds(&n1), open_fds(&n2));
            if fds.0 <= idle_fds.0 + 50 && fds.1 <= idle_fds.1 + 50 {
                Ok(())
            } else {
                Err(format!("{fds:?} fds, idle {idle_fds:?}"))
            }
        },
    )
    .unwrap();
    // Freed heap goes back to the kernel (ztunnel trims every 10 s).
    eventually(
        "the floods' memory to be returned",
        Duration::from_secs(30),
        || {
            let now = (rss_mib(&n1), rss_mib(&n2));
            if now.0 <= idle.0 + RETURNED_MIB && now.1 <= idle.1 + RETURNED_MIB {
                Ok(now)
            } else {
                Err(format!("RSS MiB {now:?}, idle {idle:?}"))
            }
        },
    )
    .map(|now| eprintln!("after the floods: RSS MiB n1 {:.1}, n2 {:.1}", now.0, now.1))
    .unwrap();
    http_get_ok(&cluster, server).unwrap();
}

fn http_get_ok(cluster: &Cluster, server: SocketAddr) -> Result<(), String> {
    cluster
        .pod("cache")
        .block_on(|| async move {
            let fetch = http_echo::get(server, "/", HttpVersion::Http1, &[]);
            match tokio::time::timeout(Duration::from_secs(3), fetch).await {
                Ok(Ok(reply)) if reply.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .unwrap()
}

/// Opens [`FLOOD`] TLS connections as `shop/web` (64 at a time) and keeps those the server
/// completes; returns them and how many were refused.
async fn hold_tls(
    ca: Arc<LocalCa>,
    hbone: SocketAddr,
) -> (
    Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    usize,
) {
    mesh_core::tls::install_process_provider();
    let web = mesh_core::Identity::new("cluster.local", "shop", "web").unwrap();
    let server = mesh_core::Identity::new("cluster.local", "shop", "server").unwrap();
    let cert = ca.issue_now(&web).unwrap();
    let config = Arc::new(mesh_core::tls::client_config(&cert, vec![server]).unwrap());
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut held = Vec::new();
    let mut refused = 0;
    let mut attempts = tokio::task::JoinSet::new();
    for n in 0..FLOOD {
        let connector = connector.clone();
        attempts.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(hbone).await?;
            let name = ServerName::IpAddress(hbone.ip().into());
            let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::other("handshake timed out"))??;
            Ok::<_, std::io::Error>(tls)
        });
        if attempts.len() >= 64 || n + 1 == FLOOD {
            while let Some(done) = attempts.join_next().await {
                match done.unwrap() {
                    Ok(tls) => held.push(tls),
                    Err(_) => refused += 1,
                }
            }
        }
    }
    (held, refused)
}
