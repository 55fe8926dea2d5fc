//! `mesh-demo`: the README's first command. Builds a simulated two-node cluster, runs
//! istio-cni's agent and ztunnel on each node, and shows the ambient mesh at work: pods of
//! the `shop` namespace (labeled `istio.io/dataplane-mode=ambient`) talk over mutual TLS
//! with SPIFFE identities; the `legacy` namespace stays outside the mesh.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::apps::tcp_echo;
use mesh_tests::mesh::Mesh;
use mesh_tests::{Cluster, eventually};

#[path = "mesh-demo/kubernetes.rs"]
mod kubernetes;

/// Build a simulated two-node cluster from network namespaces and show pod-to-pod traffic.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Keep the cluster up until Ctrl-C, to explore it with `ip netns exec`.
    #[arg(long)]
    hold: bool,
    /// Run the same story on a Kubernetes cluster: a real control plane, nodes that run
    /// pods (mesh-node-agent), the mesh installed with `helm install` of deploy/chart.
    #[arg(long)]
    kubernetes: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.kubernetes {
        return kubernetes::demo(args.hold);
    }
    let cluster = Cluster::builder()
        .node("node-1")
        .pod("client")
        .namespace("shop")
        .service_account("web")
        .labels([("app", "client")])
        .pod("cache")
        .namespace("shop")
        .labels([("app", "cache")])
        .node("node-2")
        .pod("model-server")
        .namespace("shop")
        .service_account("inference")
        .labels([("app", "model-server")])
        .pod("legacy")
        .namespace("legacy")
        .labels([("app", "legacy")])
        .service("model-server")
        .namespace("shop")
        .selector([("app", "model-server")])
        .port(80, 8080)
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .context("building the simulated cluster")?;

    println!("Simulated cluster {}:", cluster.id());
    for pod in cluster.pods() {
        println!(
            "  pod {:<13} namespace {:<7} node {:<7} ip {:<11} netns {}",
            pod.name(),
            pod.namespace(),
            pod.node_name(),
            pod.ip(),
            pod.netns().name()
        );
    }
    println!(
        "Kubernetes YAML for the file config source: {}",
        cluster.config_dir().display()
    );

    for pod in cluster.pods() {
        pod.serve(["tcp-echo", "--listen", "0.0.0.0:7000"])?;
        pod.serve(["http-echo", "--listen", "0.0.0.0:8080"])?;
    }

    // The mesh: a CA, then istio-cni's agent and ztunnel on every node.
    let mesh = Mesh::start(&cluster)?;
    let ztunnels: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|node| mesh.ztunnel(node.name()).clone())
        .collect();
    println!(
        "\nStarted istio-cni-agent and ztunnel on {} nodes.",
        cluster.nodes().len()
    );

    let server = cluster.pod("model-server");
    let server_addr = SocketAddr::from((server.ip(), 8080));
    eventually(
        "the shop pods to be captured",
        Duration::from_secs(30),
        || {
            cluster
                .pod("client")
                .block_on(|| http_echo::get(server_addr, "/warmup", HttpVersion::Http1, &[]))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if ztunnels[1].stdout().contains("mutual_tls") {
                Ok(())
            } else {
                Err("not through the mesh yet".to_string())
            }
        },
    )?;

    println!(
        "\nTCP echo, every pod to every other pod by pod IP (path from namespace membership):"
    );
    for from in cluster.pods() {
        for to in cluster.pods().iter().filter(|p| p.name() != from.name()) {
            let addr = SocketAddr::from((to.ip(), 7000));
            let message = format!("{} -> {}", from.name(), to.name());
            let echoed = from.block_on(|| tcp_echo::round_trip(addr, message.as_bytes()))??;
            let verdict = if echoed == message.as_bytes() {
                "ok"
            } else {
                "CORRUPTED"
            };
            let path = match (from.namespace(), to.namespace()) {
                ("shop", "shop") => "mutual TLS (HBONE)",
                ("shop", _) => "plain TCP from the mesh (destination not in the mesh)",
                (_, "shop") => "plaintext into the mesh (PERMISSIVE)",
                _ => "plain TCP (no mesh)",
            };
            println!("  {message:<28} {verdict:<4} {path}");
        }
    }

    println!("\nHTTP from client (node-1) to the model-server service (node-2):");
    let vip = SocketAddr::from((cluster.service_ip("shop", "model-server"), 80));
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let reply = cluster
            .pod("client")
            .block_on(|| http_echo::get(vip, "/v1/models/resnet:predict", version, &[]))??;
        let echo = reply.echo()?;
        println!(
            "  {version:?} to {vip}: {} answered by pod {} on {}",
            reply.status, echo.pod, echo.node
        );
    }

    println!(
        "\nWhat proves it, from ztunnel's metrics on node-2 (curl http://127.0.0.1:15020/metrics):"
    );
    let metrics = cluster.node("node-2").exec(
        "curl",
        ["-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"],
    )?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in metrics.lines().filter(|l| {
        l.starts_with("istio_tcp_connections_opened_total{") && l.contains("mutual_tls")
    }) {
        println!("  {line}");
    }
    println!("\n... and from its access log:");
    let log = ztunnels[1].stdout();
    for line in log.lines().filter(|l| l.contains("mutual_tls")).take(2) {
        println!("  {}", line.trim());
    }
    println!("\nAlso on each node: readiness on :15021, admin on 127.0.0.1:15000 (/config_dump).");
    println!(
        "Not yet: the waypoint (L7). The same binaries also read the Kubernetes API (deploy/)."
    );
    if args.hold {
        println!("Holding the cluster; press Ctrl-C to remove it.");
        loop {
            std::thread::park();
        }
    }
    Ok(())
}
