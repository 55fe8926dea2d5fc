//! `ztunnel`: the per-node L4 proxy of the ambient mesh.

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Command line of the node proxy.
#[derive(Parser)]
#[command(
    version,
    about = "ztunnel: per-node L4 proxy of the ambient mesh",
    long_about = "ztunnel: the per-node L4 proxy of the ambient mesh (a DaemonSet).\n\n\
        It opens listeners inside each captured pod's network namespace (handed over by the \
        istio-cni agent over ZDS) and carries the pod's TCP to other nodes over HBONE \
        (HTTP/2 CONNECT over mutual TLS with SPIFFE identities), enforcing L4 \
        AuthorizationPolicy and PeerAuthentication."
)]
struct Args {
    /// Where the configuration comes from: `file` (a directory of YAML) or `kubernetes`.
    #[arg(long, value_parser = ["file", "kubernetes"], default_value = "file")]
    config_source: String,
    /// Directory of Kubernetes YAML to read and watch (with `--config-source file`).
    #[arg(long, env = "MESH_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// kubeconfig (with `--config-source kubernetes`; default: in-cluster, then $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The istio-cni agent's ZDS socket.
    #[arg(long, default_value = mesh_core::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,
    /// Directory of the CA files (Istio cacerts layout); a root is generated there if empty.
    #[arg(long, default_value = "/var/run/secrets/mesh-ca")]
    ca_dir: PathBuf,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// DNS domain of the cluster: services are `<name>.<namespace>.svc.<domain>` in metrics,
    /// policies and routes.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Where Prometheus scrapes `/metrics`.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: std::net::SocketAddr,
    /// Where the kubelet probes `/healthz/ready`.
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: std::net::SocketAddr,
    /// The admin endpoint (config dump, log level); loopback only.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: std::net::SocketAddr,
    /// Seconds live connections may take to finish after SIGTERM (keep it below the
    /// pod's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 20)]
    drain_timeout_seconds: u64,
    /// Threads that carry pods' connections, beside one for the control plane (Istio's
    /// ztunnel reads the same variable; its default is 2 as well).
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    worker_threads: u16,
    /// Seconds between returns of freed heap to the kernel after bursts (0: never).
    #[arg(long, env = "ZTUNNEL_MEMORY_TRIM_SECONDS", default_value_t = 10)]
    memory_trim_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    ztunnel::memory::restart_with_heap_tunables();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    raise_fd_limit();
    if args.memory_trim_seconds > 0 {
        ztunnel::memory::keep_heap_between_trims();
    }
    let set_log_level: ztunnel::admin::SetLogLevel = std::sync::Arc::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        reload.reload(filter).map_err(|e| e.to_string())
    });
    let config = ztunnel::app::Config {
        source: mesh_model::config::Source::from_flags(
            &args.config_source,
            args.config_dir,
            args.kubeconfig,
        )
        .map_err(anyhow::Error::msg)?,
        node_name: args.node_name,
        zds_socket: args.zds_socket,
        ca_dir: args.ca_dir,
        trust_domain: args.trust_domain,
        cluster_domain: args.cluster_domain,
        mark: mesh_core::inpod::ZTUNNEL_MARK,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_seconds),
        admin_addr: args.admin_addr,
        set_log_level,
        memory_trim: std::time::Duration::from_secs(args.memory_trim_seconds),
        worker_threads: usize::from(args.worker_threads),
        endpoints: ztunnel::http_endpoints::Endpoints {
            metrics: args.metrics_addr,
            readiness: args.readiness_addr,
        },
    };
    // The control plane (configuration, ZDS, certificates, the node's endpoints, the pods'
    // listeners) runs here; connections run on the workers `app::run` starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        ztunnel::app::run(config, async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    })
}

/// Every proxied connection costs ztunnel two descriptors: take all the soft limit may
/// give (up to the hard limit), as Istio's ztunnel does, rather than the 1,024 a shell
/// often hands down.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => tracing::warn!(error = %err, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not read the open-file limit"),
    }
}
