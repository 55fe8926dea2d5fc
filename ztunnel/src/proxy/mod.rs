//! The in-pod proxy: for each captured pod, three listeners inside its network
//! namespace, served by ztunnel's runtime.
//!
//! ```text
//!  app ─connect()─► (REDIRECT) :15001 ─ outbound.rs ─ route.rs ─┬─ HBONE to <dst pod>:15008
//!                                                               └─ plain TCP (not in mesh)
//!  peer ztunnel ──► (TPROXY) :15008 ─ inbound.rs: mTLS, authorize ─► app
//!  plaintext peer ► (TPROXY) :15006 ─ inbound.rs: PeerAuthentication, authorize ─► app
//! ```
//!
//! Every socket is created in the pod's namespace; upstream ones carry ztunnel's mark so
//! the pod's rules let them pass. Sockets come through [`sockets::PodSockets`], so tests
//! can run this same code on plain host sockets without root.

mod inbound;
mod outbound;
pub mod record;
pub mod route;
pub mod sockets;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_core::cert::CertManager;
use mesh_core::drain::Drain;
use mesh_core::hbone::{
    ClientSettings, DialFuture, Dialer, HboneClient, HboneServer, ServerSettings,
};
use mesh_core::tls::{self, ManagedCertResolver};
use mesh_model::model::{DataPlane, Workload};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use sockets::PodSockets;

pub use mesh_core::inpod::{INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

/// How long a TCP connect to an upstream (the app in the pod, a destination outside the
/// mesh) may take: a destination that drops SYNs would otherwise hold both of the
/// connection's descriptors for the kernel's two minutes of retries.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The span a connection's task runs in (debug level: free unless debug logging is on),
/// so every line logged while serving it names the connection; `dst` is recorded once
/// known (the original destination, or the tunnel's target).
fn connection_span(listener: &'static str, src: SocketAddr) -> tracing::Span {
    tracing::debug_span!("connection", listener, %src, dst = tracing::field::Empty)
}

/// Connects from inside the pod (marked, optionally from `src`), within
/// [`UPSTREAM_CONNECT_TIMEOUT`].
async fn connect_upstream(
    pod: &PodContext,
    src: Option<SocketAddr>,
    dst: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let connect = pod.sockets.connect(src, dst);
    tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {UPSTREAM_CONNECT_TIMEOUT:?}"),
            )
        })?
}

/// Upstream connects one pod may have in progress at once. A destination that answers
/// completes its connect in a round trip; only one that drops SYNs (a black hole, or a
/// scan of dead addresses) piles them up, and past this many its connections are refused
/// at once rather than let one pod spend the node's descriptors.
pub const MAX_PENDING_CONNECTS_PER_POD: usize = 1024;

/// What every pod proxy of this ztunnel shares.
pub struct ProxyState {
    /// The current data plane, replaced on every configuration change.
    pub plane: watch::Receiver<Arc<DataPlane>>,
    /// Workload certificates.
    pub certs: Arc<CertManager>,
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// `SO_MARK` of ztunnel's sockets in pods (must match the rules' bypass mark).
    pub mark: u32,
    /// Istio's TCP metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The threads pods' connections run on (each connection and all it spawns on one of
    /// them); `None`: on the runtime that starts the proxies.
    pub workers: Option<Arc<mesh_core::workers::Workers>>,
}

impl ProxyState {
    fn plane(&self) -> Arc<DataPlane> {
        self.plane.borrow().clone()
    }
}

/// Counters of one pod's proxy (metrics build on them).
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Outbound connections sent over HBONE.
    pub outbound_hbone: AtomicU64,
    /// Outbound connections passed through as plain TCP.
    pub outbound_passthrough: AtomicU64,
    /// Outbound connections that failed (no route, upstream refused).
    pub outbound_failed: AtomicU64,
    /// Inbound HBONE tunnels served.
    pub inbound_hbone: AtomicU64,
    /// Inbound plaintext connections served.
    pub inbound_plaintext: AtomicU64,
    /// Inbound connections refused by policy or PeerAuthentication.
    pub inbound_denied: AtomicU64,
}

impl ProxyStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One captured pod, as its connections' handlers see it.
struct PodContext {
    workload: Arc<Workload>,
    sockets: Arc<dyn PodSockets>,
    state: Arc<ProxyState>,
    client: HboneClient,
    stats: Arc<ProxyStats>,
    next_endpoint: AtomicUsize,
    /// Permits for upstream connects in progress ([`MAX_PENDING_CONNECTS_PER_POD`]).
    pending_connects: Arc<tokio::sync::Semaphore>,
}

/// Opens HBONE connections from the pod (inside its namespace, marked, in production).
struct PodDialer {
    sockets: Arc<dyn PodSockets>,
}

impl Dialer for PodDialer {
    fn dial(&self, dst: SocketAddr) -> DialFuture<'_> {
        self.sockets.connect(None, dst)
    }
}

/// Why a pod's proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No certificate for the pod's identity.
    #[error(transparent)]
    Certificate(#[from] mesh_core::cert::CertError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] mesh_core::tls::TlsError),
    /// A listener could not be bound in the pod.
    #[error("binding {addr} in the pod: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The running proxy of one pod; dropping it closes its listeners and connections at
/// once, [`WorkloadProxy::drain`] lets connections finish first.
pub struct WorkloadProxy {
    workload: Arc<Workload>,
    stats: Arc<ProxyStats>,
    drain: Option<Drain>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkloadProxy {
    /// Starts the three listeners of `workload` on `sockets` (in production
    /// [`sockets::InPod`]: inside its network namespace). Must be called within a Tokio
    /// runtime.
    pub async fn start(
        state: Arc<ProxyState>,
        workload: Arc<Workload>,
        sockets: Arc<dyn PodSockets>,
    ) -> Result<Self, StartError> {
        let cert = state.certs.fetch(&workload.identity).await?;
        if let Err(err) = sockets.prepare() {
            // Old kernels: a restart may then reset the connections queued at that moment.
            tracing::warn!(pod = %workload.name, error = %err, "listener migration unavailable");
        }
        let bind = |port: u16, transparent: bool| {
            sockets
                .listen(port, transparent)
                .map_err(|source| StartError::Bind {
                    addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                    source,
                })
        };
        let outbound = bind(OUTBOUND_PORT, false)?;
        let plaintext = bind(INBOUND_PLAINTEXT_PORT, true)?;
        let hbone = bind(mesh_core::hbone::HBONE_PORT, true)?;

        let dialer = Arc::new(PodDialer {
            sockets: sockets.clone(),
        });
        // Concurrent tunnels to a destination encrypt on every core: on workers, each has
        // its own connections (the pool keys them by worker); else one lane per thread of
        // the runtime.
        let lanes = match &state.workers {
            Some(_) => 1,
            None => tokio::runtime::Handle::current().metrics().num_workers(),
        };
        let settings = ClientSettings {
            lanes,
            ..ClientSettings::default()
        };
        let client = HboneClient::with_dialer(state.certs.clone(), settings, dialer);
        let stats = Arc::new(ProxyStats::default());
        let context = Arc::new(PodContext {
            workload: workload.clone(),
            sockets,
            state: state.clone(),
            client,
            stats: stats.clone(),
            next_endpoint: AtomicUsize::new(0),
            pending_connects: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_CONNECTS_PER_POD)),
        });

        let resolver = Arc::new(ManagedCertResolver::new(
            state.certs.clone(),
            workload.identity.clone(),
        ));
        let server_config = tls::server_config(resolver, cert.roots(), &state.trust_domain)?;
        let handler_context = context.clone();
        let handler = move |tunnel: mesh_core::hbone::InboundTunnel| {
            let span = connection_span("inbound_hbone", tunnel.peer().addr);
            span.record("dst", tracing::field::display(tunnel.target()));
            inbound::serve_hbone(handler_context.clone(), tunnel).instrument(span)
        };
        let server = HboneServer::new(hbone, server_config, handler, ServerSettings::default());
        // One drain for the pod's three listeners and all their connections.
        let (drain, watch) = match &state.workers {
            Some(workers) => mesh_core::drain::new_on(workers.clone()),
            None => mesh_core::drain::new(),
        };
        let hbone_watch = watch.clone();
        let tasks = vec![
            tokio::spawn(outbound::run(context.clone(), outbound, watch.clone())),
            tokio::spawn(inbound::run_plaintext(context, plaintext, watch)),
            tokio::spawn(async move { server.run_with(&hbone_watch).await }),
        ];
        tracing::info!(pod = %workload.name, namespace = %workload.namespace, identity = %workload.identity, "pod proxy started");
        Ok(WorkloadProxy {
            workload,
            stats,
            drain: Some(drain),
            tasks,
        })
    }

    /// The pod it serves.
    pub fn workload(&self) -> &Arc<Workload> {
        &self.workload
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// Stops accepting (listeners close, HBONE clients get GOAWAY) and lets live
    /// connections finish for up to `limit`; returns when all are done.
    pub async fn drain(mut self, limit: Duration) {
        if let Some(drain) = self.drain.take() {
            drain.drain(limit).await;
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for WorkloadProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!(pod = %self.workload.name, namespace = %self.workload.namespace, "pod proxy stopped");
    }
}

/// What one task of a live connection holds, checked per build: every idle connection
/// pays it (10,000 idle connections are a real workload), and the state of a connect or
/// an admission in progress, inlined by mistake, would make it several times larger.
#[cfg(test)]
mod task_size {
    use std::future::Future;

    fn future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_outbound_connection_does_not_hold_its_connect_state() {
        // 4,712 bytes with the HBONE connect inlined (debug build).
        let size = future_size(super::outbound::serve);
        assert!(size <= 2048, "outbound connection future: {size} bytes");
    }

    #[test]
    fn an_inbound_tunnel_does_not_hold_its_admission_state() {
        // 2,000 bytes with the checks and the app's connect inlined (debug build).
        let size = future_size(super::inbound::serve_hbone);
        assert!(size <= 1792, "inbound tunnel future: {size} bytes");
    }
}
