//! The simulated cluster itself: reachability, real apps, isolation and cleanup.
//!
//! These run as root on real network namespaces; they fail (never skip) when that is not
//! possible, with the harness's message saying why.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::apps::tcp_echo;
use mesh_tests::{Cluster, cleanup, eventually, netns};

const ECHO_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;

/// Two nodes, two pods each, in two namespaces.
fn two_by_two() -> Cluster {
    Cluster::builder()
        .node("n1")
        .pod("client")
        .namespace("shop")
        .service_account("web")
        .pod("cache")
        .namespace("shop")
        .node("n2")
        .pod("server")
        .namespace("shop")
        .labels([("app", "server")])
        .pod("legacy")
        .namespace("legacy")
        .service("server")
        .namespace("shop")
        .selector([("app", "server")])
        .port(80, HTTP_PORT)
        .build()
        .expect("building a 2x2 cluster")
}

/// Namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn every_pod_reaches_every_other_pod_over_tcp_by_ip() {
    let cluster = two_by_two();
    for pod in cluster.pods() {
        pod.serve(["tcp-echo", "--listen", &format!("0.0.0.0:{ECHO_PORT}")])
            .unwrap();
    }
    let mut pairs = 0;
    for from in cluster.pods() {
        for to in cluster.pods().iter().filter(|p| p.name() != from.name()) {
            let message = format!(
                "from {} ({}) to {} ({})",
                from.name(),
                from.ip(),
                to.name(),
                to.ip()
            );
            let addr = SocketAddr::from((to.ip(), ECHO_PORT));
            let echoed = from
                .block_on(|| tcp_echo::round_trip(addr, message.as_bytes()))
                .unwrap()
                .unwrap_or_else(|err| panic!("{message}: {err}"));
            assert_eq!(String::from_utf8_lossy(&echoed), message);
            pairs += 1;
        }
    }
    assert_eq!(pairs, 4 * 3, "every ordered pair of distinct pods");

    // The same through the test app's own client, run as a process in the pod.
    let client = cluster.pod("client");
    let to = format!("{}:{ECHO_PORT}", cluster.pod("legacy").ip());
    let output = client
        .exec(
            mesh_tests::apps::testapp_binary().unwrap(),
            ["tcp-send", "--to", &to, "--message", "hello"],
        )
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "hello");
}

#[test]
fn http_from_a_pod_on_node_1_is_answered_by_the_pod_on_node_2_with_its_name() {
    let cluster = two_by_two();
    let server = cluster.pod("server");
    server
        .serve(["http-echo", "--listen", &format!("0.0.0.0:{HTTP_PORT}")])
        .unwrap();
    let client = cluster.pod("client");
    assert_ne!(client.node_name(), server.node_name());
    let addr = SocketAddr::from((server.ip(), HTTP_PORT));

    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let reply = client
            .block_on(|| http_echo::get(addr, "/predict", version, &[("x-request-id", "abc")]))
            .unwrap()
            .unwrap();
        assert_eq!(reply.status, 200, "{version:?}");
        let echo = reply.echo().unwrap();
        assert_eq!(
            (
                echo.pod.as_str(),
                echo.namespace.as_str(),
                echo.node.as_str()
            ),
            ("server", "shop", "n2")
        );
        assert_eq!(echo.headers["x-request-id"], "abc");
        // No NAT: the server sees the client pod's own address.
        assert_eq!(echo.peer.parse::<SocketAddr>().unwrap().ip(), client.ip());
    }

    // And from curl, a client from another stack, over HTTP/1.1 and HTTP/2 prior knowledge.
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let output = client
            .exec(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "5",
                    flag,
                    &format!("http://{addr}/from-curl"),
                ],
            )
            .unwrap();
        assert!(
            output.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let echo: http_echo::EchoReply = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(echo.pod, "server");
        assert_eq!(echo.path, "/from-curl");
    }
}

#[test]
fn written_yaml_matches_the_live_cluster() {
    let cluster = two_by_two();
    let server = cluster.pod("server");
    let yaml = std::fs::read_to_string(cluster.config_dir().join("pod-shop-server.yaml")).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(
        pod.spec.unwrap().node_name.as_deref(),
        Some(server.node_name())
    );
    assert_eq!(pod.status.unwrap().pod_ip, Some(server.ip().to_string()));
    let service =
        std::fs::read_to_string(cluster.config_dir().join("service-shop-server.yaml")).unwrap();
    assert!(
        service.contains(&cluster.service_ip("shop", "server").to_string()),
        "{service}"
    );
}

#[test]
fn two_clusters_built_in_parallel_do_not_collide() {
    // Same topology, same addresses, built at the same time; each must only see itself.
    let build_and_probe = |tag: &'static str| {
        let cluster = Cluster::builder()
            .node("n1")
            .pod("client")
            .node("n2")
            .pod("server")
            .build()
            .expect("building a cluster in parallel");
        let server = cluster.pod("server");
        server
            .serve(["http-echo", "--listen", "0.0.0.0:8080", "--name", tag])
            .unwrap();
        let addr = SocketAddr::from((server.ip(), 8080));
        let mut answers = Vec::new();
        for _ in 0..20 {
            let reply = cluster
                .pod("client")
                .block_on(|| http_echo::get(addr, "/", HttpVersion::Http1, &[]))
                .unwrap()
                .unwrap();
            answers.push(reply.echo().unwrap().pod);
        }
        (cluster.id().to_string(), answers)
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| build_and_probe("alpha"));
        let b = scope.spawn(|| build_and_probe("beta"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.0, b.0, "cluster ids must differ");
    assert!(
        a.1.iter().all(|pod| pod == "alpha"),
        "alpha's client reached {:?}",
        a.1
    );
    assert!(
        b.1.iter().all(|pod| pod == "beta"),
        "beta's client reached {:?}",
        b.1
    );
}

#[test]
fn node_sysctls_stay_inside_the_node() {
    let host_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let cluster = two_by_two();
    assert_eq!(
        cluster
            .node("n1")
            .netns()
            .read_sysctl("net.ipv4.ip_forward")
            .unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forwarding
    );
}

#[test]
fn a_program_that_dies_at_start_is_reported_with_its_output() {
    let cluster = Cluster::builder().node("n1").pod("solo").build().unwrap();
    let pod = cluster.pod("solo");
    pod.serve(["tcp-echo", "--listen", "0.0.0.0:7000"]).unwrap();
    let err = pod
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exited") && err.contains("binding 0.0.0.0:7000"),
        "{err}"
    );
}

#[test]
fn a_panic_inside_a_cluster_removes_its_namespaces_and_processes() {
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = two_by_two();
        let server = cluster.pod("server").serve(["tcp-echo"]).unwrap();
        seen = Some((cluster.id().to_string(), server.pid()));
        assert_eq!(
            namespaces_with(cluster.id()).len(),
            1 + 2 + 4,
            "underlay, nodes, pods"
        );
        panic!("on purpose, inside a cluster");
    }));
    assert!(outcome.is_err());
    let (id, pid) = seen.unwrap();
    assert_eq!(namespaces_with(&id), Vec::<String>::new());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "server pid {pid} still alive"
    );
}

#[test]
#[should_panic(expected = "on purpose")]
fn a_test_that_panics_inside_a_cluster() {
    // The suite's wrapper (scripts/test) checks afterwards that nothing was left behind.
    let cluster = two_by_two();
    cluster.pod("client").serve(["http-echo"]).unwrap();
    panic!("on purpose: this cluster must vanish during unwinding");
}

#[test]
fn namespaces_of_a_killed_test_process_are_swept() {
    // A harness process killed outright (SIGKILL) cleans nothing up itself.
    let (child, prefix) = start_holding_demo();
    let held = namespaces_with(&prefix);
    let pids_inside: Vec<String> = held
        .iter()
        .flat_map(|ns| {
            netns::ip(&["netns", "pids", ns])
                .unwrap()
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !pids_inside.is_empty(),
        "the demo runs servers inside its pods"
    );
    kill_and_reap(child, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        namespaces_with(&prefix),
        held,
        "SIGKILL leaves the namespaces"
    );

    // Other tests building clusters in parallel may sweep them first; either way they go.
    let pid = prefix
        .trim_start_matches(cleanup::NAME_PREFIX)
        .trim_end_matches('-')
        .parse::<u32>()
        .unwrap();
    assert_eq!(
        cleanup::work_dirs_of(pid).len(),
        1,
        "SIGKILL leaves the work directory"
    );
    cleanup::sweep_stale().unwrap();
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    assert_eq!(cleanup::work_dirs_of(pid), Vec::<std::path::PathBuf>::new());
    for pid in pids_inside {
        eventually(format!("pid {pid} to die"), Duration::from_secs(5), || {
            if is_alive(&pid) {
                Err("still running")
            } else {
                Ok(())
            }
        })
        .unwrap();
    }
}

/// Starts `mesh-demo --hold` and waits until it holds its cluster (traffic done, servers
/// running); returns the child and the prefix of its namespaces.
fn start_holding_demo() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-demo"))
        .arg("--hold")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (lines, holding) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("Holding the cluster") {
                let _ = lines.send(());
            }
        }
    });
    holding
        .recv_timeout(Duration::from_secs(60))
        .expect("mesh-demo --hold never said it was holding its cluster");
    let prefix = format!("{}{}-", cleanup::NAME_PREFIX, child.id());
    assert_eq!(
        namespaces_with(&prefix).len(),
        1 + 2 + 4,
        "underlay, nodes, pods"
    );
    (child, prefix)
}

/// Whether `pid` runs (a zombie waiting for its new parent to reap it does not).
fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn kill_and_reap(
    mut child: std::process::Child,
    signal: nix::sys::signal::Signal,
) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    child.wait().unwrap()
}

#[test]
fn ctrl_c_removes_the_cluster_before_exiting() {
    let (child, prefix) = start_holding_demo();
    let pid = child.id();
    let dirs = cleanup::work_dirs_of(pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let key = dirs[0].join("ca").join("ca-key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let status = kill_and_reap(child, nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        status.code(),
        Some(130),
        "the demo exits as interrupted, after cleaning up"
    );
    assert_eq!(namespaces_with(&prefix), Vec::<String>::new());
    assert_eq!(
        cleanup::work_dirs_of(pid),
        Vec::<std::path::PathBuf>::new(),
        "the work directory, with the CA key, is removed too"
    );
}

#[test]
fn building_without_root_fails_with_a_clear_message() {
    let output = mesh_tests::process::run_copy_unprivileged(
        std::path::Path::new(env!("CARGO_BIN_EXE_mesh-demo")),
        &[],
    )
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}
