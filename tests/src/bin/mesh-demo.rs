//! `mesh-demo`: the README's first command. Builds a simulated two-node cluster and shows
//! what works today: every pod reaches every other pod by IP, across nodes, and an HTTP
//! request is answered by the pod it was sent to.
//!
//! It grows into the full mesh demo (istio-cni + ztunnel per node, mTLS, policy) as those
//! components land; it never claims more than it runs.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use mesh_tests::Cluster;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::apps::tcp_echo;

/// Build a simulated two-node cluster from network namespaces and show pod-to-pod traffic.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Keep the cluster up until Ctrl-C, to explore it with `ip netns exec`.
    #[arg(long)]
    hold: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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

    println!("\nTCP echo, every pod to every other pod (by pod IP, no NAT):");
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
            println!("  {message:<30} {verdict}");
        }
    }

    println!("\nHTTP from client (node-1) to model-server (node-2):");
    let server = cluster.pod("model-server");
    let addr = SocketAddr::from((server.ip(), 8080));
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let reply = cluster
            .pod("client")
            .block_on(|| http_echo::get(addr, "/v1/models/resnet:predict", version, &[]))??;
        let echo = reply.echo()?;
        println!(
            "  {version:?}: {} answered by pod {} on {} (it saw the caller as {})",
            reply.status, echo.pod, echo.node, echo.peer
        );
    }

    println!("\nNot yet running: istio-cni, ztunnel, the waypoint (traffic above is plain TCP).");
    if args.hold {
        println!("Holding the cluster; press Ctrl-C to remove it.");
        loop {
            std::thread::park();
        }
    }
    Ok(())
}
