//! `helm install` of deploy/chart, unchanged from what users get, on a two-node cluster
//! whose nodes run pods: the ztunnel and istio-cni DaemonSets become Ready on both nodes,
//! istio-cni chains its plugin into each node's CNI configuration, and pods created
//! afterwards pass through it. Then the user's story: `kubectl label namespace shop
//! istio.io/dataplane-mode=ambient` captures the pods that were there (by the agent) and
//! the pods created after (through the chained plugin), and traffic between the nodes
//! becomes mutual TLS.

use std::time::Duration;

use mesh_tests::eventually::eventually;
use mesh_tests::kube_nodes::{KubeCluster, mesh_images};

/// How long the DaemonSets may take to be Ready on every node, from `helm install`.
const READY_WITHIN: Duration = Duration::from_secs(120);

const SHOP: &str = r#"
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
      # http-echo, as its container's PID 1, ignores SIGTERM: the grace period ends it.
      terminationGracePeriodSeconds: 3
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: web
        image: example.com/mesh-testapp:1
        args: [http-echo, --listen, "0.0.0.0:8080"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

#[test]
fn helm_install_runs_the_mesh_on_every_node() {
    let kube =
        KubeCluster::start(&["n1", "n2"], mesh_images().unwrap()).expect("starting the cluster");
    kube.install_mesh(READY_WITHIN)
        .unwrap_or_else(|err| panic!("{err}"));
    for daemonset in ["ztunnel", "istio-cni-node"] {
        let status = kube.jsonpath(
            &["get", "daemonset", daemonset, "-n", "istio-system"],
            "{.status.desiredNumberScheduled}/{.status.numberReady}",
        );
        assert_eq!(status, "2/2", "{daemonset}");
    }
    let wide = kube
        .kubectl(&["get", "pods", "-n", "istio-system", "-o", "wide"])
        .unwrap();
    for (app, node) in [
        ("ztunnel", "n1"),
        ("ztunnel", "n2"),
        ("istio-cni-node", "n1"),
        ("istio-cni-node", "n2"),
    ] {
        assert!(
            wide.lines().any(|row| row.starts_with(app)
                && row.split_whitespace().any(|column| column == node)
                && row.contains("Running")),
            "{app} on {node}:\n{wide}"
        );
    }

    // istio-cni installed itself into each node's CNI configuration (its hostPath volumes
    // are the node's own directories).
    for node in ["n1", "n2"] {
        let root = kube.host_root(node);
        let conflist: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("etc/cni/net.d/10-k8s.conflist")).unwrap(),
        )
        .unwrap();
        let types: Vec<&str> = conflist["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|plugin| plugin["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "istio-cni"], "{node}: {conflist}");
        assert!(root.join("opt/cni/bin/istio-cni").exists(), "{node}");
    }

    // Pods created now pass through the chained plugin (the agent hears of each one).
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(SHOP))
        .unwrap();
    kube.wait_deployment_ready("shop", "web", 2, READY_WITHIN)
        .unwrap();
    let webs = pods(&kube, "app=web");
    assert_eq!(webs.len(), 2, "{webs:?}");
    for (pod, _, _) in &webs {
        assert_eq!(capture_rules(&kube, pod), 0, "{pod} is not captured yet");
    }

    kube.kubectl(&[
        "label",
        "namespace",
        "shop",
        "istio.io/dataplane-mode=ambient",
    ])
    .unwrap();
    // Pods that existed: the agent captures them.
    eventually("the existing pods to be captured", READY_WITHIN, || {
        for (pod, _, _) in &webs {
            if capture_rules(&kube, pod) == 0 {
                return Err(format!("{pod} not captured"));
            }
        }
        Ok(())
    })
    .unwrap();
    // A pod created now: the chained plugin hands it to its node's agent at CNI ADD.
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(CLIENT))
        .unwrap();
    kube.wait_deployment_ready("shop", "client", 1, READY_WITHIN)
        .unwrap();
    let (client, client_node, _) = pods(&kube, "app=client").remove(0);
    assert!(
        capture_rules(&kube, &client) > 0,
        "{client} captured at start"
    );
    let agent = pods_in(&kube, "istio-system", "app=istio-cni-node")
        .into_iter()
        .find(|(_, node, _)| *node == client_node)
        .unwrap()
        .0;
    let agent_logs = kube
        .kubectl(&["logs", "-n", "istio-system", &agent])
        .unwrap();
    assert!(
        agent_logs
            .lines()
            .any(|line| line.contains("CNI ADD") && line.contains(&format!("shop/{client}"))),
        "the plugin reported {client}:\n{agent_logs}"
    );

    // Client to the web pod on the other node: mutual TLS between the ztunnels, as the
    // server node's ztunnel metrics say.
    let (web, web_node, web_ip) = webs
        .iter()
        .find(|(_, node, _)| *node != client_node)
        .cloned()
        .unwrap();
    // From the client (kubectl exec curl): a GET of `url`; of the web pod on the other node.
    let client_get = |url: &str| {
        kube.kubectl(&[
            "exec",
            "-n",
            "shop",
            &client,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            url,
        ])
    };
    let get_web = || client_get(&format!("http://{web_ip}:8080/"));
    eventually("cross-node traffic to be mutual TLS", READY_WITHIN, || {
        let reply = get_web().map_err(|err| err.to_string())?;
        if !reply.contains(&web) {
            return Err(format!("reply: {reply}"));
        }
        let node = kube.cluster().node(&web_node);
        let metrics = node
            .exec(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "5",
                    &format!("http://{}:15020/metrics", node.underlay_ip()),
                ],
            )
            .map_err(|err| err.to_string())?;
        String::from_utf8_lossy(&metrics.stdout)
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/default\"")
                    // Istio's workload names: the Deployments, not the pods.
                    && l.contains("source_workload=\"client\"")
                    && l.contains("destination_workload=\"web\"")
            })
            .map(|_| ())
            .ok_or_else(|| "no mutual TLS connection in the metrics yet".to_string())
    })
    .unwrap();
    // The Service's VIP (no kube-proxy here: the client's ztunnel resolves it to a ready
    // endpoint from the real EndpointSlice controller's slice).
    let vip = kube.jsonpath(
        &["get", "service", "web", "-n", "shop"],
        "{.spec.clusterIP}",
    );
    let via_vip = client_get(&format!("http://{vip}:80/")).unwrap();
    assert!(
        webs.iter()
            .any(|(name, _, _)| via_vip.contains(name.as_str())),
        "{via_vip}"
    );
    let all_pods: Vec<String> = [&webs[0].0, &webs[1].0, &client]
        .map(String::clone)
        .to_vec();

    // Restarting either DaemonSet is a handover: the pods stay captured throughout, and
    // new connections work once the rollout is done.
    for daemonset in ["daemonset/ztunnel", "daemonset/istio-cni-node"] {
        kube.kubectl(&["rollout", "restart", daemonset, "-n", "istio-system"])
            .unwrap();
        kube.kubectl(&[
            "rollout",
            "status",
            daemonset,
            "-n",
            "istio-system",
            "--timeout=180s",
        ])
        .unwrap_or_else(|err| panic!("{err}\n{}", kube.agent_logs()));
        for pod in &all_pods {
            assert!(
                capture_rules(&kube, pod) > 0,
                "{pod} still captured after restarting {daemonset}"
            );
        }
        eventually(
            format!("new connections after restarting {daemonset}"),
            READY_WITHIN,
            || {
                let reply = get_web().map_err(|err| err.to_string())?;
                if reply.contains(&web) {
                    Ok(())
                } else {
                    Err(reply)
                }
            },
        )
        .unwrap();
    }

    // Deleting a captured pod (CNI DEL, then the object goes): its node's agent forgets it.
    let (doomed, doomed_node, _) = webs
        .iter()
        .find(|(name, _, _)| *name != web)
        .cloned()
        .unwrap();
    let doomed_uid = kube.jsonpath(&["get", "pod", &doomed, "-n", "shop"], "{.metadata.uid}");
    kube.kubectl(&["delete", "pod", &doomed, "-n", "shop", "--wait=true"])
        .unwrap();
    let agent = pods_in(&kube, "istio-system", "app=istio-cni-node")
        .into_iter()
        .find(|(_, node, _)| *node == doomed_node)
        .unwrap()
        .0;
    eventually("the agent to forget the deleted pod", READY_WITHIN, || {
        let logs = kube
            .kubectl(&["logs", "-n", "istio-system", &agent])
            .map_err(|err| err.to_string())?;
        if logs.lines().any(|line| {
            line.contains(&format!("pod={doomed_uid}"))
                && (line.contains("pod released") || line.contains("pod namespace gone"))
        }) {
            Ok(())
        } else {
            Err(format!("{doomed} ({doomed_uid}) still known:\n{logs}"))
        }
    })
    .unwrap();
    kube.wait_deployment_ready("shop", "web", 2, READY_WITHIN)
        .unwrap();
    let mut all_pods: Vec<String> = pods(&kube, "app=web")
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    all_pods.push(client.clone());
    eventually("the replacement to be captured", READY_WITHIN, || {
        for pod in &all_pods {
            if capture_rules(&kube, pod) == 0 {
                return Err(format!("{pod} not captured"));
            }
        }
        Ok(())
    })
    .unwrap();

    // helm uninstall: istio-cni sees its DaemonSet gone, releases every pod and takes its
    // plugin out of each node's configuration; traffic flows plain again.
    kube.helm(&[
        "uninstall",
        "ambient-mesh",
        "--namespace",
        "istio-system",
        "--wait",
    ])
    .unwrap();
    eventually("every pod released", READY_WITHIN, || {
        for pod in &all_pods {
            if capture_rules(&kube, pod) > 0 {
                return Err(format!("{pod} still has rules"));
            }
        }
        Ok(())
    })
    .unwrap();
    for node in ["n1", "n2"] {
        let root = kube.host_root(node);
        let conflist = std::fs::read_to_string(root.join("etc/cni/net.d/10-k8s.conflist")).unwrap();
        assert!(!conflist.contains("istio-cni"), "{node}: {conflist}");
        assert!(
            !root.join("opt/cni/bin/istio-cni").exists(),
            "{node}: plugin binary removed"
        );
    }
    let reply = get_web().unwrap();
    assert!(
        reply.contains(&web),
        "plain traffic after the uninstall: {reply}"
    );
}

const CLIENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: client
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels: {app: client}
  template:
    metadata:
      labels: {app: client}
    spec:
      containers:
      - name: client
        image: example.com/mesh-testapp:1
        args: [tcp-echo]
"#;

/// The pods with `selector` in shop: (name, node, IP).
fn pods(kube: &KubeCluster, selector: &str) -> Vec<(String, String, String)> {
    pods_in(kube, "shop", selector)
}

fn pods_in(kube: &KubeCluster, namespace: &str, selector: &str) -> Vec<(String, String, String)> {
    kube.jsonpath(
        &["get", "pods", "-n", namespace, "-l", selector],
        r#"{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}"#,
    )
    .lines()
    .filter_map(|line| {
        let mut fields = line.split(' ').map(str::to_string);
        Some((fields.next()?, fields.next()?, fields.next()?))
    })
    .collect()
}

/// How many of the mesh's capture chains the pod's network namespace has (0: not
/// captured), read with iptables inside the pod (an exec that fails is retried, never
/// taken for 0).
fn capture_rules(kube: &KubeCluster, pod: &str) -> usize {
    let mut last = String::new();
    for _ in 0..5 {
        match kube.kubectl(&[
            "exec",
            "-n",
            "shop",
            pod,
            "--",
            "iptables-nft-save",
            "-t",
            "nat",
        ]) {
            Ok(saved) => return saved.matches("ISTIO_OUTPUT").count(),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("reading {pod}'s rules: {last}");
}
