//! Outbound: the app's connection, redirected to 15001, to its upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;
use mesh_core::drain::{DrainWatch, accept_until_drained};
use mesh_core::hbone::{ConnectRequest, headers};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::record::{Direction, ProxyError, Record};
use super::route::{Upstream, route};
use super::{PodContext, ProxyStats};
use crate::metrics::{RefusalReason, TcpLabels};

/// The source half of the labels: this pod, reported as the source.
fn source_labels(pod: &PodContext) -> TcpLabels {
    TcpLabels {
        reporter: "source".into(),
        source_workload: pod.workload.owner.name.clone(),
        source_workload_namespace: pod.workload.namespace.clone(),
        source_principal: pod.workload.identity.to_string(),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        ..TcpLabels::default()
    }
}

/// Accepts redirected connections until the proxy drains.
pub(super) async fn run(pod: Arc<PodContext>, listener: TcpListener, drain: DrainWatch) {
    accept_until_drained(listener, &drain, "outbound", move |stream, peer| {
        Some(serve(pod.clone(), stream).instrument(super::connection_span("outbound", peer)))
    })
    .await;
}

/// One connection: find where the app meant to go, route, open the upstream, copy. Its
/// [`Record`] counts and logs it, whatever the outcome.
pub(super) async fn serve(pod: Arc<PodContext>, downstream: TcpStream) {
    let _ = downstream.set_nodelay(true);
    let (src, dst) = match (
        downstream.peer_addr(),
        pod.sockets.original_dst(&downstream),
    ) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "outbound connection without addresses");
            return;
        }
    };
    tracing::Span::current().record("dst", tracing::field::display(dst));
    let mut record = Record::new(Direction::Outbound, src, dst);
    if let Err(error) = proxy(&pod, downstream, src, dst, &mut record).await {
        record.src_identity = Some(pod.workload.identity.to_string());
        match &error {
            ProxyError::Loop => pod.state.metrics.refused("outbound", RefusalReason::Loop),
            ProxyError::PendingConnects => pod
                .state
                .metrics
                .refused("outbound", RefusalReason::PendingConnects),
            _ => ProxyStats::bump(&pod.stats.outbound_failed),
        }
        record.fail(error);
    }
}

async fn proxy(
    pod: &PodContext,
    mut downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    record: &mut Record,
) -> Result<(), ProxyError> {
    // Aimed at one of this pod's ztunnel ports or at loopback (which covers a connection
    // that was not redirected: its original destination is the listener's own address):
    // relaying it would connect ztunnel to itself.
    if pod.sockets.is_own_listener(dst, &pod.workload.ips) {
        return Err(ProxyError::Loop);
    }
    // Held until the upstream connection is established (or fails).
    let connecting = pod
        .pending_connects
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::PendingConnects)?;
    let plane = pod.state.plane();
    let pick = |n| pod.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
    match route(&plane, dst, pick)? {
        // A service or address leading to a mesh pod's own ztunnel port.
        Upstream::Hbone {
            authority,
            workload,
            ..
        } if pod.sockets.is_own_listener(authority, &workload.ips) => Err(ProxyError::Loop),
        Upstream::Hbone {
            hbone_addr,
            authority,
            workload,
            service,
        } => {
            record.mode = "hbone";
            let request = ConnectRequest {
                src: pod.workload.identity.clone(),
                dst: hbone_addr,
                dst_identities: vec![workload.identity.clone()],
                authority,
                headers: request_headers(pod, src),
            };
            // Boxed, so the connect's state is freed once the tunnel is open: inline, this
            // connection's task would hold its size (most of the task's) for as long as the
            // connection lives.
            let connected = Box::pin(pod.client.connect(request)).await;
            drop(connecting);
            let upstream = connected.map_err(|e| ProxyError::Tunnel(e.to_string()))?;
            ProxyStats::bump(&pod.stats.outbound_hbone);
            let labels = TcpLabels {
                destination_workload: workload.owner.name.clone(),
                destination_workload_namespace: workload.namespace.clone(),
                destination_principal: workload.identity.to_string(),
                destination_service: service
                    .map_or_else(|| "unknown".into(), |s| s.hostname.clone()),
                connection_security_policy: "mutual_tls".into(),
                ..source_labels(pod)
            };
            record.open(&pod.state.metrics, labels);
            // A reset or error mid-stream ends the connection; the bytes moved are counted.
            let _ = mesh_core::hbone::splice_metered(&downstream, upstream, &*record).await;
            Ok(())
        }
        Upstream::Passthrough {
            addr,
            workload,
            service,
        } => {
            record.mode = "passthrough";
            let connected = super::connect_upstream(pod, None, addr).await;
            drop(connecting);
            let mut upstream = connected.map_err(ProxyError::Upstream)?;
            ProxyStats::bump(&pod.stats.outbound_passthrough);
            let labels = TcpLabels {
                destination_workload: workload
                    .as_ref()
                    .map_or_else(|| "unknown".into(), |w| w.owner.name.clone()),
                destination_workload_namespace: workload
                    .as_ref()
                    .map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
                destination_principal: "unknown".into(),
                destination_service: service
                    .map_or_else(|| addr.ip().to_string(), |s| s.hostname.clone()),
                connection_security_policy: "none".into(),
                ..source_labels(pod)
            };
            record.open(&pod.state.metrics, labels);
            let _ =
                tokio::io::copy_bidirectional(&mut record.count(&mut downstream), &mut upstream)
                    .await;
            Ok(())
        }
    }
}

/// `forwarded` (the app's address, for the peer's logs only) and `baggage` (who we are).
fn request_headers(pod: &PodContext, src: SocketAddr) -> HeaderMap {
    let mut request_headers = HeaderMap::new();
    request_headers.insert(headers::FORWARDED, headers::forwarded_for(src.ip()));
    let baggage = headers::Baggage {
        namespace: Some(pod.workload.namespace.clone()),
        workload: Some((
            pod.workload.owner.kind.clone(),
            pod.workload.owner.name.clone(),
        )),
        ..Default::default()
    };
    if let Some(value) = baggage.to_header() {
        request_headers.insert(headers::BAGGAGE, value);
    }
    request_headers
}
