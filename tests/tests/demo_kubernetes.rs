//! `scripts/demo --kubernetes` (`mesh-demo --kubernetes`): the demo's story on a Kubernetes
//! cluster runs to its end, every request answered by the pod it was meant for, and the
//! shop's cross-node traffic is mutual TLS with the workloads' SPIFFE identities.

use std::process::Command;

#[test]
fn the_kubernetes_demo_tells_the_story() {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-demo"))
        .arg("--kubernetes")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (from, to, answered_by) in [
        ("shop/client", "shop/model-server ", "model-server-"),
        ("shop/client", "shop/model-server VIP", "model-server-"),
        ("shop/client", "legacy/legacy", "legacy-"),
        ("legacy/legacy", "shop/model-server ", "model-server-"),
    ] {
        assert!(
            stdout.lines().any(|line| {
                let line = line.trim_start();
                line.starts_with(from)
                    && line.contains(&format!("-> {to}"))
                    && line.contains(&format!("answered by {answered_by}"))
            }),
            "{from} -> {to}:\n{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|line| line.contains("istio_tcp_connections_opened_total{")
                && line.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"")
                && line.contains(
                    "destination_principal=\"spiffe://cluster.local/ns/shop/sa/inference\""
                )
                && line.contains("connection_security_policy=\"mutual_tls\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("ztunnel-"),
        "the DaemonSets' pods are listed:\n{stdout}"
    );
}
