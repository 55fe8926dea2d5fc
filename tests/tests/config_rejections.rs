//! Configuration the mesh cannot use as written, end to end with the real binaries and the
//! file source: each rejected object is reported (log, metric, admin config dump), the
//! file's other documents still apply, and a security policy that cannot be enforced as
//! written fails closed for the workloads it selects.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::{Cluster, eventually, mesh};

const WAIT: Duration = Duration::from_secs(20);

/// `shop` (ambient): `client` (sa web) and `cache` (app=cache) on n1, `server`
/// (app=server) on n2; `legacy` outside the mesh on n2.
fn cluster() -> Cluster {
    Cluster::builder()
        .node("n1")
        .pod("client")
        .namespace("shop")
        .service_account("web")
        .pod("cache")
        .namespace("shop")
        .labels([("app", "cache")])
        .node("n2")
        .pod("server")
        .namespace("shop")
        .labels([("app", "server")])
        .pod("legacy")
        .namespace("legacy")
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .unwrap()
}

fn get(cluster: &Cluster, from: &str, to: &str) -> Result<String, String> {
    let to = SocketAddr::from((cluster.pod(to).ip(), 8080));
    cluster
        .pod(from)
        .block_on(|| async move {
            let fetch = http_echo::get(to, "/", HttpVersion::Http1, &[]);
            match tokio::time::timeout(Duration::from_secs(3), fetch).await {
                Ok(Ok(reply)) => reply.echo().map(|e| e.pod).map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        })
        .unwrap()
}

/// What n1's ztunnel serves on `url` (its node's loopback).
fn fetch(cluster: &Cluster, url: &str) -> String {
    let out = cluster
        .node("n1")
        .exec("curl", ["-sS", "--max-time", "5", url])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rejected_gauge(cluster: &Cluster) -> Option<String> {
    fetch(cluster, "http://127.0.0.1:15020/metrics")
        .lines()
        .find(|l| l.starts_with("ztunnel_config_rejected_objects "))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
}

/// DENY to the server from `legacy`'s address (plaintext carries no namespace).
fn deny_legacy(cluster: &Cluster) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-legacy, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [\"{}/32\"]}}}}]\n",
        cluster.pod("legacy").ip()
    )
}

fn allow_cache(spec_tail: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-cache, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: cache}}}}\n{spec_tail}"
    )
}

#[test]
fn rejected_policies_are_reported_fail_closed_and_spare_their_neighbours() {
    let cluster = cluster();
    for pod in ["server", "cache"] {
        cluster
            .pod(pod)
            .serve(["http-echo", "--listen", "0.0.0.0:8080"])
            .unwrap();
    }
    let mesh = mesh::Mesh::start(&cluster).unwrap();
    let ztunnel = mesh.ztunnel("n1");
    eventually("the mesh to carry client -> cache", WAIT, || {
        get(&cluster, "client", "cache")?;
        if ztunnel.stdout().contains("mutual_tls") {
            Ok(())
        } else {
            Err("not through the mesh yet".to_string())
        }
    })
    .unwrap();
    let policy = cluster.config_dir().join("policy.yaml");
    let deny = deny_legacy(&cluster);

    // One file: a valid DENY, and an ALLOW with a misspelled field (`form`).
    let typo = allow_cache(
        "  rules:\n  - form: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]\n",
    );
    std::fs::write(&policy, format!("{deny}---\n{typo}")).unwrap();
    eventually(
        "the valid DENY to apply and the broken ALLOW to fail closed",
        WAIT,
        || match (
            get(&cluster, "legacy", "server"),
            get(&cluster, "client", "server"),
            get(&cluster, "client", "cache"),
        ) {
            (Err(_), Ok(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    assert_eq!(rejected_gauge(&cluster).as_deref(), Some("1"));
    let dump: serde_json::Value =
        serde_json::from_str(&fetch(&cluster, "http://127.0.0.1:15000/config_dump")).unwrap();
    let rejected = dump["rejected"].to_string();
    assert!(
        rejected.contains("policy.yaml")
            && rejected.contains("AuthorizationPolicy shop/allow-cache")
            && rejected.contains("form"),
        "{dump}"
    );
    assert!(
        ztunnel.stdout().contains("allow-cache") && ztunnel.stdout().contains("config rejected"),
        "the log names it"
    );

    // action CUSTOM, and a version this mesh does not read: refused the same way.
    for (broken, why) in [
        (
            allow_cache("  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n"),
            "CUSTOM",
        ),
        (
            allow_cache("  rules: [{}]\n")
                .replace("security.istio.io/v1", "security.istio.io/v1beta2"),
            "v1beta2",
        ),
    ] {
        std::fs::write(&policy, format!("{deny}---\n{broken}")).unwrap();
        eventually(format!("{why} to be reported"), WAIT, || {
            let dump = fetch(&cluster, "http://127.0.0.1:15000/config_dump");
            if dump.contains(why) {
                Ok(())
            } else {
                Err(dump)
            }
        })
        .unwrap();
        assert!(
            get(&cluster, "client", "cache").is_err(),
            "{why} fails closed"
        );
        assert!(
            get(&cluster, "legacy", "server").is_err(),
            "the DENY beside it holds"
        );
    }

    // Fixed: the ALLOW applies as written and nothing is reported.
    std::fs::write(
        &policy,
        format!(
            "{deny}---\n{}",
            allow_cache(
                "  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]\n"
            )
        ),
    )
    .unwrap();
    eventually("the fixed ALLOW to admit web", WAIT, || {
        get(&cluster, "client", "cache").map(drop)
    })
    .unwrap();
    assert_eq!(rejected_gauge(&cluster).as_deref(), Some("0"));
}
