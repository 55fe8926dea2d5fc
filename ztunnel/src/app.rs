//! Wiring: configuration source -> data plane -> pod proxies, enrolled over ZDS.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_model::model::{Settings, Translator};
use tokio::sync::watch;

use crate::proxy::ProxyState;
use crate::zds_client::Enrolled;

/// Everything ztunnel needs to start.
#[derive(Clone)]
pub struct Config {
    /// Where the configuration comes from.
    pub source: mesh_model::config::Source,
    /// This node's name (pods of other nodes are never served here).
    pub node_name: String,
    /// The istio-cni agent's ZDS socket.
    pub zds_socket: PathBuf,
    /// CA files (Istio `cacerts` layout), generated there on first use.
    pub ca_dir: PathBuf,
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// DNS domain of the cluster (services' hostnames end with it).
    pub cluster_domain: String,
    /// Mark of ztunnel's sockets in pods.
    pub mark: u32,
    /// Metrics (`/metrics`) and readiness (`/healthz/ready`) listeners.
    pub endpoints: crate::http_endpoints::Endpoints,
    /// How long live connections may take to finish once shutdown starts.
    pub drain_timeout: Duration,
    /// The admin endpoint (loopback only).
    pub admin_addr: std::net::SocketAddr,
    /// Changes the log filter at runtime (from the admin endpoint).
    pub set_log_level: crate::admin::SetLogLevel,
    /// How often freed heap is given back to the kernel (zero: never).
    pub memory_trim: Duration,
    /// Threads that carry pods' connections, each connection on one of them
    /// (`mesh_core::workers`); 0: the runtime `run` is called on carries them.
    pub worker_threads: usize,
}

/// Runs ztunnel until `shutdown` completes, then drains (see [`Config::drain_timeout`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    mesh_core::tls::install_process_provider();
    let snapshots = mesh_model::config::watch(
        &config.source,
        mesh_model::config::Interest::Proxy,
        Duration::from_millis(100),
    )
    .await
    .with_context(|| format!("starting the config source {:?}", config.source))?;
    let first = snapshots.borrow().clone();
    for error in &first.errors {
        tracing::warn!(%error, "config rejected");
    }
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let readiness = Arc::new(crate::readiness::Readiness::default());
    let rejected = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Rejections are reported three ways: logged (by the source, once per change), counted
    // in a metric, and listed in the admin config dump.
    let report = {
        let (metrics, rejected, readiness) = (metrics.clone(), rejected.clone(), readiness.clone());
        move |snapshot: &mesh_model::config::file_source::Snapshot| {
            readiness.set_config(snapshot.synced);
            metrics.set_rejected_config(snapshot.errors.len());
            if let Ok(mut list) = rejected.lock() {
                *list = snapshot.errors.iter().map(ToString::to_string).collect();
            }
        }
    };
    report(&first);
    let mut translator = Translator::new(Settings {
        trust_domain: config.trust_domain.clone(),
        cluster_domain: config.cluster_domain.clone(),
    });
    let (planes, plane) = watch::channel(translator.update(&first.store));
    tokio::spawn(async move {
        let mut snapshots = snapshots;
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            report(&snapshot);
            planes.send_replace(translator.update(&snapshot.store));
        }
    });

    let ca = LocalCa::load_or_generate(&config.ca_dir, &config.trust_domain)
        .with_context(|| format!("loading the CA from {}", config.ca_dir.display()))?;
    readiness.set_certificates(true);
    let certs = Arc::new(CertManager::new(Arc::new(ca), RenewalPolicy::default()));
    let (node_ports, node_ports_watch) = mesh_core::drain::new();
    let endpoints = crate::http_endpoints::serve(
        config.endpoints,
        metrics.clone(),
        readiness.clone(),
        node_ports_watch.clone(),
    )
    .await
    .with_context(|| format!("binding {:?}", config.endpoints))?;
    let endpoints = tokio::spawn(endpoints);
    crate::memory::spawn_trimmer(config.memory_trim);
    let workers = match config.worker_threads {
        0 => None,
        n => Some(
            mesh_core::workers::Workers::start(n, "ztunnel-worker")
                .context("starting the worker threads")?,
        ),
    };
    let state = Arc::new(ProxyState {
        plane,
        certs,
        trust_domain: config.trust_domain.clone(),
        mark: config.mark,
        metrics,
        workers,
    });
    tracing::info!(node = %config.node_name, socket = %config.zds_socket.display(), "ztunnel started");
    let pods = Arc::new(std::sync::Mutex::new(Vec::new()));
    let admin = Arc::new(crate::admin::Admin {
        state: state.clone(),
        pods: pods.clone(),
        set_log_level: config.set_log_level.clone(),
        rejected,
    });
    let admin = crate::admin::serve(config.admin_addr, admin, node_ports_watch)
        .await
        .with_context(|| format!("binding the admin endpoint {}", config.admin_addr))?;
    let admin = tokio::spawn(admin);
    // On shutdown the node ports go first: a successor binds them, and readiness
    // reports it, not this process, while this one hands over its pods.
    // Dropping the drain closes their listeners and connections at once.
    let give_up_node_ports = move || {
        drop(node_ports);
        endpoints.abort();
        admin.abort();
    };
    Enrolled::new(state, pods, readiness)
        .run(
            config.zds_socket.clone(),
            shutdown,
            give_up_node_ports,
            config.drain_timeout,
        )
        .await;
    tracing::info!("ztunnel stopped");
    Ok(())
}
