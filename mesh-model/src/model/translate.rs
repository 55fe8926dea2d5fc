//! Configuration objects to the data-plane model: a pure function, rebuilt in full on
//! every change (cheap at one machine's scale; an incremental version can replace it
//! behind the same signature).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{DataPlane, Service, ServicePort, TargetPort, Workload};
use crate::config::ConfigStore;
use mesh_core::identity::Identity;

/// The label that puts a namespace (or overrides a pod) in or out of the mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Builds the data plane from `store` for trust domain `trust_domain`.
///
/// Pods without an IP, not running, on the host network, or whose service account does
/// not make a valid identity are left out (with a log line), never a panic.
pub fn translate(store: &ConfigStore, trust_domain: &str) -> DataPlane {
    let mut plane = DataPlane::default();
    let mut workloads = Vec::new();
    for pod in store.pods() {
        let Some(workload) = workload(store, pod, trust_domain) else {
            continue;
        };
        let workload = Arc::new(workload);
        for ip in &workload.ips {
            plane.workloads_by_ip.insert(*ip, workload.clone());
        }
        workloads.push(workload);
    }
    for service in store.services() {
        let Some(service) = translate_service(store, service, &workloads) else {
            continue;
        };
        let service = Arc::new(service);
        for vip in &service.vips {
            plane.services_by_vip.insert(*vip, service.clone());
        }
    }
    plane.authorization_policies = store.authorization_policies().cloned().collect();
    plane.peer_authentications = store.peer_authentications().cloned().collect();
    plane
}

fn workload(store: &ConfigStore, pod: &core::Pod, trust_domain: &str) -> Option<Workload> {
    let meta = &pod.metadata;
    let (name, namespace) = (
        meta.name.clone()?,
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
    );
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let identity = match Identity::new(trust_domain, &namespace, &account) {
        Ok(identity) => identity,
        Err(err) => {
            tracing::warn!(pod = %name, %namespace, error = %err, "pod left out: no valid identity");
            return None;
        }
    };
    let labels = meta.labels.clone().unwrap_or_default();
    Some(Workload {
        captured: is_captured(store, &namespace, &labels),
        name,
        namespace,
        uid: meta.uid.clone(),
        identity,
        node: spec.node_name.clone().unwrap_or_default(),
        ips,
        labels,
    })
}

/// Ambient membership: a pod label `istio.io/dataplane-mode` decides (`none` opts out,
/// `ambient` opts in); otherwise the namespace's label does.
fn is_captured(
    store: &ConfigStore,
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    match pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => store
            .namespace(namespace)
            .and_then(|ns| ns.metadata.labels.as_ref())
            .and_then(|labels| labels.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|mode| mode == "ambient"),
    }
}

fn translate_service(
    store: &ConfigStore,
    service: &core::Service,
    workloads: &[Arc<Workload>],
) -> Option<Service> {
    let name = service.metadata.name.clone()?;
    let namespace = service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = service.spec.as_ref()?;
    let mut vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    vips.sort();
    vips.dedup();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Named(name.clone()),
                },
            };
            Some(ServicePort {
                port,
                target_port,
                name: p.name.clone(),
            })
        })
        .collect();
    let endpoints = match &spec.selector {
        Some(selector) if !selector.is_empty() => workloads
            .iter()
            .filter(|w| {
                w.namespace == namespace && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .cloned()
            .collect(),
        // No selector: the endpoints are whoever its EndpointSlices name (kept up by
        // hand or by another controller). Only mesh-known pods count; other addresses
        // are not routed through the service yet.
        _ => {
            let addresses = sliced_addresses(store, &namespace, &name);
            workloads
                .iter()
                .filter(|w| w.ips.iter().any(|ip| addresses.contains(ip)))
                .cloned()
                .collect()
        }
    };
    Some(Service {
        name,
        namespace,
        vips,
        ports,
        endpoints,
    })
}

/// The ready addresses of the EndpointSlices of Service `namespace/name`.
fn sliced_addresses(store: &ConfigStore, namespace: &str, name: &str) -> Vec<IpAddr> {
    store
        .endpoint_slices()
        .filter(|slice| {
            slice.metadata.namespace.as_deref() == Some(namespace)
                && slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|service| service == name)
        })
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true)
        })
        .flat_map(|endpoint| &endpoint.addresses)
        .filter_map(|address| address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_documents;

    fn store(yaml: &str) -> ConfigStore {
        let mut store = ConfigStore::default();
        for object in parse_documents(Path::new("test.yaml"), yaml)
            .valid()
            .unwrap()
        {
            store.insert(object);
        }
        store
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web-sa, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: shop, labels: {app: web, istio.io/dataplane-mode: none}}
spec: {nodeName: n2, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy, labels: {app: old}}
spec: {nodeName: n2, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.3}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}, {port: 9090, targetPort: metrics}, {port: 53, protocol: UDP}]
"#;

    #[test]
    fn pods_become_workloads_with_identity_and_membership() {
        let plane = translate(&store(CLUSTER), "cluster.local");
        let web = plane.workload("10.244.1.2".parse().unwrap()).unwrap();
        assert_eq!(
            web.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/web-sa"
        );
        assert_eq!(web.node, "n1");
        assert!(web.captured, "ambient namespace");
        let opted_out = plane.workload("10.244.2.2".parse().unwrap()).unwrap();
        assert!(!opted_out.captured, "pod label none wins");
        assert_eq!(opted_out.identity.service_account(), "default");
        assert!(
            !plane
                .workload("10.244.2.3".parse().unwrap())
                .unwrap()
                .captured,
            "unlabeled namespace"
        );
        assert_eq!(
            plane.workloads_by_ip.len(),
            3,
            "the pending pod has no IP yet"
        );
        assert_eq!(plane.workloads_on("n2").len(), 2);
    }

    #[test]
    fn services_resolve_ports_and_endpoints_by_selector() {
        let plane = translate(&store(CLUSTER), "cluster.local");
        let web = plane.service("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(web.hostname(), "web.shop.svc.cluster.local");
        assert_eq!(
            web.ports
                .iter()
                .map(|p| (p.port, p.target_port.clone()))
                .collect::<Vec<_>>(),
            [
                (80, TargetPort::Number(8080)),
                (9090, TargetPort::Named("metrics".into()))
            ],
            "UDP ports are not the L4 TCP proxy's"
        );
        let mut endpoints: Vec<&str> = web.endpoints.iter().map(|w| w.name.as_str()).collect();
        endpoints.sort();
        assert_eq!(endpoints, ["opted-out", "web"]);
    }

    #[test]
    fn services_without_a_selector_take_their_endpoint_slices_ready_pods() {
        let yaml = format!(
            "{CLUSTER}---
apiVersion: v1
kind: Service
metadata: {{name: manual, namespace: shop}}
spec: {{clusterIP: 10.96.0.11, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: manual-1, namespace: shop, labels: {{kubernetes.io/service-name: manual}}}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.2]
- addresses: [10.244.2.2]
  conditions: {{ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: other-1, namespace: shop, labels: {{kubernetes.io/service-name: other}}}}
addressType: IPv4
endpoints:
- addresses: [10.244.2.3]
"
        );
        let plane = translate(&store(&yaml), "cluster.local");
        let manual = plane.service("10.96.0.11".parse().unwrap()).unwrap();
        let endpoints: Vec<&str> = manual.endpoints.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            endpoints,
            ["web"],
            "ready, and named by this service's slices only"
        );
        let web = plane.service("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(
            web.endpoints.len(),
            2,
            "a selector still decides for its service"
        );
    }

    #[test]
    fn removing_the_namespace_label_releases_its_pods() {
        let unlabeled = CLUSTER.replace("labels: {istio.io/dataplane-mode: ambient}", "labels: {}");
        let plane = translate(&store(&unlabeled), "cluster.local");
        assert!(plane.workloads_by_ip.values().all(|w| !w.captured));
    }
}
