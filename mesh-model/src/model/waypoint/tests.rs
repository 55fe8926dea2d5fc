//! Waypoint binding as a table: each row a cluster change and what binds where, checked
//! through the whole translation (Gateway -> waypoint, labels -> binding).

use std::path::Path;

use crate::config::{ConfigStore, parse_documents};
use crate::model::{Settings, translate};

/// Namespace `shop` uses waypoint `shop-wp` (service traffic by default); `other` has its
/// own; `wl` is for workloads only, `both` for all, `closed` admits no other namespace.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: shop-wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{type: IPAddress, value: 10.96.0.100}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{type: IPAddress, value: 10.96.0.101}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: both, namespace: other, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: All}}
status: {addresses: [{type: Hostname, value: both.other.svc.cluster.local}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: closed, namespace: other, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{type: IPAddress, value: 10.96.0.103}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: shop-wp-1
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: shop-wp}
spec: {nodeName: n1, containers: [{name: istio-proxy}]}
status: {phase: Running, podIP: 10.244.1.9}
---
apiVersion: v1
kind: Service
metadata:
  name: shop-wp
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: shop-wp, gateway.istio.io/managed: istio.io-mesh-controller}
spec: {clusterIP: 10.96.0.100, selector: {gateway.networking.k8s.io/gateway-name: shop-wp}, ports: [{port: 15008}]}
"#;

/// Changes the base: `pod` / `service` labels of web (merged as YAML flow maps), the
/// namespace's labels, or extra documents.
struct Row {
    what: &'static str,
    pod_labels: &'static str,
    service_labels: &'static str,
    namespace_labels: Option<&'static str>,
    extra: &'static str,
    /// The Gateway the Service binds to (`namespace/name`), if any.
    service: Option<&'static str>,
    /// The Gateway the pod binds to, if any.
    pod: Option<&'static str>,
}

const ROWS: &[Row] = &[
    Row {
        what: "namespace label: services bind to the service waypoint, pods do not (service-only)",
        pod_labels: "",
        service_labels: "",
        namespace_labels: None,
        extra: "",
        service: Some("shop/shop-wp"),
        pod: None,
    },
    Row {
        what: "the pod's own label to a workload waypoint",
        pod_labels: "istio.io/use-waypoint: wl",
        service_labels: "",
        namespace_labels: None,
        extra: "",
        service: Some("shop/shop-wp"),
        pod: Some("shop/wl"),
    },
    Row {
        what: "the service's own label wins over the namespace's",
        pod_labels: "",
        service_labels: "istio.io/use-waypoint: both, istio.io/use-waypoint-namespace: other",
        namespace_labels: None,
        extra: "",
        service: Some("other/both"),
        pod: None,
    },
    Row {
        what: "none on the service opts out of the namespace's waypoint",
        pod_labels: "",
        service_labels: "istio.io/use-waypoint: none",
        namespace_labels: None,
        extra: "",
        service: None,
        pod: None,
    },
    Row {
        what: "waypoint-for mismatch: a service on a workload-only waypoint gets none, no fallback to the namespace's",
        pod_labels: "",
        service_labels: "istio.io/use-waypoint: wl",
        namespace_labels: None,
        extra: "",
        service: None,
        pod: None,
    },
    Row {
        what: "waypoint-for mismatch: a pod on the namespace's service-only waypoint gets none",
        pod_labels: "istio.io/use-waypoint: shop-wp",
        service_labels: "",
        namespace_labels: None,
        extra: "",
        service: Some("shop/shop-wp"),
        pod: None,
    },
    Row {
        what: "cross-namespace: admitted by allowedRoutes from All, for both targets (waypoint-for all)",
        pod_labels: "istio.io/use-waypoint: both, istio.io/use-waypoint-namespace: other",
        service_labels: "",
        namespace_labels: Some(
            "istio.io/use-waypoint: both, istio.io/use-waypoint-namespace: other",
        ),
        extra: "",
        service: Some("other/both"),
        pod: Some("other/both"),
    },
    Row {
        what: "cross-namespace: refused by a listener that admits only its own namespace",
        pod_labels: "istio.io/use-waypoint: closed, istio.io/use-waypoint-namespace: other",
        service_labels: "istio.io/use-waypoint: closed, istio.io/use-waypoint-namespace: other",
        namespace_labels: None,
        extra: "",
        service: None,
        pod: None,
    },
    Row {
        what: "not ready: a Gateway without an address is not a waypoint yet",
        pod_labels: "",
        service_labels: "istio.io/use-waypoint: pending",
        namespace_labels: None,
        extra: "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: pending, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n",
        service: None,
        pod: None,
    },
    Row {
        what: "not a waypoint: a Gateway of another class, even with an address",
        pod_labels: "",
        service_labels: "istio.io/use-waypoint: ingress",
        namespace_labels: None,
        extra: "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\nstatus: {addresses: [{value: 10.96.0.50}]}\n",
        service: None,
        pod: None,
    },
    Row {
        what: "the class's waypoint-for is the Gateway's default",
        pod_labels: "istio.io/use-waypoint: classy",
        service_labels: "",
        namespace_labels: None,
        extra: "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: all}}\nspec: {controllerName: istio.io/mesh-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: classy, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\nstatus: {addresses: [{value: 10.96.0.104}]}\n",
        service: Some("shop/shop-wp"),
        pod: Some("shop/classy"),
    },
];

fn render(row: &Row) -> String {
    let mut yaml = BASE
        .replace(
            "metadata: {name: web, namespace: shop, labels: {app: web}}",
            &format!(
                "metadata: {{name: web, namespace: shop, labels: {{app: web{}}}}}",
                prefixed(row.pod_labels)
            ),
        )
        .replace(
            "metadata: {name: web, namespace: shop}\nspec: {clusterIP",
            &format!(
                "metadata: {{name: web, namespace: shop, labels: {{{}}}}}\nspec: {{clusterIP",
                row.service_labels
            ),
        );
    if let Some(labels) = row.namespace_labels {
        yaml = yaml.replace(
            "labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: shop-wp}",
            &format!("labels: {{istio.io/dataplane-mode: ambient, {labels}}}"),
        );
    }
    if !row.extra.is_empty() {
        yaml = format!("{yaml}---\n{}", row.extra);
    }
    yaml
}

fn prefixed(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!(", {labels}")
    }
}

fn store(yaml: &str) -> ConfigStore {
    parse_documents(Path::new("binding.yaml"), yaml)
        .valid()
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn binding_follows_istios_precedence() {
    for row in ROWS {
        let plane = translate(&store(&render(row)), &Settings::new("cluster.local"));
        let service = plane.service("10.96.0.10".parse().unwrap()).unwrap();
        let pod = plane.workload("10.244.1.2".parse().unwrap()).unwrap();
        let name =
            |w: &Option<std::sync::Arc<super::Waypoint>>| w.as_ref().map(|w| w.gateway.to_string());
        assert_eq!(
            name(&service.waypoint).as_deref(),
            row.service,
            "service: {}",
            row.what
        );
        assert_eq!(name(&pod.waypoint).as_deref(), row.pod, "pod: {}", row.what);
    }
}

#[test]
fn waypoints_are_never_bound_or_captured_themselves() {
    let plane = translate(&store(BASE), &Settings::new("cluster.local"));
    let instance = plane.workload("10.244.1.9".parse().unwrap()).unwrap();
    assert!(
        !instance.captured,
        "in an ambient namespace, still not captured"
    );
    assert!(instance.waypoint.is_none());
    assert_eq!(
        instance
            .waypoint_of
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("shop/shop-wp")
    );
    let own_service = plane.service("10.96.0.100".parse().unwrap()).unwrap();
    assert!(
        own_service.waypoint.is_none(),
        "the namespace's label does not bind the waypoint's own Service"
    );
}

#[test]
fn addresses_prefer_a_hostname() {
    let plane = translate(&store(BASE), &Settings::new("cluster.local"));
    let address = |ns: &str, name: &str| {
        plane.waypoints[&crate::model::NamespacedName::new(ns, name)]
            .address
            .clone()
    };
    assert_eq!(
        address("other", "both"),
        super::WaypointAddress::Hostname("both.other.svc.cluster.local".into())
    );
    assert_eq!(
        address("shop", "shop-wp"),
        super::WaypointAddress::Ip("10.96.0.100".parse().unwrap())
    );
}
