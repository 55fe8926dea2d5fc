//! The request headers Istio's ztunnel puts on an HBONE CONNECT, built and read here.
//!
//! * `forwarded: for=<src ip>`: the original client address, for the server's telemetry
//!   and policy (the TCP peer is the source node's ztunnel, not the pod).
//! * `baggage`: W3C baggage with the source workload's names, for telemetry labels.
//! * `traceparent`: W3C trace context, so tunnels can be joined to traces.

use std::net::IpAddr;

use http::HeaderValue;

/// Header carrying the source workload's identity for telemetry.
pub const BAGGAGE: &str = "baggage";
/// Header carrying the original client address.
pub const FORWARDED: &str = "forwarded";
/// Header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// `for=<ip>`, quoted and bracketed for IPv6 as RFC 7239 requires.
pub fn forwarded_for(src: IpAddr) -> HeaderValue {
    let value = match src {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// The client address in a `forwarded` header, if it names one.
pub fn parse_forwarded_for(value: &HeaderValue) -> Option<IpAddr> {
    let text = value.to_str().ok()?;
    text.split([';', ',']).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim_matches('"');
        let value = value
            .strip_prefix('[')
            .and_then(|v| v.split(']').next())
            .unwrap_or(value);
        value.parse().ok()
    })
}

/// The source workload as Istio describes it in `baggage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`.
    pub cluster: Option<String>,
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// Workload kind and name: `k8s.<kind>.name` (deployment, pod, ...).
    pub workload: Option<(String, String)>,
    /// `service.name` (canonical service).
    pub service: Option<String>,
    /// `service.version` (canonical revision).
    pub revision: Option<String>,
}

impl Baggage {
    /// The header value, keys in Istio's order; empty fields are left out.
    pub fn to_header(&self) -> Option<HeaderValue> {
        let mut parts = Vec::new();
        let mut push = |key: String, value: &Option<String>| {
            if let Some(value) = value {
                parts.push(format!("{key}={value}"));
            }
        };
        push("k8s.cluster.name".into(), &self.cluster);
        push("k8s.namespace.name".into(), &self.namespace);
        if let Some((kind, name)) = &self.workload {
            push(format!("k8s.{kind}.name"), &Some(name.clone()));
        }
        push("service.name".into(), &self.service);
        push("service.version".into(), &self.revision);
        if parts.is_empty() {
            return None;
        }
        HeaderValue::try_from(parts.join(",")).ok()
    }

    /// Reads a `baggage` header; unknown keys and properties are ignored.
    pub fn parse(value: &HeaderValue) -> Baggage {
        let mut baggage = Baggage::default();
        let Ok(text) = value.to_str() else {
            return baggage;
        };
        for member in text.split(',') {
            let member = member.split(';').next().unwrap_or_default();
            let Some((key, value)) = member.trim().split_once('=') else {
                continue;
            };
            let value = Some(value.trim().to_string());
            match key.trim() {
                "k8s.cluster.name" => baggage.cluster = value,
                "k8s.namespace.name" => baggage.namespace = value,
                "service.name" => baggage.service = value,
                "service.version" => baggage.revision = value,
                other => {
                    let kind = other
                        .strip_prefix("k8s.")
                        .and_then(|k| k.strip_suffix(".name"));
                    if let (Some(kind), Some(name)) = (kind, value) {
                        baggage.workload = Some((kind.to_string(), name));
                    }
                }
            }
        }
        baggage
    }
}

/// A fresh W3C `traceparent` with random trace and span ids, not sampled.
pub fn new_traceparent() -> HeaderValue {
    let mut ids = [0u8; 24];
    // Random ids only need to be unlikely to collide; on an RNG failure the zero id is
    // replaced below by a fixed non-zero one, which is still a valid header.
    let _ = crate::tls::provider().secure_random.fill(&mut ids);
    if ids[..16].iter().all(|b| *b == 0) {
        ids[15] = 1;
    }
    if ids[16..].iter().all(|b| *b == 0) {
        ids[23] = 1;
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let value = format!("00-{}-{}-00", hex(&ids[..16]), hex(&ids[16..]));
    HeaderValue::try_from(value).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips_v4_and_v6() {
        for ip in ["10.244.1.2", "fd00::5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(
            forwarded_for("fd00::5".parse().unwrap()),
            "for=\"[fd00::5]\""
        );
        let proxied = HeaderValue::from_static("proto=https;for=192.0.2.60;by=203.0.113.43");
        assert_eq!(
            parse_forwarded_for(&proxied),
            Some("192.0.2.60".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_for(&HeaderValue::from_static("for=unknown")),
            None
        );
    }

    #[test]
    fn baggage_round_trips_in_istio_form() {
        let baggage = Baggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("shop".into()),
            workload: Some(("deployment".into(), "web".into())),
            service: Some("web".into()),
            revision: Some("v1".into()),
        };
        let header = baggage.to_header().unwrap();
        assert_eq!(
            header,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1"
        );
        assert_eq!(Baggage::parse(&header), baggage);
        assert_eq!(Baggage::default().to_header(), None);
    }

    #[test]
    fn traceparents_are_well_formed_and_distinct() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.to_str().unwrap().split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
    }
}
