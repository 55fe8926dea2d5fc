//! `istio-cni-agent`: the node agent of istio-cni (runs in the istio-cni DaemonSet).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Command line of the node agent.
#[derive(Parser)]
#[command(
    version,
    about = "istio-cni-agent: node agent that enrolls ambient pods with the node's ztunnel",
    long_about = "istio-cni-agent: the node agent of istio-cni.\n\n\
        It watches the pods on its node and the namespaces' istio.io/dataplane-mode label, \
        installs or removes the in-pod redirection, and passes each pod's network namespace to \
        ztunnel over the ZDS socket."
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
    /// Where to serve ZDS for ztunnel.
    #[arg(long, default_value = mesh_core::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Directory of named network namespaces to search for pods (repeatable).
    #[arg(long = "netns-dir", default_value = "/run/netns")]
    netns_dirs: Vec<PathBuf>,
    /// Do not search processes' namespaces under /proc.
    #[arg(long)]
    no_proc_scan: bool,
    /// Where the CNI plugin reports new pods.
    #[arg(long, default_value = istio_cni::plugin::DEFAULT_AGENT_SOCKET)]
    plugin_socket: PathBuf,
    /// The node's CNI binary directory: install the plugin there (with --cni-conf-dir).
    #[arg(long, requires = "cni_conf_dir")]
    cni_bin_dir: Option<PathBuf>,
    /// The node's CNI configuration directory: chain the plugin into its primary file.
    #[arg(long, requires = "cni_bin_dir")]
    cni_conf_dir: Option<PathBuf>,
    /// The plugin binary to install (default: `istio-cni` beside this program).
    #[arg(long)]
    cni_plugin_binary: Option<PathBuf>,
    /// This agent's pod namespace (downward API): with its name, lets SIGTERM tell an
    /// uninstall (the DaemonSet is gone: release every pod) from a restart (keep them).
    #[arg(long, env = "POD_NAMESPACE", requires = "pod_name")]
    pod_namespace: Option<String>,
    /// This agent's pod name (downward API).
    #[arg(long, env = "POD_NAME", requires = "pod_namespace")]
    pod_name: Option<String>,
    /// Remove the plugin from --cni-bin-dir and --cni-conf-dir, then exit.
    #[arg(long, requires = "cni_bin_dir")]
    uninstall_cni: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cni_install = match (args.cni_bin_dir, args.cni_conf_dir) {
        (Some(bin_dir), Some(conf_dir)) => Some(istio_cni::install::CniInstall {
            plugin_binary: match args.cni_plugin_binary {
                Some(path) => path,
                None => std::env::current_exe()
                    .context("locating this program")?
                    .with_file_name(istio_cni::install::PLUGIN_TYPE),
            },
            bin_dir,
            conf_dir,
            agent_socket: args.plugin_socket.clone(),
        }),
        _ => None,
    };
    if args.uninstall_cni {
        if let Some(install) = &cni_install {
            install.uninstall().context("uninstalling the CNI plugin")?;
        }
        return Ok(());
    }
    let config = istio_cni::agent::AgentConfig {
        source: mesh_model::config::Source::from_flags(
            &args.config_source,
            args.config_dir,
            args.kubeconfig.clone(),
        )
        .map_err(anyhow::Error::msg)?,
        node_name: args.node_name,
        zds_socket: args.zds_socket,
        trust_domain: args.trust_domain,
        rules: istio_cni::rules::InpodConfig::default(),
        plugin_socket: args.plugin_socket,
        netns_scope: istio_cni::netns_finder::SearchScope {
            dirs: args.netns_dirs,
            scan_proc: !args.no_proc_scan,
        },
        cni_install,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let own_pod = match (args.pod_namespace, args.pod_name) {
        (Some(namespace), Some(name)) if args.config_source == "kubernetes" => {
            Some(istio_cni::agent::lifecycle::OwnPod { namespace, name })
        }
        _ => None,
    };
    let kubeconfig = args.kubeconfig.clone();
    runtime.block_on(async {
        let owner = match own_pod {
            Some(own_pod) => {
                match mesh_model::config::kube_source::client(kubeconfig.as_deref()).await {
                    Ok(client) => Some(istio_cni::agent::lifecycle::Owner::watch(client, own_pod)),
                    Err(err) => {
                        tracing::warn!(error = %err, "no API client to watch this agent's DaemonSet; stopping keeps pods captured");
                        None
                    }
                }
            }
            None => None,
        };
        let stop = async move {
            stop_signal().await;
            owner.map_or(istio_cni::agent::Stop::Handover, |owner| owner.decide())
        };
        istio_cni::agent::run(config, stop)
            .await
            .map_err(anyhow::Error::from)
    })
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
