//! The `istio-cni` CNI plugin driven as a container runtime drives it, with the real
//! node agent behind it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::apps::workspace_binary;
use mesh_tests::{Cluster, eventually};

/// Runs the plugin with `command`, CNI_ARGS for `pod`, and `conf` on stdin.
fn invoke(command: &str, netns: &str, namespace: &str, pod: &str, conf: &str) -> (bool, String) {
    let mut child = Command::new(workspace_binary("istio-cni").unwrap())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn conf(agent_socket: &str, log: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "istio-cni",
        "log_file": log,
        "agent_socket": agent_socket,
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.244.1.2/32"}]}
    })
    .to_string()
}

/// The node agent of `n1`, told about pods only by the plugin: its namespace search dir is
/// empty and it does not scan /proc, so only an ADD can say where a pod's namespace is.
/// Returns it and its plugin socket.
fn start_agent(cluster: &Cluster) -> (std::sync::Arc<mesh_tests::Process>, String) {
    let empty = cluster.work_dir().join("no-netns");
    std::fs::create_dir_all(&empty).unwrap();
    let plugin_socket = cluster.work_dir().join("cni.sock").display().to_string();
    let zds = cluster.work_dir().join("zds.sock").display().to_string();
    let config = cluster.config_dir().display().to_string();
    let empty = empty.display().to_string();
    let agent = cluster
        .node("n1")
        .spawn(
            workspace_binary("istio-cni-agent").unwrap(),
            [
                "--config-dir",
                &config,
                "--node-name",
                "n1",
                "--zds-socket",
                &zds,
                "--netns-dir",
                &empty,
                "--no-proc-scan",
                "--plugin-socket",
                &plugin_socket,
            ],
        )
        .unwrap();
    eventually("the agent's plugin socket", Duration::from_secs(10), || {
        if std::path::Path::new(&plugin_socket).exists() {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .unwrap();
    (agent, plugin_socket)
}

/// How many of our chains the pod namespace at `netns` has (0: not captured).
fn capture_rules(netns: &std::path::Path) -> usize {
    let out = mesh_tests::netns::command_in(netns, "iptables-nft-save")
        .unwrap()
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("ISTIO_OUTPUT")
        .count()
}

#[test]
fn add_hands_the_pod_namespace_to_the_agent_and_passes_the_result_through() {
    let cluster = Cluster::builder()
        .node("n1")
        .pod("fresh")
        .namespace("shop")
        .pod("outsider")
        .namespace("legacy")
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .unwrap();
    let (agent, plugin_socket) = start_agent(&cluster);
    let log = cluster.work_dir().join("cni.log").display().to_string();
    let rules = |pod: &str| capture_rules(&cluster.pod(pod).netns().path());
    assert_eq!(rules("fresh"), 0, "not captured before the ADD");

    let netns = cluster.pod("fresh").netns().path().display().to_string();
    let (ok, stdout) = invoke("ADD", &netns, "shop", "fresh", &conf(&plugin_socket, &log));
    assert!(ok, "ADD failed: {stdout}\n{}", agent.logs());
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        result["ips"][0]["address"], "10.244.1.2/32",
        "prevResult passed through"
    );
    eventually(
        "the ambient pod to be captured",
        Duration::from_secs(10),
        || match rules("fresh") {
            0 => Err("no rules yet".to_string()),
            _ => Ok(()),
        },
    )
    .unwrap();

    // A pod outside the mesh, with the agent unreachable: the ADD still succeeds.
    let outsider = cluster.pod("outsider").netns().path().display().to_string();
    let (ok, stdout) = invoke(
        "ADD",
        &outsider,
        "legacy",
        "outsider",
        &conf("/nonexistent/agent.sock", &log),
    );
    assert!(ok, "{stdout}");
    assert_eq!(rules("outsider"), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("legacy/outsider: agent not reachable"),
        "{logged}"
    );

    // DEL, CHECK and VERSION as the runtime calls them.
    assert!(invoke("DEL", &netns, "shop", "fresh", &conf(&plugin_socket, &log)).0);
    assert!(
        invoke(
            "CHECK",
            &netns,
            "shop",
            "fresh",
            &conf(&plugin_socket, &log)
        )
        .0
    );
    let (ok, version) = invoke("VERSION", "", "", "", r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok && version.contains("supportedVersions"), "{version}");

    // Bad input: a CNI error on stdout, naming what is wrong, and a failure exit.
    let (ok, error) = invoke("ADD", &netns, "shop", "fresh", "{not json");
    assert!(!ok);
    let error: serde_json::Value = serde_json::from_str(error.trim()).unwrap();
    assert_eq!(error["code"], 6);
}

/// The agent as the istio-cni DaemonSet runs it: installs the plugin into the node's CNI
/// binary directory, chains it into the primary configuration, puts it back when the
/// primary CNI rewrites its file, and `--uninstall-cni` removes it again.
#[test]
fn the_agent_installs_and_chains_the_plugin_and_uninstalls_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    for sub in ["config", "bin", "net.d"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let primary = dir.path().join("net.d/10-bridge.conflist");
    let original = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{ "type": "bridge", "bridge": "cni0" }]
    });
    std::fs::write(&primary, original.to_string()).unwrap();
    let args = |extra: &[&str]| {
        let mut command = Command::new(workspace_binary("istio-cni-agent").unwrap());
        command.args([
            "--config-dir",
            &path("config"),
            "--node-name",
            "n1",
            "--zds-socket",
            &path("zds.sock"),
            "--plugin-socket",
            &path("cni.sock"),
            "--no-proc-scan",
            "--cni-bin-dir",
            &path("bin"),
            "--cni-conf-dir",
            &path("net.d"),
        ]);
        command.args(extra);
        command
    };
    let agent = mesh_tests::Process::spawn("istio-cni-agent", args(&[]), dir.path()).unwrap();
    let chained = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&primary).unwrap()).unwrap()
    };
    let is_chained = || {
        let config = chained();
        if config["plugins"][1]["type"] == "istio-cni"
            && config["plugins"][1]["agent_socket"] == path("cni.sock")
        {
            Ok(())
        } else {
            Err(format!("{config}"))
        }
    };
    eventually("the plugin chained", Duration::from_secs(10), is_chained).unwrap();
    assert_eq!(chained()["plugins"][0], original["plugins"][0]);
    let installed = dir.path().join("bin/istio-cni");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(workspace_binary("istio-cni").unwrap()).unwrap()
    );
    // The installed binary is the plugin: it answers VERSION as the runtime asks it.
    let out = Command::new(&installed)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("supportedVersions")
    );

    // The primary CNI rewrites its file: the entry comes back within a check period.
    std::fs::write(&primary, original.to_string()).unwrap();
    eventually(
        "the plugin chained again",
        Duration::from_secs(15),
        is_chained,
    )
    .unwrap();

    agent.stop().unwrap();
    assert!(
        is_chained().is_ok(),
        "stopping the agent keeps the chain (upgrades stay safe)"
    );
    let status = args(&["--uninstall-cni"]).status().unwrap();
    assert!(status.success());
    assert_eq!(chained(), original);
    assert!(!installed.exists());
}

/// A pod's network as a kubelet's container runtime makes it: cnitool (the CNI project's
/// reference runtime) runs the node's configuration list, the standard ptp plugin with
/// host-local addresses as the primary network and istio-cni chained after it, against a
/// new, empty network namespace; ADD gives it an address and a route and the agent captures
/// it, DEL takes the interface and the address lease back.
#[test]
fn a_pod_network_from_the_nodes_conflist_is_captured_through_the_chained_plugin() {
    let cluster = Cluster::builder()
        .node("n1")
        .pod("fresh")
        .namespace("shop")
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .unwrap();
    let (agent, plugin_socket) = start_agent(&cluster);
    let plugins = mesh_tests::go_builds::cni_plugins().unwrap();
    let dir = |name: &str| {
        let path = cluster.work_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    // The node's CNI binary directory and configuration, as a cluster installs them.
    let bin = dir("cni-bin");
    for name in ["ptp", "host-local"] {
        std::os::unix::fs::symlink(plugins.join(name), bin.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(
        workspace_binary("istio-cni").unwrap(),
        bin.join("istio-cni"),
    )
    .unwrap();
    let net_d = dir("net.d");
    let leases = dir("ipam");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {
                "type": "ptp",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": "10.244.1.0/24",
                        "rangeStart": "10.244.1.200",
                        "rangeEnd": "10.244.1.210",
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": leases,
                },
            },
            {
                "type": "istio-cni",
                "log_file": cluster.work_dir().join("cni.log"),
                "agent_socket": plugin_socket,
            },
        ],
    });
    std::fs::write(net_d.join("10-k8s.conflist"), conflist.to_string()).unwrap();

    // The pod's namespace as the runtime creates it: nothing in it but loopback.
    let pod = mesh_tests::netns::NetNs::create(format!("{}-runtime-pod", cluster.id())).unwrap();
    let cnitool = |command: &str| {
        let output = cluster
            .node("n1")
            .netns()
            .command(plugins.join("cnitool"))
            .unwrap()
            .args([command, "k8s-pod-network"])
            .arg(pod.path())
            .env("NETCONFPATH", &net_d)
            .env("CNI_PATH", &bin)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=fresh",
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cnitool {command}: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            agent.logs()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(capture_rules(&pod.path()), 0, "not captured before the ADD");

    let result: serde_json::Value = serde_json::from_str(&cnitool("add")).unwrap();
    assert_eq!(
        result["ips"][0]["address"], "10.244.1.200/24",
        "the primary network's result came through the chained plugin: {result}"
    );
    let address = pod
        .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(address.contains("10.244.1.200/24"), "{address}");
    let routes = pod.ip(&["-4", "route"]).unwrap();
    assert!(routes.contains("default via"), "{routes}");
    eventually(
        "the pod to be captured",
        Duration::from_secs(10),
        || match capture_rules(&pod.path()) {
            0 => Err("no rules yet"),
            _ => Ok(()),
        },
    )
    .unwrap();
    let lease = leases.join("k8s-pod-network").join("10.244.1.200");
    assert!(lease.exists(), "host-local leased the address");

    cnitool("del");
    assert!(!lease.exists(), "DEL released the address");
    assert!(
        pod.ip(&["link", "show", "dev", "eth0"]).is_err(),
        "DEL removed the pod's interface"
    );
}
