//! Inbound: HBONE tunnels on 15008 and plaintext on 15006, authorized, to the app.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_core::hbone::{InboundTunnel, headers};
use mesh_core::inpod;
use mesh_model::config::istio::MtlsMode;
use mesh_model::policy::{self, Connection};
use tokio::net::{TcpListener, TcpStream};

use super::accept::{DrainSignal, serve_until_drained};
use super::{PodContext, ProxyStats};
use crate::metrics::{RefusalReason, TcpLabels};

/// One HBONE tunnel: check it targets this pod, authorize, dial the app, answer, copy.
///
/// The source address is the TCP peer of the tunnel's connection: the source ztunnel dials
/// from inside the source pod, so the kernel proves it. The `forwarded` header is written
/// by the caller and only logged.
pub(super) async fn serve_hbone(pod: Arc<PodContext>, tunnel: InboundTunnel) {
    let started = std::time::Instant::now();
    let target = tunnel.target();
    if !pod.workload.ips.contains(&target.ip()) {
        tracing::warn!(%target, pod = %pod.workload.name, "tunnel for another workload");
        return tunnel.reject(StatusCode::BAD_REQUEST);
    }
    let peer = tunnel.peer().clone();
    if inpod::is_own_listener(target.ip(), target.port(), &pod.workload.ips) {
        pod.state.metrics.refused("inbound", RefusalReason::Loop);
        tracing::debug!(direction = "inbound", src = %peer.addr, dst = %target, src_identity = %peer.identity, "tunnel to a ztunnel port refused");
        return tunnel.reject(StatusCode::BAD_REQUEST);
    }
    let src_ip = peer.addr.ip();
    let forwarded_for = tunnel
        .headers()
        .get(headers::FORWARDED)
        .and_then(headers::parse_forwarded_for);
    let conn = Connection {
        src_identity: Some(peer.identity.clone()),
        src_ip,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let plane = pod.state.plane();
    let decision = policy::authorize(&plane.authorization_policies, &pod.workload, &conn);
    if !decision.is_allowed() {
        ProxyStats::bump(&pod.stats.inbound_denied);
        tracing::info!(direction = "inbound", %src_ip, dst = %target, src_identity = %peer.identity, ?decision, "connection denied");
        return tunnel.reject(StatusCode::UNAUTHORIZED);
    }
    let upstream = match dial_app(&pod, src_ip, target).await {
        Ok(upstream) => upstream,
        Err(err) => {
            tracing::info!(direction = "inbound", dst = %target, error = %err, "application unreachable");
            return tunnel.reject(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let baggage = tunnel
        .headers()
        .get(headers::BAGGAGE)
        .map(headers::Baggage::parse)
        .unwrap_or_default();
    let Ok(downstream) = tunnel.accept() else {
        return;
    };
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
        ..destination_labels(&pod)
    };
    pod.state.metrics.opened(&labels);
    let copied = mesh_core::hbone::splice(&upstream, downstream)
        .await
        .unwrap_or_default();
    pod.state
        .metrics
        .closed(&labels, copied.from_tunnel, copied.to_tunnel);
    tracing::info!(
        direction = "inbound", %src_ip, ?forwarded_for, dst = %target, src_identity = %peer.identity,
        dst_identity = %pod.workload.identity, connection_security_policy = "mutual_tls",
        bytes_received = copied.from_tunnel, bytes_sent = copied.to_tunnel,
        duration_ms = started.elapsed().as_millis() as u64, "connection complete"
    );
}

/// Accepts TPROXYed plaintext connections until the proxy drains.
pub(super) async fn run_plaintext(pod: Arc<PodContext>, listener: TcpListener, drain: DrainSignal) {
    serve_until_drained(listener, drain, "inbound plaintext", |stream, peer| {
        serve_plaintext(pod.clone(), stream, peer)
    })
    .await;
}

/// One plaintext connection: allowed only where PeerAuthentication permits, then
/// authorized without an identity.
async fn serve_plaintext(pod: Arc<PodContext>, mut downstream: TcpStream, peer: SocketAddr) {
    let started = std::time::Instant::now();
    let Ok(target) = downstream.local_addr() else {
        return;
    };
    if inpod::is_own_listener(target.ip(), target.port(), &pod.workload.ips) {
        pod.state
            .metrics
            .refused("inbound_plaintext", RefusalReason::Loop);
        tracing::debug!(direction = "inbound", src = %peer, dst = %target, "plaintext to a ztunnel port refused");
        return;
    }
    let plane = pod.state.plane();
    let mode =
        policy::peer_authentication(&plane.peer_authentications, &pod.workload, target.port());
    if mode == MtlsMode::Strict {
        ProxyStats::bump(&pod.stats.inbound_denied);
        tracing::info!(direction = "inbound", src = %peer, dst = %target, "plaintext refused: PeerAuthentication STRICT");
        return;
    }
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = policy::authorize(&plane.authorization_policies, &pod.workload, &conn);
    if !decision.is_allowed() {
        ProxyStats::bump(&pod.stats.inbound_denied);
        tracing::info!(direction = "inbound", src = %peer, dst = %target, ?decision, "connection denied");
        return;
    }
    let Ok(mut upstream) = dial_app(&pod, peer.ip(), target).await else {
        return;
    };
    ProxyStats::bump(&pod.stats.inbound_plaintext);
    let source = plane.workload(peer.ip());
    let labels = TcpLabels {
        reporter: "destination".into(),
        source_workload: source.map_or_else(|| "unknown".into(), |w| w.name.clone()),
        source_workload_namespace: source.map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
        source_principal: "unknown".into(),
        connection_security_policy: "none".into(),
        ..destination_labels(&pod)
    };
    pod.state.metrics.opened(&labels);
    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
        .await
        .unwrap_or_default();
    pod.state.metrics.closed(&labels, copied.0, copied.1);
    tracing::info!(
        direction = "inbound", src = %peer, dst = %target, connection_security_policy = "none",
        bytes_received = copied.0, bytes_sent = copied.1,
        duration_ms = started.elapsed().as_millis() as u64, "connection complete"
    );
}

/// The destination half of the labels: this pod (services are not known inbound).
fn destination_labels(pod: &PodContext) -> TcpLabels {
    TcpLabels {
        destination_workload: pod.workload.name.clone(),
        destination_workload_namespace: pod.workload.namespace.clone(),
        destination_principal: pod.workload.identity.to_string(),
        destination_service: "unknown".into(),
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
