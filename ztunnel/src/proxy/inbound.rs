//! Inbound: HBONE tunnels on 15008 and plaintext on 15006, authorized, to the app.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::drain::{DrainWatch, accept_until_drained};
use mesh_core::hbone::{H2Stream, InboundTunnel, headers};
use mesh_model::config::istio::MtlsMode;
use mesh_model::model::{DataPlane, Workload};
use mesh_model::policy::{self, Connection};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::record::{Direction, ProxyError, Record};
use super::{PodContext, ProxyStats};
use crate::metrics::{RefusalReason, TcpLabels};

/// One HBONE tunnel: check it targets this pod, authorize, dial the app, answer, copy.
///
/// The source address is the TCP peer of the tunnel's connection: the source ztunnel dials
/// from inside the source pod, so the kernel proves it. The `forwarded` header is written
/// by the caller and only logged.
pub(super) async fn serve_hbone(pod: Arc<PodContext>, tunnel: InboundTunnel) {
    // The checks run in a boxed future of their own, so what they need (the request, its
    // headers, the peer, the app's connect) is freed by the time the copy starts: the task
    // holds only the record and the two ends for as long as the connection lives.
    let Some((record, upstream, downstream)) = Box::pin(open_tunnel(&pod, tunnel)).await else {
        return;
    };
    let _ = mesh_core::hbone::splice_metered(&upstream, downstream, &record).await;
}

/// Admits the tunnel and answers it: the record (counting from now), the app's connection
/// and the tunnel's stream; `None` once refused (answered, counted and logged).
async fn open_tunnel(
    pod: &PodContext,
    tunnel: InboundTunnel,
) -> Option<(Record, TcpStream, H2Stream)> {
    let target = tunnel.target();
    let peer = tunnel.peer().clone();
    let mut record = Record::new(Direction::Inbound, peer.addr, target);
    record.mode = "hbone";
    record.forwarded_for = tunnel
        .headers()
        .get(headers::FORWARDED)
        .and_then(headers::parse_forwarded_for);
    let plane = pod.state.plane();
    let workload = current(pod, &plane);
    let upstream = match admit_tunnel(pod, workload, &plane, &tunnel).await {
        Ok(upstream) => upstream,
        Err(error) => {
            count_refusal(pod, "inbound", &error);
            record.src_identity = Some(peer.identity.to_string());
            record.dst_identity = Some(workload.identity.to_string());
            let status = record.fail(error).status();
            tunnel.reject(status);
            return None;
        }
    };
    let baggage = tunnel
        .headers()
        .get(headers::BAGGAGE)
        .map(headers::Baggage::parse)
        .unwrap_or_default();
    let downstream = tunnel.accept().ok()?;
    ProxyStats::bump(&pod.stats.inbound_hbone);
    let labels = TcpLabels {
        reporter: "destination".into(),
        source_workload: baggage
            .workload
            .map(|(_, name)| name)
            .unwrap_or_else(|| "unknown".into()),
        source_workload_namespace: peer.identity.namespace().to_string(),
        source_principal: peer.identity.to_string(),
        connection_security_policy: "mutual_tls".into(),
        ..destination_labels(workload, &plane, target.port())
    };
    record.open(&pod.state.metrics, labels);
    Some((record, upstream, downstream))
}

/// The checks before a tunnel is answered: it is for this pod, not for a ztunnel port,
/// authorized; then the app is dialled (so a refusal by the app is a 503, not an accepted
/// tunnel that closes at once).
async fn admit_tunnel(
    pod: &PodContext,
    workload: &Workload,
    plane: &DataPlane,
    tunnel: &InboundTunnel,
) -> Result<TcpStream, ProxyError> {
    let target = tunnel.target();
    let peer = tunnel.peer();
    if !pod.workload.ips.contains(&target.ip()) {
        return Err(ProxyError::NotThisPod);
    }
    if pod.sockets.is_own_listener(target, &pod.workload.ips) {
        return Err(ProxyError::Loop);
    }
    let conn = Connection {
        src_identity: Some(peer.identity.clone()),
        src_ip: peer.addr.ip(),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = policy::authorize(&plane.authorization_policies, workload, &conn);
    if !decision.is_allowed() {
        return Err(ProxyError::Denied(decision));
    }
    dial_app(pod, peer.addr.ip(), target)
        .await
        .map_err(ProxyError::AppUnreachable)
}

/// Counts a failed inbound connection where an operator looks: loop refusals in their
/// metric, policy refusals in the pod's stats.
fn count_refusal(pod: &PodContext, listener: &'static str, error: &ProxyError) {
    match error {
        ProxyError::Loop => pod.state.metrics.refused(listener, RefusalReason::Loop),
        ProxyError::Denied(_) | ProxyError::PlaintextRefused => {
            ProxyStats::bump(&pod.stats.inbound_denied)
        }
        _ => {}
    }
}

/// Accepts TPROXYed plaintext connections until the proxy drains.
pub(super) async fn run_plaintext(pod: Arc<PodContext>, listener: TcpListener, drain: DrainWatch) {
    accept_until_drained(
        listener,
        &drain,
        "inbound plaintext",
        move |stream, peer| {
            let span = super::connection_span("inbound_plaintext", peer);
            Some(serve_plaintext(pod.clone(), stream, peer).instrument(span))
        },
    )
    .await;
}

/// One plaintext connection: allowed only where PeerAuthentication permits, then
/// authorized without an identity.
async fn serve_plaintext(pod: Arc<PodContext>, mut downstream: TcpStream, peer: SocketAddr) {
    let Ok(target) = downstream.local_addr() else {
        return;
    };
    tracing::Span::current().record("dst", tracing::field::display(target));
    let mut record = Record::new(Direction::Inbound, peer, target);
    record.mode = "plaintext";
    let plane = pod.state.plane();
    let workload = current(&pod, &plane);
    let mut upstream = match admit_plaintext(&pod, workload, &plane, peer, target).await {
        Ok(upstream) => upstream,
        Err(error) => {
            count_refusal(&pod, "inbound_plaintext", &error);
            record.dst_identity = Some(workload.identity.to_string());
            record.fail(error);
            return;
        }
    };
    ProxyStats::bump(&pod.stats.inbound_plaintext);
    let source = plane.workload(peer.ip());
    let labels = TcpLabels {
        reporter: "destination".into(),
        source_workload: source.map_or_else(|| "unknown".into(), |w| w.owner.name.clone()),
        source_workload_namespace: source.map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
        source_principal: "unknown".into(),
        connection_security_policy: "none".into(),
        ..destination_labels(workload, &plane, target.port())
    };
    record.open(&pod.state.metrics, labels);
    let _ = tokio::io::copy_bidirectional(&mut record.count(&mut downstream), &mut upstream).await;
}

async fn admit_plaintext(
    pod: &PodContext,
    workload: &Workload,
    plane: &DataPlane,
    peer: SocketAddr,
    target: SocketAddr,
) -> Result<TcpStream, ProxyError> {
    if pod.sockets.is_own_listener(target, &pod.workload.ips) {
        return Err(ProxyError::Loop);
    }
    let mode = policy::peer_authentication(&plane.peer_authentications, workload, target.port());
    if mode == MtlsMode::Strict {
        return Err(ProxyError::PlaintextRefused);
    }
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = policy::authorize(&plane.authorization_policies, workload, &conn);
    if !decision.is_allowed() {
        return Err(ProxyError::Denied(decision));
    }
    dial_app(pod, peer.ip(), target)
        .await
        .map_err(ProxyError::AppUnreachable)
}

/// This pod as the current model has it: its labels (which policies select) and named
/// ports may have changed since its proxy started. Looked up by address, so no allocation.
fn current<'a>(pod: &'a PodContext, plane: &'a DataPlane) -> &'a Workload {
    let started = &pod.workload;
    pod.workload
        .ips
        .first()
        .and_then(|ip| plane.workload(*ip))
        .filter(|w| w.name == started.name && w.namespace == started.namespace)
        .map_or(&**started, |w| &**w)
}

/// The destination half of the labels: this pod, and the service the connection was most
/// likely addressed to (the source picked this pod as one of its endpoints).
fn destination_labels(workload: &Workload, plane: &DataPlane, port: u16) -> TcpLabels {
    TcpLabels {
        destination_workload: workload.owner.name.clone(),
        destination_workload_namespace: workload.namespace.clone(),
        destination_principal: workload.identity.to_string(),
        destination_service: plane
            .inbound_service(workload, port)
            .map_or_else(|| "unknown".into(), |s| s.hostname.clone()),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        ..TcpLabels::default()
    }
}

/// Connects to the application inside the pod, marked so the rules let it through.
///
/// The connection comes from the original client's address (a transparent bind), so the
/// app sees who called it; the pod's rules route the replies back to ztunnel.
async fn dial_app(
    pod: &PodContext,
    src: std::net::IpAddr,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    super::connect_upstream(pod, Some(SocketAddr::new(src, 0)), target).await
}
