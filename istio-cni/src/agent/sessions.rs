//! The agent's ZDS server: every ztunnel that connects is served on a task of its own,
//! so a silent, slow or hostile peer never holds up capture or another peer.
//!
//! A connection must send `ZdsHello` within [`HELLO_TIMEOUT`]; then it gets the snapshot
//! (every captured pod, then SnapshotSent) and, from then on, each change; every Ack must
//! come within [`ACK_TIMEOUT`] or the connection is closed. A new connection only
//! replaces the current ztunnel once its whole snapshot has been acknowledged, so a
//! client that connects and stalls, or breaks half-way, never disconnects a working
//! ztunnel. (A restarted ztunnel completes its snapshot and takes over at once.)

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::zds::{self, WorkloadResponse, ZdsError, ZdsHello, requests};
use mesh_model::model::Workload;
use tokio::sync::mpsc;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ztunnel may take to acknowledge a request. It waits up to 5 s for the
/// configuration to know a new pod before answering, so this is well above that.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections still in their hello at once; more are closed on arrival.
const MAX_PENDING_HELLOS: usize = 16;
/// Connections receiving their snapshot at once; a newer one evicts the oldest.
const MAX_CANDIDATES: usize = 4;

/// A pod the agent has captured: what ztunnel needs to serve it.
#[derive(Debug)]
pub struct Captured {
    /// The pod.
    pub workload: Arc<Workload>,
    /// Its network namespace, passed to ztunnel with `AddWorkload`.
    pub netns: File,
}

/// A change ztunnel must hear about.
#[derive(Debug, Clone)]
pub enum Change {
    /// Capture this pod.
    Add(String, Arc<Captured>),
    /// Stop capturing this uid.
    Del(String),
}

/// What a session tells the agent's loop.
#[derive(Debug)]
pub enum SessionEvent {
    /// Session `id` has had its snapshot acknowledged.
    Synced(u64),
    /// Session `id` ended (closed, timed out, refused).
    Ended(u64),
}

/// Accepts ZDS connections, gives each one [`HELLO_TIMEOUT`] to say hello on a task of
/// its own, and hands those that did to the loop.
pub async fn accept(mut listener: UnixSeqpacketListener, hellos: mpsc::Sender<UnixSeqpacket>) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HELLOS));
    loop {
        let connection = match listener.accept().await {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!(error = %err, "ZDS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!("too many ZDS connections waiting for their hello; closing a new one");
            continue;
        };
        let hellos = hellos.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HELLO_TIMEOUT, hello(&connection)).await {
                Ok(Ok(())) => {
                    let _ = hellos.send(connection).await;
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "ZDS connection refused"),
                Err(_) => tracing::warn!(
                    timeout = ?HELLO_TIMEOUT,
                    "ZDS connection sent no hello in time; closed"
                ),
            }
        });
    }
}

async fn hello(connection: &UnixSeqpacket) -> Result<(), ZdsError> {
    let (hello, _) = zds::recv::<ZdsHello>(connection, "ZdsHello").await?;
    if hello.version != zds::pb::Version::V1 as i32 {
        return Err(ZdsError::Invalid(format!(
            "unsupported ZDS version {}",
            hello.version
        )));
    }
    Ok(())
}

/// One ztunnel connection being served; dropping it closes the connection.
#[derive(Debug)]
pub struct Session {
    id: u64,
    changes: mpsc::UnboundedSender<Change>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts serving `connection`: the snapshot of `captured`, then every change sent
    /// with [`Session::send`]. Reports [`SessionEvent::Synced`] and
    /// [`SessionEvent::Ended`] on `events`.
    pub fn start(
        id: u64,
        connection: UnixSeqpacket,
        captured: &BTreeMap<String, Arc<Captured>>,
        events: mpsc::UnboundedSender<SessionEvent>,
    ) -> Session {
        let snapshot: Vec<Change> = captured
            .iter()
            .map(|(uid, pod)| Change::Add(uid.clone(), pod.clone()))
            .collect();
        let (changes, queued) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let served = serve(id, &connection, snapshot, queued, &events).await;
            if let Err(err) = served {
                tracing::warn!(session = id, error = %err, "ztunnel connection ended");
            }
            let _ = events.send(SessionEvent::Ended(id));
        });
        Session { id, changes, task }
    }

    /// Its id, as events name it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a change for this ztunnel (sent after its snapshot, in order).
    pub fn send(&self, change: Change) {
        let _ = self.changes.send(change);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    id: u64,
    connection: &UnixSeqpacket,
    snapshot: Vec<Change>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    events: &mpsc::UnboundedSender<SessionEvent>,
) -> Result<(), ZdsError> {
    let pods = snapshot.len();
    for change in snapshot {
        send(connection, &change).await?;
    }
    exchange(connection, &requests::snapshot_sent(), None).await?;
    tracing::info!(
        session = id,
        pods,
        "ztunnel connected; snapshot acknowledged"
    );
    let _ = events.send(SessionEvent::Synced(id));
    while let Some(change) = changes.recv().await {
        send(connection, &change).await?;
    }
    Ok(())
}

async fn send(connection: &UnixSeqpacket, change: &Change) -> Result<(), ZdsError> {
    match change {
        Change::Add(uid, pod) => {
            let info = zds::pb::WorkloadInfo {
                name: pod.workload.name.clone(),
                namespace: pod.workload.namespace.clone(),
                service_account: pod.workload.identity.service_account().to_string(),
            };
            let request = requests::add(uid, Some(info));
            exchange(connection, &request, Some(pod.netns.as_fd())).await
        }
        Change::Del(uid) => exchange(connection, &requests::del(uid), None).await,
    }
}

/// Sends one request and waits, at most [`ACK_TIMEOUT`], for its Ack. An error Ack is
/// logged, not fatal: ztunnel refused that pod, the connection is fine.
async fn exchange(
    connection: &UnixSeqpacket,
    request: &zds::WorkloadRequest,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), ZdsError> {
    zds::send(connection, request, fd).await?;
    let ack = zds::recv::<WorkloadResponse>(connection, "WorkloadResponse");
    let (response, _) = tokio::time::timeout(ACK_TIMEOUT, ack)
        .await
        .map_err(|_| ZdsError::Invalid(format!("no Ack within {ACK_TIMEOUT:?}")))??;
    if let Err(err) = zds::check_ack(response) {
        tracing::warn!(error = %err, "ztunnel refused a request");
    }
    Ok(())
}

/// The current ztunnel and the connections catching up to replace it.
#[derive(Debug, Default)]
pub struct Sessions {
    current: Option<Session>,
    candidates: BTreeMap<u64, Session>,
    next_id: u64,
}

impl Sessions {
    /// A connection said hello: serve it the snapshot as a candidate. At most
    /// [`MAX_CANDIDATES`] catch up at once (the oldest is dropped), so a peer that keeps
    /// connecting cannot pile up sessions, nor shut out a ztunnel that is catching up.
    pub fn connected(
        &mut self,
        connection: UnixSeqpacket,
        captured: &BTreeMap<String, Arc<Captured>>,
        events: mpsc::UnboundedSender<SessionEvent>,
    ) {
        self.next_id += 1;
        let session = Session::start(self.next_id, connection, captured, events);
        self.candidates.insert(session.id(), session);
        while self.candidates.len() > MAX_CANDIDATES {
            self.candidates.pop_first();
        }
    }

    /// Session `id` acknowledged its snapshot: it becomes the ztunnel served from now on,
    /// and the previous one is disconnected.
    pub fn synced(&mut self, id: u64) {
        if let Some(session) = self.candidates.remove(&id) {
            self.current = Some(session);
        }
    }

    /// Session `id` ended: forget it.
    pub fn ended(&mut self, id: u64) {
        if self.current.as_ref().is_some_and(|s| s.id() == id) {
            self.current = None;
            tracing::warn!("ztunnel disconnected; it gets a snapshot when it returns");
        }
        self.candidates.remove(&id);
    }

    /// Sends `changes` to the current ztunnel and to the candidates (whose snapshots
    /// predate them).
    pub fn broadcast(&self, changes: &[Change]) {
        let sessions = self.current.iter().chain(self.candidates.values());
        for session in sessions {
            for change in changes {
                session.send(change.clone());
            }
        }
    }
}
