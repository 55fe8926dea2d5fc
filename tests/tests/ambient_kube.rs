//! The L4 mesh with Kubernetes as the config source: a real kube-apiserver (on node n1,
//! reachable over the underlay) with deploy/'s CRDs and RBAC applied, the harness playing
//! kubelet, and the real istio-cni agent and ztunnel binaries watching the API with their
//! own ServiceAccount tokens, driven by kubectl as an operator drives them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::cert::LocalCa;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::apps::workspace_binary;
use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};
use mesh_tests::kubectl::{KubectlOutput, deploy_manifest};
use mesh_tests::{Cluster, Process, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Starts the node's istio-cni agent and ztunnel, each with its own kubeconfig.
fn start(cluster: &Cluster, node: &str, kubeconfigs: &Kubeconfigs) -> Arc<Process> {
    let work = cluster.work_dir();
    let zds = work.join(format!("{node}-zds.sock")).display().to_string();
    let plugin = work.join(format!("{node}-cni.sock")).display().to_string();
    let netns = cluster.node(node).pod_netns_dir().display().to_string();
    let ca = work.join("ca").display().to_string();
    let source = |kubeconfig: &str| {
        [
            "--config-source",
            "kubernetes",
            "--kubeconfig",
            kubeconfig,
            "--node-name",
            node,
            "--zds-socket",
            &zds,
        ]
        .map(String::from)
    };
    let agent_args = [
        &source(&kubeconfigs.cni)[..],
        &[
            "--netns-dir",
            &netns,
            "--no-proc-scan",
            "--plugin-socket",
            &plugin,
        ]
        .map(String::from),
    ]
    .concat();
    cluster
        .node(node)
        .spawn(workspace_binary("istio-cni-agent").unwrap(), agent_args)
        .unwrap();
    let ztunnel_args = [
        &source(&kubeconfigs.ztunnel)[..],
        &["--ca-dir".to_string(), ca],
    ]
    .concat();
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

/// Kubeconfigs holding each component's ServiceAccount token.
struct Kubeconfigs {
    ztunnel: String,
    cni: String,
}

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> KubectlOutput {
    plane.kubectl(ADMIN_TOKEN, args, stdin).unwrap()
}

fn ok(plane: &ControlPlane, args: &[&str]) -> String {
    kubectl(plane, args, None).ok(&args.join(" ")).unwrap()
}

/// What an operator installs: deploy/'s CRDs, namespace, ServiceAccounts and RBAC (the
/// DaemonSets too, though nothing here runs them: the test starts the binaries itself).
fn install_mesh(plane: &ControlPlane, cluster: &Cluster) -> Kubeconfigs {
    plane
        .install(&[deploy_manifest("crds.yaml"), deploy_manifest("mesh.yaml")])
        .unwrap();
    let kubeconfig = |account: &str| {
        let token = ok(
            plane,
            &[
                "create",
                "token",
                account,
                "-n",
                "istio-system",
                "--duration=2h",
            ],
        );
        let path = cluster.work_dir().join(format!("{account}.kubeconfig"));
        plane.write_kubeconfig(&path, token.trim()).unwrap();
        path.display().to_string()
    };
    Kubeconfigs {
        ztunnel: kubeconfig("ztunnel"),
        cni: kubeconfig("istio-cni"),
    }
}

/// Istio's connection metric lines on `node`, read as Prometheus would.
fn metrics(cluster: &Cluster, node: &str) -> String {
    let out = cluster
        .node(node)
        .exec(
            "curl",
            ["-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The TCP ports listening inside `pod`'s network namespace.
fn listening(cluster: &Cluster, pod: &str) -> Vec<u16> {
    let out = cluster.pod(pod).exec("ss", ["-ltnH"]).unwrap();
    let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

const DENY_WEB: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-web
  namespace: shop
spec:
  selector:
    matchLabels:
      app: server
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/web]
";

const CUSTOM_SERVER: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: shop
spec:
  selector:
    matchLabels:
      app: server
  action: CUSTOM
  provider:
    name: opa
  rules:
  - {}
";

#[test]
fn the_mesh_follows_kubectl() {
    let cluster = mesh_tests::topology::shop().build().unwrap();
    let n1 = cluster.node("n1");
    let mut plane = ControlPlane::start_in(Some(n1.netns().path()), n1.underlay_ip().into())
        .expect("starting etcd and kube-apiserver");
    plane.apply_cluster(&cluster).unwrap();
    ok(
        &plane,
        &["label", "namespace", "shop", "istio.io/dataplane-mode-"],
    );
    let kubeconfigs = install_mesh(&plane, &cluster);

    LocalCa::generate("cluster.local")
        .unwrap()
        .write_to(&cluster.work_dir().join("ca"))
        .unwrap();
    for pod in ["server", "cache"] {
        cluster
            .pod(pod)
            .serve(["http-echo", "--listen", "0.0.0.0:8080"])
            .unwrap();
    }
    start(&cluster, "n1", &kubeconfigs);
    start(&cluster, "n2", &kubeconfigs);
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let cache = SocketAddr::from((cluster.pod("cache").ip(), 8080));
    assert_eq!(
        get(&cluster, "client", server).unwrap(),
        "server",
        "plain traffic before the label"
    );

    // kubectl label namespace shop istio.io/dataplane-mode=ambient: new connections are
    // mutual TLS, as the server node's metrics say.
    ok(
        &plane,
        &[
            "label",
            "namespace",
            "shop",
            "istio.io/dataplane-mode=ambient",
        ],
    );
    eventually("new connections to become mutual TLS", WAIT, || {
        get(&cluster, "client", server)?;
        let metrics = metrics(&cluster, "n2");
        metrics
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"")
            })
            .map(|_| ())
            .ok_or_else(|| "no mutual TLS connection in the metrics yet".to_string())
    })
    .unwrap();
    assert_eq!(get(&cluster, "client", cache).unwrap(), "cache");

    // kubectl apply of a DENY policy blocks new connections within seconds.
    let out = kubectl(&plane, &["apply", "-f", "-"], Some(DENY_WEB));
    assert!(out.success, "{}", out.stderr);
    eventually(
        "the DENY policy to block web -> server",
        WAIT,
        || match get(&cluster, "client", server) {
            Ok(pod) => Err(format!("{pod} answered")),
            Err(_) => Ok(()),
        },
    )
    .unwrap();

    // The API server goes away: the components keep serving with what they know.
    plane.kill_apiserver().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        get(&cluster, "client", cache).unwrap(),
        "cache",
        "still served"
    );
    assert!(get(&cluster, "client", server).is_err(), "still denied");
    // ... and catch up when it returns.
    plane.start_apiserver().unwrap();
    ok(
        &plane,
        &["delete", "authorizationpolicy", "deny-web", "-n", "shop"],
    );
    eventually("the policy's removal to reach ztunnel", WAIT, || {
        get(&cluster, "client", server)
    })
    .unwrap();

    // A policy that cannot be enforced as written (action CUSTOM: no external authorizer
    // here) fails closed for the workloads it selects, and says so on the object.
    let out = kubectl(&plane, &["apply", "-f", "-"], Some(CUSTOM_SERVER));
    assert!(out.success, "{}", out.stderr);
    eventually("the CUSTOM policy to fail closed", WAIT, || {
        match get(&cluster, "client", server) {
            Ok(pod) => Err(format!("{pod} answered")),
            Err(_) => Ok(()),
        }
    })
    .unwrap();
    assert_eq!(
        get(&cluster, "client", cache).unwrap(),
        "cache",
        "others unaffected"
    );
    eventually("a Rejected event on the policy", WAIT, || {
        let events = ok(
            &plane,
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                "shop",
                "-o",
                "jsonpath={range .items[*]}{.regarding.name} {.reason} {.note}{\"\\n\"}{end}",
            ],
        );
        if events
            .lines()
            .any(|l| l.starts_with("ext-authz Rejected") && l.contains("CUSTOM"))
        {
            Ok(())
        } else {
            Err(events)
        }
    })
    .unwrap();
    ok(
        &plane,
        &["delete", "authorizationpolicy", "ext-authz", "-n", "shop"],
    );
    eventually("the CUSTOM policy's removal to reach ztunnel", WAIT, || {
        get(&cluster, "client", server)
    })
    .unwrap();

    // Deleting a Pod (kubectl, then the kubelet's final delete) removes its rules and
    // ztunnel's listeners in its namespace.
    let proxy_ports = [15001, 15006, 15008];
    let listeners = listening(&cluster, "cache");
    assert!(
        proxy_ports.iter().all(|p| listeners.contains(p)),
        "ztunnel listens in the captured pod: {listeners:?}"
    );
    assert!(rules_in(&cluster, "cache") > 0);
    ok(
        &plane,
        &["delete", "pod", "cache", "-n", "shop", "--wait=false"],
    );
    ok(
        &plane,
        &[
            "delete",
            "pod",
            "cache",
            "-n",
            "shop",
            "--grace-period=0",
            "--force",
        ],
    );
    eventually("the deleted pod's rules and listeners to go", WAIT, || {
        let listeners = listening(&cluster, "cache");
        let rules = rules_in(&cluster, "cache");
        if rules == 0 && !proxy_ports.iter().any(|p| listeners.contains(p)) {
            Ok(())
        } else {
            Err(format!("{rules} rules, listening on {listeners:?}"))
        }
    })
    .unwrap();

    // kubectl label namespace shop istio.io/dataplane-mode-: back to plaintext.
    ok(
        &plane,
        &["label", "namespace", "shop", "istio.io/dataplane-mode-"],
    );
    eventually("the pods to be released", WAIT, || {
        match rules_in(&cluster, "client") {
            0 => Ok(()),
            n => Err(format!("{n} rules left")),
        }
    })
    .unwrap();
    assert_eq!(get(&cluster, "client", server).unwrap(), "server");
}
