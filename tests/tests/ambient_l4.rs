//! The L4 ambient mesh end to end: real `istio-cni-agent` and `ztunnel` binaries in each
//! simulated node, the file config source, real iptables in pods, real apps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::cert::LocalCa;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::{Cluster, Process, eventually, mesh};

const WAIT: Duration = Duration::from_secs(20);

fn cluster() -> Cluster {
    mesh_tests::topology::shop()
        .build()
        .expect("building the cluster")
}

fn start_agent(cluster: &Cluster, node: &str) -> Arc<Process> {
    mesh::start_agent(cluster, node).unwrap()
}

fn start_ztunnel(cluster: &Cluster, node: &str) -> Arc<Process> {
    mesh::start_ztunnel(cluster, node).unwrap()
}

fn get(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<String, String> {
    get_path(cluster, from, to, "/")
}

fn get_path(cluster: &Cluster, from: &str, to: SocketAddr, path: &str) -> Result<String, String> {
    cluster
        .pod(from)
        .block_on(|| async move {
            match tokio::time::timeout(
                Duration::from_secs(3),
                http_echo::get(to, path, HttpVersion::Http1, &[]),
            )
            .await
            {
                Ok(Ok(reply)) => reply.echo().map(|echo| echo.pod).map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("timed out reaching {to}")),
            }
        })
        .unwrap()
}

fn rules_in(cluster: &Cluster, pod: &str) -> usize {
    let output = cluster
        .pod(pod)
        .exec("iptables-nft-save", ["-t", "nat"])
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains("ISTIO_"))
        .count()
}

#[test]
fn labeling_a_namespace_ambient_makes_its_traffic_mutual_tls() {
    let cluster = cluster();
    LocalCa::generate("cluster.local")
        .unwrap()
        .write_to(&cluster.work_dir().join("ca"))
        .unwrap();
    for pod in ["server", "legacy"] {
        cluster
            .pod(pod)
            .serve(["http-echo", "--listen", "0.0.0.0:8080"])
            .unwrap();
    }
    cluster
        .pod("cache")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    let mut agents = Vec::new();
    let mut ztunnels = Vec::new();
    for node in ["n1", "n2"] {
        agents.push(start_agent(&cluster, node));
        ztunnels.push(start_ztunnel(&cluster, node));
    }
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let vip = SocketAddr::from((cluster.service_ip("shop", "server"), 80));

    // The shop pods get captured and their traffic goes through both ztunnels over mTLS.
    eventually("client -> server over the mesh", WAIT, || {
        get(&cluster, "client", server)?;
        if ztunnels[1].stdout().contains("mutual_tls") {
            Ok(())
        } else {
            Err("not yet via ztunnel".to_string())
        }
    })
    .unwrap();
    assert_eq!(
        get(&cluster, "client", vip).unwrap(),
        "server",
        "by service VIP"
    );
    let server_log = ztunnels[1].stdout();
    assert!(
        server_log.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "the server's ztunnel saw the client identity:\n{server_log}"
    );
    assert_eq!(
        rules_in(&cluster, "legacy"),
        0,
        "a pod outside the mesh is left alone"
    );

    // Istio's metrics on the server's node, from the node itself as Prometheus would.
    let metrics = cluster
        .node("n2")
        .exec(
            "curl",
            ["-sS", "--max-time", "5", "http://127.0.0.1:15020/metrics"],
        )
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    // Connections made while only the server was captured arrived in plaintext and have
    // a line of their own: look at the mutual TLS one.
    let inbound = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| panic!("no inbound mutual TLS connection metric in:\n{metrics}"));
    for label in [
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
        "destination_workload=\"server\"",
    ] {
        assert!(inbound.contains(label), "{label} missing: {inbound}");
    }
    let ready = cluster
        .node("n2")
        .exec(
            "curl",
            [
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");

    // The admin endpoint, on the node's loopback: what is served, and the log level.
    let dump = cluster
        .node("n2")
        .exec(
            "curl",
            [
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15000/config_dump",
            ],
        )
        .unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(dump["pods"], serde_json::json!(["shop/server"]));
    assert!(
        dump["certificates"]
            .to_string()
            .contains("spiffe://cluster.local/ns/shop/sa/server"),
        "{dump}"
    );
    let set = |level: &str| {
        let url = format!("http://127.0.0.1:15000/logging?level={level}");
        let out = cluster
            .node("n2")
            .exec(
                "curl",
                [
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    &url,
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(set("info,ztunnel=debug"), "200");
    assert_eq!(set("info,=%5B"), "400", "a bad filter is refused");
    assert_eq!(
        get(&cluster, "legacy", server).unwrap(),
        "server",
        "plaintext in, under PERMISSIVE"
    );

    // On the wire between the nodes: TLS to 15008 only; the request never appears in clear.
    let capture = cluster.work_dir().join("underlay.pcap");
    let capture_arg = capture.display().to_string();
    let tcpdump = cluster
        .node("n1")
        .spawn(
            "tcpdump",
            [
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-w",
                &capture_arg,
                "tcp",
            ],
        )
        .unwrap();
    eventually("tcpdump to start", WAIT, || {
        if capture.exists() {
            Ok(())
        } else {
            Err("no capture file yet")
        }
    })
    .unwrap();
    eventually("tcpdump to listen", WAIT, || {
        if tcpdump.stderr().contains("listening on") {
            Ok(())
        } else {
            Err("not listening yet")
        }
    })
    .unwrap();
    let marker = "/secret-model-weights-7f3a";
    assert_eq!(
        get_path(&cluster, "client", server, marker).unwrap(),
        "server"
    );
    // Wait until the capture holds packets and has stopped growing: the whole exchange.
    let size = || std::fs::metadata(&capture).map(|m| m.len()).unwrap_or(0);
    eventually("the capture to settle", WAIT, || {
        let before = size();
        std::thread::sleep(Duration::from_millis(200));
        if before > 24 && size() == before {
            Ok(())
        } else {
            Err("still growing or empty")
        }
    })
    .unwrap();
    tcpdump.stop().unwrap();
    let pcap = std::fs::read(&capture).unwrap();
    assert!(
        !pcap.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the request crossed the underlay in clear"
    );
    let packets = |filter: &str| {
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-r", &capture_arg, filter])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        packets("tcp port 15008") > 0,
        "no tunnel traffic on 15008 captured ({} bytes, {} tcp packets; tcpdump said {})",
        pcap.len(),
        packets("tcp"),
        tcpdump.stderr()
    );
    assert_eq!(
        packets("tcp port 8080"),
        0,
        "no plaintext pod-to-pod HTTP between the nodes"
    );

    // Policy files take effect without restarting anything.
    let policy = cluster.config_dir().join("policy.yaml");
    let write_policy = |yaml: &str| std::fs::write(&policy, yaml).unwrap();
    let header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";
    // ALLOW by principal admits web (client) and refuses default (cache).
    write_policy(&format!(
        "{header}  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/web]}}}}]\n"
    ));
    eventually("ALLOW web only", WAIT, || {
        match (
            get(&cluster, "client", server),
            get(&cluster, "cache", server),
        ) {
            (Ok(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    // DENY by namespace wins over that ALLOW.
    write_policy(&format!(
        "{header}  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/web]}}}}]\n---\n{}",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-shop, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [shop]}}]\n"
    ));
    eventually("DENY to win", WAIT, || {
        match get(&cluster, "client", server) {
            Err(_) => Ok(()),
            Ok(pod) => Err(format!("still answered by {pod}")),
        }
    })
    .unwrap();
    // A namespace deny-all blocks everything, plaintext included.
    write_policy(&format!("{header}  {{}}\n").replace("spec:\n  {}", "spec: {}"));
    eventually("deny-all", WAIT, || {
        match (
            get(&cluster, "client", server),
            get(&cluster, "legacy", server),
        ) {
            (Err(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    // STRICT refuses plaintext while mTLS flows.
    write_policy(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    eventually("STRICT", WAIT, || {
        match (
            get(&cluster, "legacy", server),
            get(&cluster, "client", server),
        ) {
            (Err(_), Ok(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    std::fs::remove_file(&policy).unwrap();
    eventually("policies gone", WAIT, || {
        get(&cluster, "legacy", server).map(drop)
    })
    .unwrap();

    // Restarting ztunnel: the agent replays its pods, traffic is mTLS again.
    ztunnels[1].stop().unwrap();
    ztunnels[1] = start_ztunnel(&cluster, "n2");
    let ztunnel = ztunnels[1].clone();
    eventually(
        "the restarted ztunnel to serve the server pod",
        WAIT,
        || {
            get(&cluster, "client", server)?;
            if ztunnel.stdout().contains("mutual_tls") {
                Ok(())
            } else {
                Err("not yet via the new ztunnel".to_string())
            }
        },
    )
    .unwrap();
    assert_eq!(rules_in(&cluster, "client"), 4, "no rule duplicated");

    // A broken file is reported and changes nothing for anyone.
    std::fs::write(
        cluster.config_dir().join("broken.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: [oops\n",
    )
    .unwrap();
    eventually("the broken file to be reported", WAIT, || {
        if ztunnels[0].stdout().contains("broken.yaml") {
            Ok(())
        } else {
            Err("not reported yet")
        }
    })
    .unwrap();
    assert_eq!(get(&cluster, "client", server).unwrap(), "server");

    // Same node: client and cache both on n1, through n1's ztunnel both ways.
    let cache = SocketAddr::from((cluster.pod("cache").ip(), 8080));
    let before = ztunnels[0].stdout().matches("mutual_tls").count();
    assert_eq!(get(&cluster, "client", cache).unwrap(), "cache");
    eventually("the same-node connection in n1's log", WAIT, || {
        if ztunnels[0].stdout().matches("mutual_tls").count() > before {
            Ok(())
        } else {
            Err("not logged yet")
        }
    })
    .unwrap();

    // Restarting the agent: pods stay captured, rules are not duplicated.
    agents[0].stop().unwrap();
    agents[0] = start_agent(&cluster, "n1");
    eventually("the restarted agent to reconnect ztunnel", WAIT, || {
        let log = ztunnels[0].stdout();
        if log.matches("snapshot reconciled").count() >= 2 {
            Ok(())
        } else {
            Err("no second snapshot yet")
        }
    })
    .unwrap();
    assert_eq!(rules_in(&cluster, "client"), 4, "no rule duplicated");
    assert_eq!(get(&cluster, "client", server).unwrap(), "server");

    // Removing the label releases the pods: rules gone, plain traffic still flows.
    let namespace = cluster.config_dir().join("namespace-shop.yaml");
    std::fs::write(
        &namespace,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
    )
    .unwrap();
    eventually("the shop pods to be released", WAIT, || {
        match (rules_in(&cluster, "client"), rules_in(&cluster, "server")) {
            (0, 0) => Ok(()),
            counts => Err(format!("rules left: {counts:?}")),
        }
    })
    .unwrap();
    assert_eq!(get(&cluster, "client", server).unwrap(), "server");

    // Labeling it again captures the running pods again.
    let mtls_before = ztunnels[1].stdout().len();
    std::fs::write(
        &namespace,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    )
    .unwrap();
    eventually("the shop pods to be captured again", WAIT, || {
        get(&cluster, "client", server)?;
        if ztunnels[1].stdout()[mtls_before..].contains("mutual_tls") {
            Ok(())
        } else {
            Err("not via the mesh yet".to_string())
        }
    })
    .unwrap();
}
