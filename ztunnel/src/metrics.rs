//! Istio's standard TCP metrics, so existing Grafana and Kiali dashboards work unchanged.
//!
//! Names and labels follow Istio: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, each with `reporter` (`source` for outbound,
//! `destination` for inbound), the workloads, principals, service and
//! `connection_security_policy`. Byte counts grow as bytes pass, while the connection is
//! open.
//!
//! ztunnel's own: `ztunnel_connections_refused_total{listener, reason}` counts connections
//! refused before policy was asked, for reasons an operator should see (a connection that
//! would have looped into ztunnel's own listeners, a source over its tunnel limit);
//! `ztunnel_config_rejected_objects` is how many configuration objects the current
//! configuration holds that could not be used as written (alert on it being above 0).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of every TCP metric (Istio's set).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// Why ztunnel refused a connection before policy was asked.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its target is one of ztunnel's own listeners (or loopback): relaying it would make
    /// ztunnel connect to itself.
    Loop,
    /// Its pod already had the most upstream connects in progress that one pod may have.
    PendingConnects,
}

impl RefusalReason {
    fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Loop => "loop",
            RefusalReason::PendingConnects => "pending_connects",
        }
    }
}

/// Labels of `ztunnel_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: &'static str,
    reason: &'static str,
}

/// One label set's four TCP counters, fetched once and shared by every connection with
/// those labels: a connection holds one `Arc` (not its own copy of eleven label strings),
/// and the labels are hashed once per connection, not once per counter.
#[derive(Debug)]
pub struct TcpSeries {
    /// The labels, for the access log.
    pub labels: TcpLabels,
    opened: Counter,
    closed: Counter,
    /// Bytes towards the destination.
    pub sent: Counter,
    /// Bytes back from the destination.
    pub received: Counter,
}

impl TcpSeries {
    /// Counts one of its connections as closed.
    pub fn closed(&self) {
        self.closed.inc();
    }
}

/// The registry and the four TCP families.
pub struct Metrics {
    registry: Registry,
    /// The TCP label sets seen, with their counters. Grows like the families themselves
    /// (one entry per label set, never removed), so it bounds nothing new.
    series: std::sync::RwLock<std::collections::HashMap<TcpLabels, Arc<TcpSeries>>>,
    refused: Family<RefusalLabels, Counter>,
    rejected_config: Gauge,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent = Family::<TcpLabels, Counter>::default();
        let received = Family::<TcpLabels, Counter>::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent during TCP connections (towards the destination)",
            sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received during TCP connections (from the destination)",
            received.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "ztunnel_connections_refused",
            "Connections ztunnel refused before policy, by listener and reason",
            refused.clone(),
        );
        let rejected_config = Gauge::default();
        registry.register(
            "ztunnel_config_rejected_objects",
            "Configuration objects that could not be used as written (security policies among them fail closed)",
            rejected_config.clone(),
        );
        Metrics {
            registry,
            series: Default::default(),
            refused,
            rejected_config,
            opened,
            closed,
            sent,
            received,
        }
    }
}

impl Metrics {
    /// Counts a connection as opened under `labels`; returns the label set's counters for
    /// it to add bytes to as they pass and to count its close.
    pub fn opened(&self, labels: TcpLabels) -> Arc<TcpSeries> {
        let known = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&labels)
            .cloned();
        let series = match known {
            Some(series) => series,
            None => {
                let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
                all.entry(labels)
                    .or_insert_with_key(|labels| {
                        Arc::new(TcpSeries {
                            opened: self.opened.get_or_create(labels).clone(),
                            closed: self.closed.get_or_create(labels).clone(),
                            sent: self.sent.get_or_create(labels).clone(),
                            received: self.received.get_or_create(labels).clone(),
                            labels: labels.clone(),
                        })
                    })
                    .clone()
            }
        };
        series.opened.inc();
        series
    }

    /// Counts a connection refused on `listener` (`outbound`, `inbound`,
    /// `inbound_plaintext`) for `reason`.
    pub fn refused(&self, listener: &'static str, reason: RefusalReason) {
        let labels = RefusalLabels {
            listener,
            reason: reason.as_str(),
        };
        self.refused.get_or_create(&labels).inc();
    }

    /// Sets how many configuration objects the current configuration rejected.
    pub fn set_rejected_config(&self, count: usize) {
        self.rejected_config
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_istio_names_and_labels() {
        let metrics = Metrics::default();
        let labels = TcpLabels {
            reporter: "destination".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
            connection_security_policy: "mutual_tls".into(),
            request_protocol: "tcp".into(),
            ..Default::default()
        };
        let series = metrics.opened(labels.clone());
        series.sent.inc_by(41);
        series.received.inc_by(287);
        series.closed();
        // A second connection with the same labels shares the series.
        let again = metrics.opened(labels);
        assert!(Arc::ptr_eq(&series, &again));
        again.closed();
        metrics.refused("outbound", RefusalReason::Loop);
        metrics.set_rejected_config(2);
        let text = metrics.encode();
        for needle in [
            "istio_tcp_connections_opened_total{reporter=\"destination\"",
            "istio_tcp_connections_closed_total{reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
            "istio_tcp_connections_closed_total{",
            "istio_tcp_sent_bytes_total{",
            "ztunnel_connections_refused_total{listener=\"outbound\",reason=\"loop\"} 1",
            "ztunnel_config_rejected_objects 2",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        for (name, value) in [
            ("istio_tcp_received_bytes_total{", " 287"),
            ("istio_tcp_connections_opened_total{", " 2"),
            ("istio_tcp_connections_closed_total{", " 2"),
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && l.ends_with(value)),
                "{name}..{value} missing from:\n{text}"
            );
        }
    }
}
