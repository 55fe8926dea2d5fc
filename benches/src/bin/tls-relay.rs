//! `tls-relay`: one half of the benchmark's mutual-TLS floor ([`mesh_benches::tls_relay`]).
//! Relay A (`--connect`) takes plain TCP and opens TLS to relay B; relay B (`--accept`)
//! takes TLS and opens plain TCP to the app. Certificates come from the mesh CA directory.
//! Prints `listening on ...` once every route is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use mesh_benches::tls_relay::{self, Side, Target};
use mesh_core::cert::LocalCa;

/// Command line.
#[derive(Parser)]
#[command(version, about = "A minimal mutual-TLS relay: the benchmark's floor")]
struct Args {
    /// The mesh CA directory (Istio's cacerts layout).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Trust domain of the certificates.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Relay A: accept plain TCP, connect with TLS.
    #[arg(long, conflicts_with = "accept", required_unless_present = "accept")]
    connect: bool,
    /// Relay B: accept TLS, connect with plain TCP.
    #[arg(long)]
    accept: bool,
    /// `LISTEN=TO` pairs, e.g. `0.0.0.0:17000=10.0.0.2:17000`; repeatable. `TO` may be
    /// `original`: where the app sent the connection before a pod's rules captured it
    /// (`SO_ORIGINAL_DST` of a REDIRECT, or with `--transparent` the local address of a
    /// TPROXY).
    #[arg(long = "route", required = true, value_parser = parse_route)]
    routes: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// `SO_MARK` of the upstream sockets, e.g. ztunnel's 0x539 when the relay runs inside
    /// a captured pod's namespace (the pod's rules then let its own traffic pass).
    #[arg(long, value_parser = parse_mark)]
    mark: Option<u32>,
    /// Listen with IP_TRANSPARENT, so connections TPROXYed to a listener reach it (as
    /// ztunnel's in-pod listeners do).
    #[arg(long)]
    transparent: bool,
    /// Worker threads (ztunnel's default is 2).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
}

fn parse_route(text: &str) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let (listen, to) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected LISTEN=TO"))?;
    let parse = |a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("{a:?} in {text:?}: {e}"))
    };
    let to = match to {
        "original" => None,
        to => Some(parse(to)?),
    };
    Ok((parse(listen)?, to))
}

fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: not a mark (decimal or 0x hex): {e}"))
}

/// A listener on `addr` in the relay's own namespace, transparent (IP_TRANSPARENT) if
/// asked, as ztunnel binds its in-pod listeners. Must be called within a Tokio runtime.
fn listen(addr: SocketAddr, transparent: bool) -> std::io::Result<tokio::net::TcpListener> {
    let here = std::fs::File::open("/proc/thread-self/ns/net")?;
    mesh_core::socket::listen_in(&here, addr, transparent)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.worker_threads == 0 {
        bail!("--worker-threads must be at least 1");
    }
    mesh_core::tls::install_process_provider();
    let ca = LocalCa::load(&args.ca_dir, &args.trust_domain)
        .with_context(|| format!("loading the CA from {}", args.ca_dir.display()))?;
    let cert = ca
        .issue_now(&tls_relay::identity(&args.trust_domain))
        .context("issuing the relay's certificate")?;
    let side = if args.connect {
        Side::connect(&cert)
    } else {
        Side::accept(&cert)
    }
    .context("TLS configuration")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async move {
            let mut relays = Vec::new();
            for (addr, to) in args.routes {
                let listener =
                    listen(addr, args.transparent).with_context(|| format!("binding {addr}"))?;
                let to = match to {
                    Some(to) => Target::Fixed(to),
                    None if args.transparent => Target::Tproxied,
                    None => Target::Redirected,
                };
                relays.push(tokio::spawn(tls_relay::serve(
                    listener,
                    to,
                    side.clone(),
                    args.mark,
                )));
            }
            println!("{} {}", mesh_tests::apps::READY_LINE, relays.len());
            for relay in relays {
                relay
                    .await
                    .context("relay task")?
                    .context("relay stopped")?;
            }
            Ok(())
        })
}
