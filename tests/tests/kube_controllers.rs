//! The real controllers and scheduler act on the test control plane: a Deployment becomes
//! a ReplicaSet and pods bound to nodes, a DaemonSet puts a pod on every node, a new
//! namespace gets its `default` ServiceAccount and CA bundle, a Service's ready pods land
//! in its EndpointSlice. No node agent runs yet, so the test registers the Nodes and, for
//! the EndpointSlice, reports the pods' status itself.

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_tests::eventually::eventually;
use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};

const WAIT: Duration = Duration::from_secs(90);

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let output = plane
        .kubectl(ADMIN_TOKEN, args, stdin)
        .map_err(|err| err.to_string())?;
    if output.success {
        Ok(output.stdout)
    } else {
        Err(format!("kubectl {}: {}", args.join(" "), output.stderr))
    }
}

fn jsonpath(plane: &ControlPlane, args: &[&str], path: &str) -> Result<String, String> {
    let format = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &format]);
    kubectl(plane, &all, None)
}

/// A Node as a kubelet registers it: Ready, with room for pods.
fn register_node(plane: &ControlPlane, name: &str) {
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n"
    );
    kubectl(plane, &["create", "-f", "-"], Some(&node)).unwrap();
    let now = "2026-01-01T00:00:00Z";
    let status = serde_json::json!({
        "status": {
            "capacity": { "cpu": "2", "memory": "8Gi", "pods": "110" },
            "allocatable": { "cpu": "2", "memory": "8Gi", "pods": "110" },
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
        }
    });
    patch_status(plane, &["node", name], &status);
}

/// Sets an object's status, as the component that owns it would (`what`: kind, name and
/// any namespace flags).
fn patch_status(plane: &ControlPlane, what: &[&str], status: &serde_json::Value) {
    let patch = status.to_string();
    let mut args = vec!["patch"];
    args.extend(what);
    args.extend(["--subresource=status", "--type=merge", "-p", &patch]);
    kubectl(plane, &args, None).unwrap();
}

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: mesh-testapp
        args: [tcp-echo, --port, "8080"]
        ports: [{containerPort: 8080}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: shop
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: mesh-testapp
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{name: tcp-echo, port: 80, targetPort: 8080}]
"#;

/// `name node` of each pod with label `app`, once every one is bound to a node.
fn bound_pods(
    plane: &ControlPlane,
    app: &str,
    count: usize,
) -> Result<Vec<(String, String)>, String> {
    let text = jsonpath(
        plane,
        &["get", "pods", "-n", "shop", "-l", &format!("app={app}")],
        "{range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    )?;
    let pods: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, node)| (name.to_string(), node.trim().to_string()))
        .collect();
    if pods.len() != count || pods.iter().any(|(_, node)| node.is_empty()) {
        return Err(format!("pods of {app}: {text:?}"));
    }
    Ok(pods)
}

#[test]
fn the_real_controllers_and_scheduler_run_workloads() {
    let mut plane = ControlPlane::start().expect("starting etcd and kube-apiserver");
    plane
        .start_controllers()
        .expect("starting kube-controller-manager and kube-scheduler");
    for node in ["node-1", "node-2"] {
        register_node(&plane, node);
    }
    kubectl(&plane, &["apply", "-f", "-"], Some(WORKLOADS)).unwrap();

    // The ServiceAccount and root-CA publishers act on the new namespace.
    eventually("shop's default ServiceAccount and CA bundle", WAIT, || {
        kubectl(
            &plane,
            &["get", "serviceaccount", "default", "-n", "shop"],
            None,
        )?;
        let ca = jsonpath(
            &plane,
            &["get", "configmap", "kube-root-ca.crt", "-n", "shop"],
            "{.data.ca\\.crt}",
        )?;
        ca.contains("BEGIN CERTIFICATE")
            .then_some(())
            .ok_or(format!("kube-root-ca.crt holds {ca:?}"))
    })
    .unwrap();

    // Deployment -> ReplicaSet -> 2 pods, each bound by the scheduler.
    let web = eventually("the Deployment's pods bound to nodes", WAIT, || {
        bound_pods(&plane, "web", 2)
    })
    .unwrap();
    let owner = jsonpath(
        &plane,
        &["get", "pod", &web[0].0, "-n", "shop"],
        "{.metadata.ownerReferences[0].kind}",
    )
    .unwrap();
    assert_eq!(
        owner, "ReplicaSet",
        "the pod was made by the ReplicaSet controller"
    );

    // DaemonSet: one pod on each node.
    let agents = eventually("a DaemonSet pod on every node", WAIT, || {
        bound_pods(&plane, "agent", 2)
    })
    .unwrap();
    let nodes: BTreeSet<&str> = agents.iter().map(|(_, node)| node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-1", "node-2"]), "{agents:?}");

    // With no kubelet yet, the test reports the web pods running and ready; the
    // EndpointSlice controller then lists exactly their addresses.
    let now = "2026-01-01T00:00:00Z";
    let mut ips = BTreeSet::new();
    for (i, (pod, _)) in web.iter().enumerate() {
        let ip = format!("10.244.{}.10", i + 1);
        let status = serde_json::json!({
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{ "ip": ip }],
                "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }],
            }
        });
        patch_status(&plane, &["pod", pod, "-n", "shop"], &status);
        ips.insert(ip);
    }
    eventually(
        "the Service's EndpointSlice to list both pods",
        WAIT,
        || {
            let text = jsonpath(
                &plane,
                &[
                    "get",
                    "endpointslices",
                    "-n",
                    "shop",
                    "-l",
                    "kubernetes.io/service-name=web",
                ],
                "{range .items[*].endpoints[*]}{.addresses[0]} {.conditions.ready}{\"\\n\"}{end}",
            )?;
            let listed: BTreeSet<String> = text
                .lines()
                .filter_map(|line| line.strip_suffix(" true"))
                .map(str::to_string)
                .collect();
            (listed == ips)
                .then_some(())
                .ok_or(format!("EndpointSlice endpoints: {text:?}"))
        },
    )
    .unwrap();
}
