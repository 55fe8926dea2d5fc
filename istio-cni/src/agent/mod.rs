//! The istio-cni node agent: keeps the pods of its node that belong in the mesh captured
//! (rules installed in their namespace) and tells ztunnel about them over ZDS.
//!
//! One loop owns the captured pods: on every configuration change or CNI plugin event it
//! reconciles them with the wanted ones and passes the changes to the ztunnel sessions.
//! Everything that waits on a peer runs on tasks of its own with a bounded wait
//! ([`plugin_events`] for the CNI plugin, [`sessions`] for ztunnel), so no peer can stall
//! capture. Both sockets are for root only (mode 0600).

pub mod lifecycle;
mod plugin_events;
pub mod sessions;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_model::model::{Settings, Workload, translate};
use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacketListener;

use crate::rules::{self, InpodConfig, PodRules};
use sessions::{Captured, Change, SessionEvent, Sessions};

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the configuration comes from.
    pub source: mesh_model::config::Source,
    /// This node's name.
    pub node_name: String,
    /// Where to serve ZDS for ztunnel.
    pub zds_socket: PathBuf,
    /// Trust domain (for identities in the model).
    pub trust_domain: String,
    /// The in-pod rules.
    pub rules: InpodConfig,
    /// Where pods' network namespaces are looked for.
    pub netns_scope: crate::netns_finder::SearchScope,
    /// Where the CNI plugin reports new pods' namespaces.
    pub plugin_socket: PathBuf,
    /// Install and keep chaining the CNI plugin on the node (in a DaemonSet; `None` when
    /// the plugin is set up another way, as in the simulated cluster).
    pub cni_install: Option<crate::install::CniInstall>,
}

/// How often the CNI installation is re-checked (the primary CNI may rewrite its file).
const INSTALL_CHECK: Duration = Duration::from_secs(5);

/// Keeps the plugin installed and chained; reports each new failure once.
async fn keep_installed(install: crate::install::CniInstall) {
    let mut last_error = String::new();
    loop {
        let attempt = install.clone();
        match tokio::task::spawn_blocking(move || attempt.ensure()).await {
            Ok(Ok(_)) => last_error.clear(),
            Ok(Err(err)) => {
                let text = err.to_string();
                if text != last_error {
                    tracing::warn!(error = %text, "installing the CNI plugin failed; retrying");
                    last_error = text;
                }
            }
            Err(err) => tracing::warn!(error = %err, "CNI install task failed"),
        }
        tokio::time::sleep(INSTALL_CHECK).await;
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration source could not start.
    #[error("configuration source: {0}")]
    Source(#[from] mesh_model::config::SourceError),
    /// The ZDS socket could not be created.
    #[error("serving ZDS on {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Stops a background task when the agent stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The ZDS uid of a workload: its UID when known, else `namespace/name`.
fn uid(workload: &Workload) -> String {
    workload
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", workload.namespace, workload.name))
}

/// How the agent is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Another agent takes over (a restart or a rolling update): pods stay captured, the
    /// plugin stays installed, and the next agent adopts them.
    Handover,
    /// The agent leaves the node for good (its DaemonSet is gone): every pod is released
    /// (rules removed, ztunnel told) and the plugin is removed from the CNI configuration.
    Uninstall,
}

/// Runs the agent until `stop` resolves (or the task is dropped).
pub async fn run(
    config: AgentConfig,
    stop: impl std::future::Future<Output = Stop>,
) -> Result<(), AgentError> {
    tokio::pin!(stop);
    let rules = rules::render(&config.rules);
    let mut snapshots = mesh_model::config::watch(
        &config.source,
        mesh_model::config::Interest::Capture,
        Duration::from_millis(100),
    )
    .await?;
    let listener = bind_for_root(&config.zds_socket, |p| UnixSeqpacketListener::bind(p))?;
    tracing::info!(node = %config.node_name, socket = %config.zds_socket.display(), "istio-cni agent started");
    let plugin_listener =
        bind_for_root(&config.plugin_socket, |p| tokio::net::UnixListener::bind(p))?;

    let installer = config
        .cni_install
        .clone()
        .map(|install| AbortOnDrop(tokio::spawn(keep_installed(install))));
    let (plugin_tx, mut plugin_events) = mpsc::channel(64);
    let _plugin = AbortOnDrop(tokio::spawn(plugin_events::accept(
        plugin_listener,
        plugin_tx,
    )));
    let (hello_tx, mut hellos) = mpsc::channel(4);
    let _zds = AbortOnDrop(tokio::spawn(sessions::accept(listener, hello_tx)));
    let (session_tx, mut session_events) = mpsc::unbounded_channel();

    let mut captured: BTreeMap<String, Arc<Captured>> = BTreeMap::new();
    let mut hints = NetnsHints::new();
    let mut sessions = Sessions::default();
    reconcile(
        &config,
        &rules,
        &snapshots.borrow_and_update(),
        &hints,
        &mut captured,
    );
    loop {
        let changes = tokio::select! {
            kind = &mut stop => {
                drop(installer);
                if kind == Stop::Uninstall {
                    uninstall(&config, &rules, &mut captured, &mut sessions).await;
                }
                return Ok(());
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snapshot = snapshots.borrow_and_update().clone();
                reconcile(&config, &rules, &snapshot, &hints, &mut captured)
            }
            Some(event) = plugin_events.recv() => {
                tracing::info!(pod = %format!("{}/{}", event.pod_namespace, event.pod_name), netns = %event.netns, "CNI ADD");
                hints.insert((event.pod_namespace, event.pod_name), PathBuf::from(event.netns));
                let snapshot = snapshots.borrow().clone();
                reconcile(&config, &rules, &snapshot, &hints, &mut captured)
            }
            Some(connection) = hellos.recv() => {
                sessions.connected(connection, &captured, session_tx.clone());
                continue;
            }
            Some(event) = session_events.recv() => {
                match event {
                    SessionEvent::Synced(id) => sessions.synced(id),
                    SessionEvent::Ended(id) => sessions.ended(id),
                }
                continue;
            }
        };
        sessions.broadcast(&changes);
    }
}

/// How long an uninstalling agent waits for ztunnel to hear of the released pods.
const RELEASE_NOTICE: Duration = Duration::from_secs(2);

/// Releases every captured pod and removes the plugin from the node.
async fn uninstall(
    config: &AgentConfig,
    rules: &PodRules,
    captured: &mut BTreeMap<String, Arc<Captured>>,
    sessions: &mut Sessions,
) {
    let changes = release(rules, captured, |_| true);
    tracing::info!(pods = changes.len(), "uninstalling: every pod released");
    sessions.broadcast(&changes);
    if let Some(install) = config.cni_install.clone() {
        match tokio::task::spawn_blocking(move || install.uninstall()).await {
            Ok(Ok(())) => tracing::info!("istio-cni plugin removed from the CNI configuration"),
            Ok(Err(err)) => tracing::warn!(error = %err, "removing the CNI plugin failed"),
            Err(err) => tracing::warn!(error = %err, "CNI uninstall task failed"),
        }
    }
    // The sessions' tasks send the deletions; give them a moment before the process ends.
    tokio::time::sleep(RELEASE_NOTICE).await;
}

/// Removes the rules of the captured pods `which` selects; returns the deletions ztunnel
/// must be told.
fn release(
    rules: &PodRules,
    captured: &mut BTreeMap<String, Arc<Captured>>,
    which: impl Fn(&str) -> bool,
) -> Vec<Change> {
    let gone: Vec<String> = captured.keys().filter(|uid| which(uid)).cloned().collect();
    let mut changes = Vec::new();
    for uid in gone {
        if let Some(pod) = captured.remove(&uid) {
            match mesh_core::netns::run_in(&pod.netns, || rules::remove(rules)) {
                Ok(Ok(())) => tracing::info!(pod = %uid, "pod released; rules removed"),
                Ok(Err(err)) => tracing::warn!(pod = %uid, error = %err, "removing rules failed"),
                Err(err) => tracing::warn!(pod = %uid, error = %err, "pod namespace gone"),
            }
            changes.push(Change::Del(uid));
        }
    }
    changes
}

/// Binds a unix socket at `path` (replacing a stale one) that only root may use: the
/// peers are ztunnel and the CNI plugin, both root, and a ZDS peer receives every pod's
/// network namespace.
fn bind_for_root<L>(
    path: &Path,
    bind: impl FnOnce(&Path) -> std::io::Result<L>,
) -> Result<L, AgentError> {
    let failed = |source| AgentError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    let listener = bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(listener)
}

/// Network namespace paths the CNI plugin reported, by (namespace, pod name).
type NetnsHints = BTreeMap<(String, String), PathBuf>;

/// Captures pods that should be and releases pods that should not; returns what ztunnel
/// must be told. A pod whose namespace cannot be found or set up is retried next time.
fn reconcile(
    config: &AgentConfig,
    rules: &PodRules,
    snapshot: &mesh_model::config::file_source::Snapshot,
    hints: &NetnsHints,
    captured: &mut BTreeMap<String, Arc<Captured>>,
) -> Vec<Change> {
    let plane = translate(&snapshot.store, &Settings::new(&config.trust_domain));
    let wanted: BTreeMap<String, Arc<Workload>> = plane
        .workloads_on(&config.node_name)
        .into_iter()
        .filter(|w| w.captured)
        .map(|w| (uid(&w), w))
        .collect();
    let mut changes = release(rules, captured, |uid| !wanted.contains_key(uid));
    for (uid, workload) in wanted {
        if captured.contains_key(&uid) {
            continue;
        }
        let Some(ip) = workload.ips.first().copied() else {
            continue;
        };
        let found = match hints.get(&(workload.namespace.clone(), workload.name.clone())) {
            Some(path) => File::open(path).map(Some),
            None => crate::netns_finder::find_by_ip(ip, &config.netns_scope),
        };
        let netns = match found {
            Ok(Some(netns)) => netns,
            Ok(None) => {
                tracing::warn!(pod = %uid, %ip, "no network namespace holds the pod's address yet");
                continue;
            }
            Err(err) => {
                tracing::warn!(pod = %uid, error = %err, "searching network namespaces failed");
                continue;
            }
        };
        match mesh_core::netns::run_in(&netns, || rules::apply(rules)) {
            Ok(Ok(())) => {
                tracing::info!(pod = %uid, %ip, "pod captured; rules installed");
                let pod = Arc::new(Captured { workload, netns });
                captured.insert(uid.clone(), pod.clone());
                changes.push(Change::Add(uid, pod));
            }
            Ok(Err(err)) => tracing::warn!(pod = %uid, error = %err, "installing rules failed"),
            Err(err) => {
                tracing::warn!(pod = %uid, error = %err, "entering the pod namespace failed")
            }
        }
    }
    changes
}
