//! The istio-cni node agent: keeps the pods of its node that belong in the mesh captured
//! (rules installed in their namespace) and tells ztunnel about them over ZDS.
//!
//! One loop owns all state: on every configuration change it reconciles the captured pods
//! with the wanted ones; when ztunnel connects it replays the captured pods (snapshot) and
//! from then on streams additions and removals, waiting for ztunnel's Ack each time.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::model::{Workload, translate};
use mesh_core::zds::{self, WorkloadResponse, ZdsError, ZdsHello, requests};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

use crate::rules::{self, InpodConfig, PodRules};

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the configuration comes from.
    pub source: mesh_core::config::Source,
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

/// A pod the agent has captured.
struct Captured {
    workload: Arc<Workload>,
    netns: File,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration source could not start.
    #[error("configuration source: {0}")]
    Source(#[from] mesh_core::config::SourceError),
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

/// Runs the agent until the task is dropped.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let rules = rules::render(&config.rules);
    let mut snapshots = mesh_core::config::watch(
        &config.source,
        mesh_core::config::Interest::Capture,
        Duration::from_millis(100),
    )
    .await?;
    if let Some(dir) = config.zds_socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&config.zds_socket);
    let mut listener =
        UnixSeqpacketListener::bind(&config.zds_socket).map_err(|source| AgentError::Socket {
            path: config.zds_socket.clone(),
            source,
        })?;
    tracing::info!(node = %config.node_name, socket = %config.zds_socket.display(), "istio-cni agent started");

    if let Some(dir) = config.plugin_socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&config.plugin_socket);
    let plugin_events =
        tokio::net::UnixListener::bind(&config.plugin_socket).map_err(|source| {
            AgentError::Socket {
                path: config.plugin_socket.clone(),
                source,
            }
        })?;

    let _installer = config
        .cni_install
        .clone()
        .map(|install| AbortOnDrop(tokio::spawn(keep_installed(install))));

    let mut captured: BTreeMap<String, Captured> = BTreeMap::new();
    let mut hints = NetnsHints::new();
    let mut ztunnel: Option<UnixSeqpacket> = None;
    let mut pending = reconcile(
        &config,
        &rules,
        &snapshots.borrow_and_update(),
        &hints,
        &mut captured,
    );
    loop {
        if let Some(connection) = &ztunnel {
            for change in pending.drain(..) {
                if let Err(err) = change.send(connection, &captured).await {
                    tracing::warn!(error = %err, "ztunnel connection lost; it will get a snapshot when it returns");
                    ztunnel = None;
                    break;
                }
            }
        }
        pending.clear();
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snapshot = snapshots.borrow_and_update().clone();
                pending = reconcile(&config, &rules, &snapshot, &hints, &mut captured);
            }
            accepted = plugin_events.accept() => {
                if let Ok((stream, _)) = accepted
                    && let Some(event) = read_plugin_event(stream).await
                {
                    tracing::info!(pod = %format!("{}/{}", event.pod_namespace, event.pod_name), netns = %event.netns, "CNI ADD");
                    hints.insert((event.pod_namespace, event.pod_name), PathBuf::from(event.netns));
                    let snapshot = snapshots.borrow().clone();
                    pending = reconcile(&config, &rules, &snapshot, &hints, &mut captured);
                }
            }
            accepted = listener.accept() => match accepted {
                Ok(connection) => match send_snapshot(&connection, &captured).await {
                    Ok(()) => {
                        tracing::info!(pods = captured.len(), "ztunnel connected; snapshot sent");
                        ztunnel = Some(connection);
                    }
                    Err(err) => tracing::warn!(error = %err, "ztunnel connection failed during the snapshot"),
                },
                Err(err) => tracing::warn!(error = %err, "ZDS accept failed"),
            },
        }
    }
}

/// Network namespace paths the CNI plugin reported, by (namespace, pod name).
type NetnsHints = BTreeMap<(String, String), PathBuf>;

/// Reads one plugin event line and answers `ok` (or why not).
async fn read_plugin_event(stream: tokio::net::UnixStream) -> Option<crate::plugin::PluginEvent> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let parsed = match read {
        Ok(Ok(_)) => serde_json::from_str::<crate::plugin::PluginEvent>(line.trim())
            .map_err(|e| e.to_string()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let answer = match &parsed {
        Ok(_) => "ok\n".to_string(),
        Err(err) => format!("bad event: {err}\n"),
    };
    let _ = reader.get_mut().write_all(answer.as_bytes()).await;
    parsed
        .map_err(|err| tracing::warn!(error = %err, "bad CNI plugin event"))
        .ok()
}

/// A change ztunnel must hear about.
enum Change {
    Add(String),
    Del(String),
}

impl Change {
    async fn send(
        &self,
        connection: &UnixSeqpacket,
        captured: &BTreeMap<String, Captured>,
    ) -> Result<(), ZdsError> {
        match self {
            Change::Add(uid) => match captured.get(uid) {
                Some(pod) => add(connection, uid, pod).await,
                None => Ok(()),
            },
            Change::Del(uid) => exchange(connection, &requests::del(uid), None).await,
        }
    }
}

async fn add(connection: &UnixSeqpacket, uid: &str, pod: &Captured) -> Result<(), ZdsError> {
    let info = zds::pb::WorkloadInfo {
        name: pod.workload.name.clone(),
        namespace: pod.workload.namespace.clone(),
        service_account: pod.workload.identity.service_account().to_string(),
    };
    exchange(
        connection,
        &requests::add(uid, Some(info)),
        Some(pod.netns.as_fd()),
    )
    .await
}

/// Sends one request and waits for its Ack. An error Ack is logged, not fatal: ztunnel
/// refused that pod, the connection is fine.
async fn exchange(
    connection: &UnixSeqpacket,
    request: &zds::WorkloadRequest,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), ZdsError> {
    zds::send(connection, request, fd).await?;
    let (response, _) = zds::recv::<WorkloadResponse>(connection, "WorkloadResponse").await?;
    if let Err(err) = zds::check_ack(response) {
        tracing::warn!(error = %err, "ztunnel refused a request");
    }
    Ok(())
}

/// Waits for ztunnel's hello, then replays every captured pod and SnapshotSent.
async fn send_snapshot(
    connection: &UnixSeqpacket,
    captured: &BTreeMap<String, Captured>,
) -> Result<(), ZdsError> {
    let (hello, _) = zds::recv::<ZdsHello>(connection, "ZdsHello").await?;
    if hello.version != zds::pb::Version::V1 as i32 {
        return Err(ZdsError::Invalid(format!(
            "unsupported ZDS version {}",
            hello.version
        )));
    }
    for (uid, pod) in captured {
        add(connection, uid, pod).await?;
    }
    exchange(connection, &requests::snapshot_sent(), None).await
}

/// Captures pods that should be and releases pods that should not; returns what ztunnel
/// must be told. A pod whose namespace cannot be found or set up is retried next time.
fn reconcile(
    config: &AgentConfig,
    rules: &PodRules,
    snapshot: &mesh_core::config::file_source::Snapshot,
    hints: &NetnsHints,
    captured: &mut BTreeMap<String, Captured>,
) -> Vec<Change> {
    let plane = translate(&snapshot.store, &config.trust_domain);
    let wanted: BTreeMap<String, Arc<Workload>> = plane
        .workloads_on(&config.node_name)
        .into_iter()
        .filter(|w| w.captured)
        .map(|w| (uid(&w), w))
        .collect();
    let mut changes = Vec::new();
    let gone: Vec<String> = captured
        .keys()
        .filter(|uid| !wanted.contains_key(*uid))
        .cloned()
        .collect();
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
                captured.insert(uid.clone(), Captured { workload, netns });
                changes.push(Change::Add(uid));
            }
            Ok(Err(err)) => tracing::warn!(pod = %uid, error = %err, "installing rules failed"),
            Err(err) => {
                tracing::warn!(pod = %uid, error = %err, "entering the pod namespace failed")
            }
        }
    }
    changes
}
