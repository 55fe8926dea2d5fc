//! Outbound: the app's connection, redirected to 15001, to its upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;
use mesh_core::hbone::{ConnectRequest, headers};
use mesh_core::inpod;
use tokio::net::{TcpListener, TcpStream};

use super::accept::{DrainSignal, serve_until_drained};
use super::route::{Upstream, route};
use super::{PodContext, ProxyStats};
use crate::metrics::{RefusalReason, TcpLabels};

/// The source half of the labels: this pod, reported as the source.
fn source_labels(pod: &PodContext) -> TcpLabels {
    TcpLabels {
        reporter: "source".into(),
        source_workload: pod.workload.name.clone(),
        source_workload_namespace: pod.workload.namespace.clone(),
        source_principal: pod.workload.identity.to_string(),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        ..TcpLabels::default()
    }
}

/// Accepts redirected connections until the proxy drains.
pub(super) async fn run(pod: Arc<PodContext>, listener: TcpListener, drain: DrainSignal) {
    serve_until_drained(listener, drain, "outbound", |stream, _| {
        serve(pod.clone(), stream)
    })
    .await;
}

/// One connection: find where the app meant to go, route, open the upstream, copy.
async fn serve(pod: Arc<PodContext>, mut downstream: TcpStream) {
    let _ = downstream.set_nodelay(true);
    let (src, dst) = match (
        downstream.peer_addr(),
        mesh_core::socket::original_dst(&downstream),
    ) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "outbound connection without addresses");
            return;
        }
    };
    // Aimed at one of this pod's ztunnel ports or at loopback (which covers a connection
    // that was not redirected: its original destination is the listener's own address):
    // relaying it would connect ztunnel to itself.
    if inpod::is_own_listener(dst.ip(), dst.port(), &pod.workload.ips) {
        return refuse_loop(&pod, src, dst);
    }
    // Held until the upstream connection is established (or fails).
    let Ok(connecting) = pod.pending_connects.clone().try_acquire_owned() else {
        pod.state
            .metrics
            .refused("outbound", RefusalReason::PendingConnects);
        // Counted in the metric; a warning per refusal would let the flood fill the log.
        tracing::debug!(direction = "outbound", %src, %dst, src_identity = %pod.workload.identity, "connection refused: too many upstream connects in progress");
        return;
    };
    let plane = pod.state.plane();
    let pick = |n| pod.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
    let started = std::time::Instant::now();
    let outcome = match route(&plane, dst, pick) {
        Err(err) => Err(err.to_string()),
        // A service or address leading to a mesh pod's own ztunnel port.
        Ok(Upstream::Hbone {
            authority,
            workload,
            ..
        }) if inpod::is_own_listener(authority.ip(), authority.port(), &workload.ips) => {
            return refuse_loop(&pod, src, authority);
        }
        Ok(Upstream::Hbone {
            hbone_addr,
            authority,
            workload,
            service,
        }) => {
            let mut request_headers = HeaderMap::new();
            request_headers.insert(headers::FORWARDED, headers::forwarded_for(src.ip()));
            let baggage = headers::Baggage {
                namespace: Some(pod.workload.namespace.clone()),
                workload: Some(("pod".into(), pod.workload.name.clone())),
                ..Default::default()
            };
            if let Some(value) = baggage.to_header() {
                request_headers.insert(headers::BAGGAGE, value);
            }
            let request = ConnectRequest {
                src: pod.workload.identity.clone(),
                dst: hbone_addr,
                dst_identities: vec![workload.identity.clone()],
                authority,
                headers: request_headers,
            };
            let connected = pod.client.connect(request).await;
            drop(connecting);
            match connected {
                Ok(upstream) => {
                    ProxyStats::bump(&pod.stats.outbound_hbone);
                    let labels = TcpLabels {
                        destination_workload: workload.name.clone(),
                        destination_workload_namespace: workload.namespace.clone(),
                        destination_principal: workload.identity.to_string(),
                        destination_service: service
                            .map_or_else(|| "unknown".into(), |s| s.hostname()),
                        connection_security_policy: "mutual_tls".into(),
                        ..source_labels(&pod)
                    };
                    pod.state.metrics.opened(&labels);
                    let copied = mesh_core::hbone::splice(&downstream, upstream)
                        .await
                        .unwrap_or_default();
                    pod.state
                        .metrics
                        .closed(&labels, copied.to_tunnel, copied.from_tunnel);
                    Ok((
                        "hbone",
                        workload.identity.to_string(),
                        (copied.to_tunnel, copied.from_tunnel),
                    ))
                }
                Err(err) => Err(err.to_string()),
            }
        }
        Ok(Upstream::Passthrough {
            addr,
            workload,
            service,
        }) => {
            let connected = super::connect_upstream(&pod, None, addr).await;
            drop(connecting);
            match connected {
                Ok(mut upstream) => {
                    ProxyStats::bump(&pod.stats.outbound_passthrough);
                    let labels = TcpLabels {
                        destination_workload: workload
                            .as_ref()
                            .map_or_else(|| "unknown".into(), |w| w.name.clone()),
                        destination_workload_namespace: workload
                            .as_ref()
                            .map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
                        destination_principal: "unknown".into(),
                        destination_service: service
                            .map_or_else(|| addr.ip().to_string(), |s| s.hostname()),
                        connection_security_policy: "none".into(),
                        ..source_labels(&pod)
                    };
                    pod.state.metrics.opened(&labels);
                    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                        .await
                        .unwrap_or_default();
                    pod.state.metrics.closed(&labels, copied.0, copied.1);
                    Ok(("passthrough", String::from("-"), copied))
                }
                Err(err) => Err(format!("connecting to {addr}: {err}")),
            }
        }
    };
    match outcome {
        Ok((mode, dst_identity, (sent, received))) => tracing::info!(
            direction = "outbound", %src, %dst, mode, src_identity = %pod.workload.identity, %dst_identity,
            bytes_sent = sent, bytes_received = received, duration_ms = started.elapsed().as_millis() as u64,
            "connection complete"
        ),
        Err(error) => {
            ProxyStats::bump(&pod.stats.outbound_failed);
            tracing::warn!(direction = "outbound", %src, %dst, src_identity = %pod.workload.identity, %error, "connection failed");
        }
    }
}

fn refuse_loop(pod: &PodContext, src: SocketAddr, dst: SocketAddr) {
    pod.state.metrics.refused("outbound", RefusalReason::Loop);
    // Counted in the metric; a warning each would let a flood of them fill the log.
    tracing::debug!(direction = "outbound", %src, %dst, src_identity = %pod.workload.identity, "connection to a ztunnel port refused");
}
