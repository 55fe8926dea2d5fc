//! The in-pod data path on the simulated cluster: real namespaces, the real istio-cni
//! rules, real listeners in pods, real mTLS between nodes, real apps.
//!
//! ztunnel's pod proxies run in this test process (one runtime standing in for both
//! nodes' ztunnels); enrollment over ZDS and the separate binaries come next.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::eventually;
use support::{Mesh, cluster, get};

#[test]
fn ambient_pods_talk_over_mtls_and_policy_applies() {
    let cluster = cluster();
    for pod in ["server", "legacy"] {
        cluster
            .pod(pod)
            .serve(["http-echo", "--listen", "0.0.0.0:8080"])
            .unwrap();
    }
    let mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let vip = SocketAddr::from((cluster.service_ip("shop", "server"), 80));
    let legacy = SocketAddr::from((cluster.pod("legacy").ip(), 8080));

    // Across nodes, by pod IP and by service VIP: through both proxies, over HBONE.
    let reply = get(&cluster, "client", server).unwrap();
    assert_eq!(reply.pod, "server");
    let peer: SocketAddr = reply.peer.parse().unwrap();
    assert_eq!(
        peer.ip(),
        cluster.pod("client").ip(),
        "the app sees the original client address"
    );
    assert_eq!(get(&cluster, "client", vip).unwrap().pod, "server");
    assert_eq!(mesh.count("client", |s| &s.outbound_hbone), 2);
    assert_eq!(mesh.count("server", |s| &s.inbound_hbone), 2);

    // To a pod outside the mesh: plain TCP from the client's proxy.
    assert_eq!(get(&cluster, "client", legacy).unwrap().pod, "legacy");
    assert_eq!(mesh.count("client", |s| &s.outbound_passthrough), 1);

    // From outside the mesh: plaintext inbound, allowed under the default PERMISSIVE.
    let reply = get(&cluster, "legacy", server).unwrap();
    assert_eq!(reply.pod, "server");
    let peer: SocketAddr = reply.peer.parse().unwrap();
    assert_eq!(
        peer.ip(),
        cluster.pod("legacy").ip(),
        "plaintext keeps the client address too"
    );
    assert_eq!(mesh.count("server", |s| &s.inbound_plaintext), 1);

    // STRICT refuses plaintext, still admits mTLS.
    mesh.set_policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    assert!(
        get(&cluster, "legacy", server).is_err(),
        "plaintext must be refused under STRICT"
    );
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");

    // ALLOW by principal: web is admitted; a DENY for its namespace then wins.
    let allow_web = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]\n";
    mesh.set_policies(allow_web);
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");
    let deny_shop = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-shop, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [\"shop\"]}}]\n";
    mesh.set_policies(&format!("{allow_web}---\n{deny_shop}"));
    let denied = get(&cluster, "client", server);
    assert!(denied.is_err(), "DENY must win: {denied:?}");
    assert!(mesh.count("server", |s| &s.inbound_denied) >= 2);
}

#[test]
fn draining_refuses_new_connections_and_lets_live_ones_finish() {
    use std::io::{Read, Write};
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap();
    let mut mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 7000));
    let client = cluster.pod("client");
    let echo = |stream: &mut std::net::TcpStream, text: &[u8]| {
        stream.write_all(text).unwrap();
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).unwrap();
        back
    };
    let mut live = client
        .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(echo(&mut live, b"before"), b"before");

    let index = mesh
        .proxies
        .iter()
        .position(|p| p.workload().name == "client")
        .unwrap();
    let proxy = mesh.proxies.remove(index);
    let drained = mesh.runtime.spawn(proxy.drain(Duration::from_secs(60)));
    // While the listener closes, a SYN caught in its queue is reset instead of refused;
    // once it is closed, every new connection is refused.
    eventually(
        "the outbound listener to close",
        Duration::from_secs(10),
        || match client
            .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2)))
            .unwrap()
        {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(err) => Err(format!("not refused yet: {err}")),
            Ok(_) => Err("a new connection was still accepted".to_string()),
        },
    )
    .unwrap();
    assert_eq!(
        echo(&mut live, b"during drain"),
        b"during drain",
        "live connections keep working"
    );
    drop(live);
    mesh.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the drain ends when the last connection does, not at its limit")
            .unwrap();
    });
}

/// A pod relabeled after its proxy started is judged by its new labels: policies select
/// the workload as the current configuration has it, not as it was when captured.
#[test]
fn policies_select_a_pod_by_its_current_labels() {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1 as core;
    use mesh_model::config::{ConfigObject, parse_documents};
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    let mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");

    let mut pod = mesh
        .base
        .get::<core::Pod>("shop", "server")
        .unwrap()
        .as_ref()
        .clone();
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("tier".into(), "locked".into());
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-locked, namespace: shop}\nspec:\n  selector: {matchLabels: {tier: locked}}\n  action: DENY\n  rules: [{}]\n";
    let mut objects = parse_documents(std::path::Path::new("deny.yaml"), deny)
        .valid()
        .unwrap();
    objects.push(ConfigObject::Pod(Arc::new(pod)));
    mesh.set_objects(objects);
    let denied = get(&cluster, "client", server);
    assert!(denied.is_err(), "the relabeled pod is selected: {denied:?}");
}
