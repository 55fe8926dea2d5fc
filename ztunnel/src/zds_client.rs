//! ztunnel's side of ZDS: connect to the istio-cni agent, receive pods and their network
//! namespaces, and start or stop their proxies.
//!
//! On every (re)connection the agent replays its whole state and ends it with
//! SnapshotSent; pods whose proxies run but were not in that snapshot are stopped. Each
//! request is answered with an Ack, an error Ack when it could not be honored, and a bad
//! request never stops the loop or disturbs other pods. On shutdown the pods are handed to
//! a successor without an outage ([`Enrolled::run`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::zds::{self, Request, WorkloadRequest, ZdsError};
use mesh_model::model::Workload;
use tokio_seqpacket::UnixSeqpacket;

use crate::proxy::sockets::InPod;
use crate::proxy::{ProxyState, WorkloadProxy};

/// How long to wait for the configuration to know a pod the agent announced.
const WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// The pods this ztunnel serves, by ZDS uid.
pub struct Enrolled {
    state: Arc<ProxyState>,
    proxies: BTreeMap<String, WorkloadProxy>,
    view: Arc<std::sync::Mutex<Vec<String>>>,
    readiness: Arc<crate::readiness::Readiness>,
}

impl Enrolled {
    /// No pods yet; `view` is kept equal to [`Enrolled::pods`] for the admin endpoint, and
    /// `readiness` learns when the agent's snapshot has been served.
    pub fn new(
        state: Arc<ProxyState>,
        view: Arc<std::sync::Mutex<Vec<String>>>,
        readiness: Arc<crate::readiness::Readiness>,
    ) -> Self {
        Enrolled {
            state,
            proxies: BTreeMap::new(),
            view,
            readiness,
        }
    }

    /// Names of the pods served, as `namespace/name`.
    pub fn pods(&self) -> Vec<String> {
        self.proxies
            .values()
            .map(|p| format!("{}/{}", p.workload().namespace, p.workload().name))
            .collect()
    }

    /// Connects to the agent at `socket` and serves it, reconnecting (with the snapshot
    /// protocol) whenever the connection drops, until `shutdown` completes. Then it hands
    /// over without an outage:
    ///
    /// 1. `on_terminate` runs (ztunnel gives up its node ports, so a successor can take
    ///    them), and the pods' listeners keep accepting;
    /// 2. once the agent closes this connection (it does when a successor's listeners are
    ///    bound in every pod: its snapshot is acknowledged), or `drain` has passed, every
    ///    pod's listeners close: the connections still queued on them move to the
    ///    successor's listeners (see `mesh_core::socket::migrate_on_close_in`), and HBONE
    ///    peers get GOAWAY;
    /// 3. live connections finish by themselves, or are closed when `drain` (counted from
    ///    `shutdown`) is over.
    pub async fn run(
        mut self,
        socket: PathBuf,
        shutdown: impl std::future::Future<Output = ()>,
        on_terminate: impl FnOnce(),
        drain: Duration,
    ) {
        tokio::pin!(shutdown);
        let mut on_terminate = Some(on_terminate);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut terminate = |deadline: &mut Option<tokio::time::Instant>| {
            *deadline = Some(tokio::time::Instant::now() + drain);
            if let Some(on_terminate) = on_terminate.take() {
                on_terminate();
            }
            tracing::info!(
                ?drain,
                "terminating: serving pods until a successor takes them over"
            );
        };
        loop {
            let connection = match UnixSeqpacket::connect(&socket).await {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::debug!(socket = %socket.display(), error = %err, "istio-cni agent not reachable yet");
                    if deadline.is_some() {
                        // No agent, so no successor can be given the pods: drain now.
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = &mut shutdown => terminate(&mut deadline),
                    }
                    continue;
                }
            };
            tracing::info!(socket = %socket.display(), "connected to the istio-cni agent");
            let ended = {
                let serving = self.serve(&connection);
                tokio::pin!(serving);
                loop {
                    tokio::select! {
                        ended = &mut serving => break ended,
                        () = &mut shutdown, if deadline.is_none() => terminate(&mut deadline),
                        () = until(deadline), if deadline.is_some() => {
                            break Err(ZdsError::Invalid("no successor before the drain limit".into()));
                        }
                    }
                }
            };
            self.readiness.set_zds(false);
            match ended {
                Err(ZdsError::Closed) if deadline.is_some() => {
                    tracing::info!("the agent handed the pods to a successor");
                    break;
                }
                Err(err) if deadline.is_some() => {
                    tracing::info!(error = %err, "terminating without a successor");
                    break;
                }
                Err(err) => tracing::warn!(error = %err, "ZDS connection ended"),
                Ok(()) => {}
            }
            if deadline.is_none() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = &mut shutdown => terminate(&mut deadline),
                }
            }
        }
        let left = deadline.map_or(drain, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        let proxies = std::mem::take(&mut self.proxies);
        tracing::info!(pods = proxies.len(), ?left, "draining pod proxies");
        let mut draining = tokio::task::JoinSet::new();
        for proxy in proxies.into_values() {
            draining.spawn(proxy.drain(left));
        }
        while draining.join_next().await.is_some() {}
    }

    async fn serve(&mut self, connection: &UnixSeqpacket) -> Result<(), ZdsError> {
        zds::send(connection, &zds::hello(), None).await?;
        let mut in_snapshot = Some(Vec::new());
        loop {
            let (request, fds) =
                match zds::recv::<WorkloadRequest>(connection, "WorkloadRequest").await {
                    Ok(received) => received,
                    Err(ZdsError::Decode { what, source }) => {
                        tracing::warn!(what, error = %source, "malformed ZDS request");
                        zds::send(
                            connection,
                            &zds::ack(Err(format!("malformed request: {source}"))),
                            None,
                        )
                        .await?;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
            let outcome = match zds::validate(request, fds) {
                Err(err) => Err(err.to_string()),
                Ok(Request::SnapshotSent) => {
                    if let Some(seen) = in_snapshot.take() {
                        self.proxies.retain(|uid, _| seen.contains(uid));
                        tracing::info!(pods = ?self.pods(), "snapshot reconciled");
                        self.readiness.set_zds(true);
                    }
                    Ok(())
                }
                Ok(Request::Keep { uid }) => {
                    if let Some(seen) = in_snapshot.as_mut() {
                        seen.push(uid);
                    }
                    Ok(())
                }
                Ok(Request::Del { uid }) => {
                    self.proxies.remove(&uid);
                    Ok(())
                }
                Ok(Request::Add { uid, info, netns }) => {
                    if let Some(seen) = in_snapshot.as_mut() {
                        seen.push(uid.clone());
                    }
                    self.add(uid, info, netns).await
                }
            };
            if let Err(error) = &outcome {
                tracing::warn!(%error, "ZDS request refused");
            }
            if let Ok(mut view) = self.view.lock() {
                *view = self.pods();
            }
            zds::send(connection, &zds::ack(outcome), None).await?;
        }
    }

    async fn add(
        &mut self,
        uid: String,
        info: Option<zds::pb::WorkloadInfo>,
        netns: std::os::fd::OwnedFd,
    ) -> Result<(), String> {
        let info = info.ok_or_else(|| format!("AddWorkload {uid} carries no workload info"))?;
        if self.proxies.get(&uid).is_some_and(|p| {
            p.workload().name == info.name && p.workload().namespace == info.namespace
        }) {
            return Ok(());
        }
        let workload = self.wait_for_workload(&info).await?;
        let proxy = WorkloadProxy::start(
            self.state.clone(),
            workload,
            Arc::new(InPod::new(std::fs::File::from(netns), self.state.mark)),
        )
        .await
        .map_err(|err| {
            format!(
                "starting the proxy of {}/{}: {err}",
                info.namespace, info.name
            )
        })?;
        self.proxies.insert(uid, proxy);
        Ok(())
    }

    /// The configuration may lag the agent by a moment: wait briefly for the pod to appear.
    async fn wait_for_workload(
        &self,
        info: &zds::pb::WorkloadInfo,
    ) -> Result<Arc<Workload>, String> {
        let mut plane = self.state.plane.clone();
        let deadline = tokio::time::Instant::now() + WORKLOAD_WAIT;
        loop {
            let found = plane
                .borrow_and_update()
                .workloads_by_ip
                .values()
                .find(|w| w.name == info.name && w.namespace == info.namespace)
                .cloned();
            if let Some(workload) = found {
                return Ok(workload);
            }
            if tokio::time::timeout_at(deadline, plane.changed())
                .await
                .is_err()
            {
                return Err(format!(
                    "pod {}/{} is not in the configuration",
                    info.namespace, info.name
                ));
            }
        }
    }
}

/// Completes at `deadline`, or never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
