use std::path::Path;

use super::*;
use crate::config::parse_documents;

fn settings() -> Settings {
    Settings::new("cluster.local")
}

fn store(yaml: &str) -> ConfigStore {
    parse_documents(Path::new("test.yaml"), yaml)
        .valid()
        .unwrap()
        .into_iter()
        .collect()
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
    let plane = translate(&store(CLUSTER), &settings());
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

/// A pod at `ip` owned by `kind/name` (or by nothing).
fn owned_pod(pod: &str, ip: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> String {
    let owner = owner.map_or(String::new(), |(kind, name)| {
        format!(", ownerReferences: [{{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: u-{name}, controller: true}}]")
    });
    let labels = hash.map_or(String::new(), |hash| {
        format!(", labels: {{pod-template-hash: '{hash}'}}")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: shop{owner}{labels}}}\n\
         spec: {{nodeName: n1, containers: [{{name: app}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
    )
}

#[test]
fn a_pods_workload_is_its_controller_as_istio_names_it() {
    let yaml = [
        owned_pod(
            "web-7d4b9c-x2x",
            "10.244.1.2",
            Some(("ReplicaSet", "web-7d4b9c")),
            Some("7d4b9c"),
        ),
        owned_pod(
            "bare-rs-q",
            "10.244.1.3",
            Some(("ReplicaSet", "bare-rs")),
            None,
        ),
        owned_pod(
            "ztunnel-abcde",
            "10.244.1.4",
            Some(("DaemonSet", "ztunnel")),
            None,
        ),
        owned_pod("db-0", "10.244.1.5", Some(("StatefulSet", "db")), None),
        owned_pod(
            "report-28890720-k",
            "10.244.1.6",
            Some(("Job", "report-28890720")),
            None,
        ),
        owned_pod("migrate-x", "10.244.1.7", Some(("Job", "migrate")), None),
        owned_pod("lonely", "10.244.1.8", None, None),
    ]
    .concat();
    let plane = translate(&store(&yaml), &settings());
    for (ip, kind, name) in [
        ("10.244.1.2", "deployment", "web"),
        ("10.244.1.3", "replicaset", "bare-rs"),
        ("10.244.1.4", "daemonset", "ztunnel"),
        ("10.244.1.5", "statefulset", "db"),
        ("10.244.1.6", "cronjob", "report"),
        ("10.244.1.7", "job", "migrate"),
        ("10.244.1.8", "pod", "lonely"),
    ] {
        let workload = plane.workload(ip.parse().unwrap()).unwrap();
        assert_eq!(
            (workload.owner.kind.as_str(), workload.owner.name.as_str()),
            (kind, name),
            "{}",
            workload.name
        );
    }
}

#[test]
fn services_resolve_ports_and_endpoints_by_selector() {
    let plane = translate(&store(CLUSTER), &settings());
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
    let plane = translate(&store(&yaml), &settings());
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
    let plane = translate(&store(&unlabeled), &settings());
    assert!(plane.workloads_by_ip.values().all(|w| !w.captured));
}

/// A change to apply to the store: documents to insert, keys to remove.
fn apply(store: &mut ConfigStore, yaml: &str, remove: &[(&'static str, &str, &str)]) {
    for object in parse_documents(Path::new("change.yaml"), yaml)
        .valid()
        .unwrap()
    {
        store.insert(object);
    }
    for (kind, namespace, name) in remove {
        store.remove(&ObjectKey {
            kind,
            namespace: (*namespace).into(),
            name: (*name).into(),
        });
    }
}

#[test]
fn incremental_updates_equal_a_full_build_after_every_change() {
    let mut store = store(CLUSTER);
    let mut translator = Translator::new(settings());
    assert_eq!(*translator.update(&store), translate(&store, &settings()));
    type Removed = &'static [(&'static str, &'static str, &'static str)];
    let steps: &[(&str, &str, Removed)] = &[
        (
            "a new pod the service selects",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: shop, labels: {app: web}}\nspec: {nodeName: n2, containers: [{name: app, ports: [{name: metrics, containerPort: 9102}]}]}\nstatus: {phase: Running, podIP: 10.244.2.9}\n",
            &[],
        ),
        (
            "a pod's labels change so the service drops it",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: other}}\nspec: {nodeName: n1, serviceAccountName: web-sa, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}\n",
            &[],
        ),
        ("a pod is deleted", "", &[("Pod", "shop", "opted-out")]),
        (
            "a service without a selector and its slice",
            "apiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: shop}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: manual-1, namespace: shop, labels: {kubernetes.io/service-name: manual}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.2.9]}]\n",
            &[],
        ),
        (
            "the slice moves to another pod",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: manual-1, namespace: shop, labels: {kubernetes.io/service-name: manual}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.2]}]\n",
            &[],
        ),
        (
            "the pod the slice names is deleted",
            "",
            &[("Pod", "shop", "web")],
        ),
        (
            "a service's selector changes",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: old}, ports: [{port: 80}]}\n",
            &[],
        ),
        (
            "a policy appears",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
            &[],
        ),
        (
            "the namespace leaves the mesh (a full rebuild)",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
            &[],
        ),
        ("a service is deleted", "", &[("Service", "shop", "web")]),
    ];
    for (what, yaml, remove) in steps {
        apply(&mut store, yaml, remove);
        let incremental = translator.update(&store);
        assert_eq!(
            *incremental,
            translate(&store, &settings()),
            "after: {what}"
        );
    }
}

#[test]
fn an_unchanged_store_returns_the_same_model() {
    let store = store(CLUSTER);
    let mut translator = Translator::new(settings());
    let first = translator.update(&store);
    let copy = store.clone();
    assert!(Arc::ptr_eq(&first, &translator.update(&copy)));
}

#[test]
fn hostnames_use_the_configured_cluster_domain() {
    let settings = Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "corp.example".into(),
    };
    let plane = translate(&store(CLUSTER), &settings);
    let web = plane
        .service_by_hostname("web.shop.svc.corp.example")
        .unwrap();
    assert_eq!(web.vips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert!(
        plane
            .service_by_hostname("web.shop.svc.cluster.local")
            .is_none()
    );
}
