//! `mesh-demo --kubernetes`: the demo's story on a Kubernetes cluster. Kubernetes runs
//! everything: the scheduler places the pods, each node's mesh-node-agent runs them
//! (network from the node's CNI configuration), `helm install` of deploy/chart puts
//! ztunnel and istio-cni on every node, and `kubectl label namespace` enrolls the shop.

use std::time::Duration;

use anyhow::Context;
use mesh_tests::eventually;
use mesh_tests::kube_nodes::{KubeCluster, TESTAPP_IMAGE, mesh_images};

const WAIT: Duration = Duration::from_secs(120);

/// The applications, as a user writes them.
fn workloads() -> String {
    let deployment = |namespace: &str, name: &str, account: &str, node: &str| {
        format!(
            r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {account}, namespace: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      serviceAccountName: {account}
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
      - name: app
        image: {TESTAPP_IMAGE}
        args: [http-echo, --listen, "0.0.0.0:8080"]
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
---"#
        )
    };
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---".to_string(),
        deployment("shop", "client", "web", "node-1"),
        deployment("shop", "model-server", "inference", "node-2"),
        deployment("legacy", "legacy", "legacy", "node-2"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: model-server, namespace: shop}\n\
         spec:\n  selector: {app: model-server}\n  ports: [{port: 80, targetPort: 8080}]"
            .to_string(),
    ]
    .join("\n")
}

fn show(kube: &KubeCluster, title: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("\n$ kubectl {}    # {title}", args.join(" "));
    for line in kube.kubectl(args)?.lines() {
        println!("  {line}");
    }
    Ok(())
}

fn pod(kube: &KubeCluster, namespace: &str, app: &str, field: &str) -> anyhow::Result<String> {
    let path = format!("jsonpath={{.items[0].{field}}}");
    Ok(kube.kubectl(&[
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        &format!("app={app}"),
        "-o",
        &path,
    ])?)
}

fn get(kube: &KubeCluster, from: (&str, &str), url: &str) -> anyhow::Result<String> {
    let name = pod(kube, from.0, from.1, "metadata.name")?;
    Ok(kube.kubectl(&[
        "exec",
        "-n",
        from.0,
        &name,
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        url,
    ])?)
}

pub(crate) fn demo(hold: bool) -> anyhow::Result<()> {
    println!("Starting Kubernetes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,");
    println!("and mesh-node-agent (a virtual-kubelet that runs pods) on node-1 and node-2 ...");
    let kube = KubeCluster::start(&["node-1", "node-2"], mesh_images()?)
        .context("starting the cluster")?;
    show(
        &kube,
        "the nodes registered themselves",
        &["get", "nodes", "-o", "wide"],
    )?;

    println!("\n$ helm install ambient-mesh deploy/chart --namespace istio-system");
    kube.install_mesh(WAIT).context("installing the mesh")?;
    show(
        &kube,
        "both DaemonSets, on both nodes",
        &["get", "pods", "-n", "istio-system", "-o", "wide"],
    )?;

    println!("\n$ kubectl apply -f -    # client and model-server in shop, legacy in legacy");
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(&workloads()))?;
    for (namespace, app) in [
        ("shop", "client"),
        ("shop", "model-server"),
        ("legacy", "legacy"),
    ] {
        eventually(
            format!("{namespace}/{app} to be ready"),
            WAIT,
            || match pod(&kube, namespace, app, "status.containerStatuses[0].ready") {
                Ok(ready) if ready == "true" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )?;
    }
    println!("\n$ kubectl label namespace shop istio.io/dataplane-mode=ambient");
    kube.kubectl(&[
        "label",
        "namespace",
        "shop",
        "istio.io/dataplane-mode=ambient",
    ])?;
    show(
        &kube,
        "scheduled by Kubernetes, networked by the nodes' CNI",
        &["get", "pods", "-n", "shop", "-o", "wide"],
    )?;

    let server_ip = pod(&kube, "shop", "model-server", "status.podIP")?;
    let legacy_ip = pod(&kube, "legacy", "legacy", "status.podIP")?;
    let server = format!("http://{server_ip}:8080/v1/models/resnet:predict");
    let node2 = kube.cluster().node("node-2");
    let metrics = || -> anyhow::Result<String> {
        let out = node2.exec(
            "curl",
            [
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}:15020/metrics", node2.underlay_ip()),
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    eventually("the shop's traffic to be mutual TLS", WAIT, || {
        get(&kube, ("shop", "client"), &server).map_err(|err| err.to_string())?;
        let metrics = metrics().map_err(|err| err.to_string())?;
        if metrics.contains("connection_security_policy=\"mutual_tls\"") {
            Ok(())
        } else {
            Err("not through the mesh yet".to_string())
        }
    })?;

    println!("\nHTTP between pods, with kubectl exec (the path follows namespace membership):");
    for (from, to, url, path) in [
        (
            ("shop", "client"),
            "shop/model-server",
            server.clone(),
            "mutual TLS (HBONE), node-1 -> node-2",
        ),
        (
            ("shop", "client"),
            "shop/model-server VIP",
            format!("http://{}:80/", service_ip(&kube)?),
            "through ztunnel's service resolution",
        ),
        (
            ("shop", "client"),
            "legacy/legacy",
            format!("http://{legacy_ip}:8080/"),
            "plain TCP (destination not in the mesh)",
        ),
        (
            ("legacy", "legacy"),
            "shop/model-server",
            server.clone(),
            "plaintext into the mesh (PERMISSIVE)",
        ),
    ] {
        let reply = get(&kube, from, &url)?;
        let answered = reply
            .split('"')
            .skip_while(|field| *field != "pod")
            .nth(2)
            .unwrap_or("?")
            .to_string();
        println!(
            "  {}/{} -> {to:<22} answered by {answered:<32} {path}",
            from.0, from.1
        );
    }
    println!("\nWhat proves it, from ztunnel's metrics on node-2 (:15020/metrics):");
    for line in metrics()?.lines().filter(|l| {
        l.starts_with("istio_tcp_connections_opened_total{") && l.contains("mutual_tls")
    }) {
        println!("  {line}");
    }
    if hold {
        let kubeconfig = kube.cluster().work_dir().join("admin.kubeconfig");
        kube.plane()
            .write_kubeconfig(&kubeconfig, mesh_tests::kube_control_plane::ADMIN_TOKEN)?;
        println!(
            "\nHolding the cluster; press Ctrl-C to remove it. The API server is reachable from node-1:"
        );
        println!(
            "  ip netns exec {} kubectl --kubeconfig {} get pods -A -o wide",
            kube.cluster().node("node-1").netns().name(),
            kubeconfig.display()
        );
        loop {
            std::thread::park();
        }
    }
    Ok(())
}

fn service_ip(kube: &KubeCluster) -> anyhow::Result<String> {
    Ok(kube.kubectl(&[
        "get",
        "service",
        "model-server",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?)
}
