//! The benchmark cluster: two simulated nodes with the real mesh binaries and real
//! in-pod redirection, and the five paths a figure is measured on.
//!
//! ```text
//!   n1: client (mesh), local-server (mesh), direct-client (not in the mesh),
//!       tls-relay A (node namespace, beside ztunnel),
//!       capture-client (not in the mesh; the in-pod rules, tls-relay A inside it)
//!   n2: server (mesh, behind Service mesh/server), direct-server (not in the mesh),
//!       tls-relay B (node namespace),
//!       capture-server (not in the mesh; the in-pod rules, tls-relay B inside it)
//! ```
//!
//! Every server pod runs a TCP echo server (request/response, connections) and a TCP sink
//! (bulk throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_tests::mesh::Mesh;
use mesh_tests::{Cluster, HarnessError, Pod, Process, eventually};
use serde::Serialize;

/// The echo server's port in every server pod.
pub const ECHO_PORT: u16 = 7000;
/// The sink's port in every server pod.
pub const SINK_PORT: u16 = 7001;
/// The TLS relays listen on the server ports plus this.
const RELAY_PORT_OFFSET: u16 = 10_000;

/// A way from a client to a server that a figure is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Pod to pod across nodes, no mesh: the baseline.
    Direct,
    /// Pod to pod across nodes through the two TLS relays: the floor of any mutual-TLS
    /// tunnel ([`crate::tls_relay`]).
    TlsRelay,
    /// The same relays where ztunnel's sockets are: inside the two pods, behind the
    /// in-pod redirection rules (the app's connection REDIRECTed to relay A, relay A's
    /// TPROXYed to relay B, both relays' upstream sockets with ztunnel's mark). What an
    /// in-pod ambient tunnel pays before HTTP/2 and ztunnel's own work.
    TlsRelayInPod,
    /// Through the mesh, client and server on one node.
    MeshSameNode,
    /// Through the mesh across nodes (two ztunnels, one HBONE tunnel).
    MeshCrossNode,
    /// Through the mesh to the server's Service VIP.
    MeshVip,
}

impl Path {
    /// Every path, the baselines first.
    pub const ALL: [Path; 6] = [
        Path::Direct,
        Path::TlsRelay,
        Path::TlsRelayInPod,
        Path::MeshSameNode,
        Path::MeshCrossNode,
        Path::MeshVip,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::TlsRelay => "tls-relay",
            Path::TlsRelayInPod => "tls-relay-in-pod",
            Path::MeshSameNode => "mesh-same-node",
            Path::MeshCrossNode => "mesh-cross-node",
            Path::MeshVip => "mesh-vip",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Path::Direct | Path::TlsRelay => "direct-client",
            Path::TlsRelayInPod => "capture-client",
            _ => "client",
        }
    }

    fn server(self) -> &'static str {
        match self {
            Path::Direct | Path::TlsRelay => "direct-server",
            Path::TlsRelayInPod => "capture-server",
            Path::MeshSameNode => "local-server",
            Path::MeshCrossNode | Path::MeshVip => "server",
        }
    }
}

/// The running benchmark cluster.
pub struct BenchCluster {
    servers: Vec<Arc<Process>>,
    relays: Vec<Arc<Process>>,
    pod_relays: Vec<Arc<Process>>,
    /// The mesh's processes.
    pub mesh: Mesh,
    /// The simulated cluster (dropped last: it removes everything).
    pub cluster: Cluster,
}

impl std::fmt::Debug for BenchCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchCluster")
            .field("cluster", &self.cluster.id())
            .finish()
    }
}

impl BenchCluster {
    /// Builds the cluster, starts the servers and the mesh, and waits until every mesh
    /// path really goes through the mesh (the server's ztunnel logs a mutual-TLS
    /// connection to it).
    pub fn start() -> Result<Self, HarnessError> {
        let cluster = Cluster::builder()
            .node("n1")
            .pod("client")
            .namespace("mesh")
            .service_account("client")
            .pod("local-server")
            .namespace("mesh")
            .labels([("app", "local")])
            .pod("direct-client")
            .namespace("direct")
            .pod("capture-client")
            .namespace("capture")
            .node("n2")
            .pod("server")
            .namespace("mesh")
            .labels([("app", "server")])
            .pod("direct-server")
            .namespace("direct")
            .pod("capture-server")
            .namespace("capture")
            .service("server")
            .namespace("mesh")
            .selector([("app", "server")])
            .port(ECHO_PORT, ECHO_PORT)
            .port(SINK_PORT, SINK_PORT)
            .namespace_labels("mesh", [("istio.io/dataplane-mode", "ambient")])
            .build()?;
        let mut servers = Vec::new();
        for pod in ["local-server", "server", "direct-server", "capture-server"] {
            let pod = cluster.pod(pod);
            servers.push(pod.serve(["tcp-echo", "--listen", &format!("0.0.0.0:{ECHO_PORT}")])?);
            servers.push(pod.serve(["tcp-sink", "--listen", &format!("0.0.0.0:{SINK_PORT}")])?);
        }
        let mesh = Mesh::start(&cluster)?;
        let relays = start_relays(&cluster)?;
        let pod_relays = start_pod_relays(&cluster)?;
        let bench = BenchCluster {
            servers,
            relays,
            pod_relays,
            mesh,
            cluster,
        };
        for path in [Path::MeshSameNode, Path::MeshCrossNode, Path::MeshVip] {
            bench.wait_through_mesh(path)?;
        }
        Ok(bench)
    }

    fn wait_through_mesh(&self, path: Path) -> Result<(), HarnessError> {
        let server = self.cluster.pod(path.server());
        let ztunnel = self.mesh.ztunnel(server.node_name());
        let target = self.echo(path);
        let dst = format!("dst={}:{ECHO_PORT}", server.ip());
        eventually(
            format!("{} to go through the mesh", path.name()),
            Duration::from_secs(30),
            || {
                self.client(path)
                    .run(|| crate::load::idle_connections(target, 1))
                    .map_err(|err| err.to_string())?
                    .map_err(|err| err.to_string())?;
                let log = ztunnel.stdout();
                if log
                    .lines()
                    .any(|l| l.contains(&dst) && l.contains("mutual_tls"))
                {
                    Ok(())
                } else {
                    Err("not through the mesh yet".to_string())
                }
            },
        )
    }

    /// The pod a path's load runs in.
    pub fn client(&self, path: Path) -> &Pod {
        self.cluster.pod(path.client())
    }

    fn address(&self, path: Path, port: u16) -> SocketAddr {
        match path {
            Path::TlsRelay => SocketAddr::from((
                self.cluster.node("n1").underlay_ip(),
                port + RELAY_PORT_OFFSET,
            )),
            Path::MeshVip => SocketAddr::from((self.cluster.service_ip("mesh", "server"), port)),
            _ => SocketAddr::from((self.cluster.pod(path.server()).ip(), port)),
        }
    }

    /// The path's echo server.
    pub fn echo(&self, path: Path) -> SocketAddr {
        self.address(path, ECHO_PORT)
    }

    /// The path's sink.
    pub fn sink(&self, path: Path) -> SocketAddr {
        self.address(path, SINK_PORT)
    }

    /// Process ids of the server apps.
    pub fn server_pids(&self) -> Vec<i32> {
        self.servers.iter().map(|p| p.pid()).collect()
    }

    /// Process ids of the two TLS relays.
    pub fn relay_pids(&self) -> Vec<i32> {
        self.relays.iter().map(|p| p.pid()).collect()
    }

    /// Process ids of the two TLS relays inside the capture pods.
    pub fn pod_relay_pids(&self) -> Vec<i32> {
        self.pod_relays.iter().map(|p| p.pid()).collect()
    }
}

/// Relay B on n2 (TLS in, to direct-server's ports) and relay A on n1 (from direct-client,
/// TLS to B), in the nodes' namespaces like the ztunnels, with the mesh CA's certificates.
fn start_relays(cluster: &Cluster) -> Result<Vec<Arc<Process>>, HarnessError> {
    let binary = mesh_tests::apps::workspace_binary("tls-relay")?;
    let ca_dir = mesh_tests::mesh::ca_dir(cluster).display().to_string();
    // Each relay listens on the server ports plus the offset and forwards to `to` at
    // `to_offset` above them.
    let routes = |to: std::net::Ipv4Addr, to_offset: u16| {
        [ECHO_PORT, SINK_PORT].into_iter().flat_map(move |port| {
            let (listen, to_port) = (port + RELAY_PORT_OFFSET, port + to_offset);
            [
                "--route".to_string(),
                format!("0.0.0.0:{listen}={to}:{to_port}"),
            ]
        })
    };
    let mut relays = Vec::new();
    for (node, side, to, to_offset) in [
        ("n2", "--accept", cluster.pod("direct-server").ip(), 0),
        (
            "n1",
            "--connect",
            cluster.node("n2").underlay_ip(),
            RELAY_PORT_OFFSET,
        ),
    ] {
        let args = ["--ca-dir".to_string(), ca_dir.clone(), side.to_string()]
            .into_iter()
            .chain(routes(to, to_offset));
        let relay = cluster.node(node).spawn(&binary, args)?;
        relay.wait_for_stdout(mesh_tests::apps::READY_LINE, Duration::from_secs(10))?;
        relays.push(relay);
    }
    Ok(relays)
}

/// The in-pod redirection rules in capture-client and capture-server (what istio-cni
/// installs in an ambient pod), relay A on capture-client's outbound port and relay B on
/// capture-server's inbound one, each sending to the connection's original destination.
fn start_pod_relays(cluster: &Cluster) -> Result<Vec<Arc<Process>>, HarnessError> {
    use istio_cni::rules::{self, InpodConfig};
    use mesh_core::inpod;
    let binary = mesh_tests::apps::workspace_binary("tls-relay")?;
    let ca_dir = mesh_tests::mesh::ca_dir(cluster).display().to_string();
    let config = InpodConfig::default();
    let mark = format!("{:#x}", config.ztunnel_mark);
    let mut relays = Vec::new();
    for (pod, side, port) in [
        ("capture-server", "--accept", inpod::INBOUND_PLAINTEXT_PORT),
        ("capture-client", "--connect", inpod::OUTBOUND_PORT),
    ] {
        let pod = cluster.pod(pod);
        pod.run(|| rules::apply(&rules::render(&config)))?
            .map_err(|e| {
                let context = format!("installing the in-pod rules in {}", pod.name());
                HarnessError::io(context, std::io::Error::other(e))
            })?;
        let mut args = vec![
            "--ca-dir".to_string(),
            ca_dir.clone(),
            side.to_string(),
            "--mark".to_string(),
            mark.clone(),
            "--route".to_string(),
            format!("0.0.0.0:{port}=original"),
        ];
        if side == "--accept" {
            args.push("--transparent".to_string());
        }
        let relay = pod.spawn(&binary, args)?;
        relay.wait_for_stdout(mesh_tests::apps::READY_LINE, Duration::from_secs(10))?;
        relays.push(relay);
    }
    Ok(relays)
}
