//! The L4 mesh with Kubernetes as the config source: a real kube-apiserver (on node n1,
//! reachable over the underlay), the harness playing kubelet, and the real istio-cni agent
//! and ztunnel binaries watching the API. Labeling the namespace through the API (what
//! `kubectl label` does) captures its pods; removing the label releases them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::cert::LocalCa;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::apps::workspace_binary;
use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};
use mesh_tests::{Cluster, Process, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn start(cluster: &Cluster, node: &str, kubeconfig: &str) -> Arc<Process> {
    let work = cluster.work_dir();
    let zds = work.join(format!("{node}-zds.sock")).display().to_string();
    let plugin = work.join(format!("{node}-cni.sock")).display().to_string();
    let netns = cluster.node(node).pod_netns_dir().display().to_string();
    let ca = work.join("ca").display().to_string();
    let source = [
        "--config-source",
        "kubernetes",
        "--kubeconfig",
        kubeconfig,
        "--node-name",
        node,
        "--zds-socket",
        &zds,
    ];
    let agent_args = [
        &source[..],
        &[
            "--netns-dir",
            &netns,
            "--no-proc-scan",
            "--plugin-socket",
            &plugin,
        ],
    ]
    .concat();
    cluster
        .node(node)
        .spawn(workspace_binary("istio-cni-agent").unwrap(), agent_args)
        .unwrap();
    let ztunnel_args = [&source[..], &["--ca-dir", &ca]].concat();
    cluster
        .node(node)
        .spawn(workspace_binary("ztunnel").unwrap(), ztunnel_args)
        .unwrap()
}

fn get(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<String, String> {
    cluster
        .pod(from)
        .block_on(|| async move {
            match tokio::time::timeout(
                Duration::from_secs(3),
                http_echo::get(to, "/", HttpVersion::Http1, &[]),
            )
            .await
            {
                Ok(Ok(reply)) => reply.echo().map(|e| e.pod).map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("timed out".into()),
            }
        })
        .unwrap()
}

fn rules_in(cluster: &Cluster, pod: &str) -> usize {
    let out = cluster
        .pod(pod)
        .exec("iptables-nft-save", ["-t", "nat"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("-A ISTIO_OUTPUT")
        .count()
}

fn label(plane: &ControlPlane, value: &str) {
    let patch = format!(r#"{{"metadata":{{"labels":{{"istio.io/dataplane-mode":{value}}}}}}}"#);
    let (code, body) = plane
        .request(
            ADMIN_TOKEN,
            "PATCH",
            "/api/v1/namespaces/shop",
            Some(&patch),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
}

#[test]
fn kubectl_label_namespace_ambient_captures_its_pods() {
    let cluster = mesh_tests::topology::shop().build().unwrap();
    let n1 = cluster.node("n1");
    let plane = ControlPlane::start_in(Some(n1.netns().path()), n1.underlay_ip().into())
        .expect("starting etcd and kube-apiserver");
    plane.apply_cluster(&cluster).unwrap();
    label(&plane, "null"); // start outside the mesh

    LocalCa::generate("cluster.local")
        .unwrap()
        .write_to(&cluster.work_dir().join("ca"))
        .unwrap();
    let kubeconfig = cluster.work_dir().join("kubeconfig");
    plane.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    cluster
        .pod("server")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    start(&cluster, "n1", &kubeconfig);
    let ztunnel2 = start(&cluster, "n2", &kubeconfig);
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    assert_eq!(
        get(&cluster, "client", server).unwrap(),
        "server",
        "plain traffic before the label"
    );

    label(&plane, r#""ambient""#); // kubectl label namespace shop istio.io/dataplane-mode=ambient
    eventually("new connections to become mutual TLS", WAIT, || {
        get(&cluster, "client", server)?;
        if ztunnel2.stdout().contains("mutual_tls") {
            Ok(())
        } else {
            Err("not through the mesh yet".to_string())
        }
    })
    .unwrap();

    label(&plane, "null"); // kubectl label namespace shop istio.io/dataplane-mode-
    eventually("the pods to be released", WAIT, || {
        match rules_in(&cluster, "client") {
            0 => Ok(()),
            n => Err(format!("{n} rules left")),
        }
    })
    .unwrap();
    assert_eq!(get(&cluster, "client", server).unwrap(), "server");
}
