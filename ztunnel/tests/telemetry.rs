//! What a connection tells the operator, and named ports, on the simulated cluster with the
//! real rules and the real pod proxies (in this process): services named on both sides,
//! byte counters that grow while a connection is open, a Service whose `targetPort` is a
//! container port's name.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use mesh_model::config::ConfigObject;
use mesh_tests::eventually;
use support::{Mesh, cluster, get};

/// The value of the first line of `metric` whose labels contain every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn destination_service_is_named_on_both_sides_of_vip_traffic() {
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["http-echo", "--listen", "0.0.0.0:8080"])
        .unwrap();
    let mesh = Mesh::start(&cluster);
    let vip = SocketAddr::from((cluster.service_ip("shop", "server"), 80));
    assert_eq!(get(&cluster, "client", vip).unwrap().pod, "server");

    let text = mesh.metrics();
    let service = "destination_service=\"server.shop.svc.cluster.local\"";
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        let opened = sample(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                reporter,
                service,
                "connection_security_policy=\"mutual_tls\"",
            ],
        );
        assert_eq!(opened, Some(1), "{reporter} {service} in:\n{text}");
    }
}

#[test]
fn a_named_target_port_is_reached_through_the_mesh() {
    let cluster = cluster();
    for listen in ["0.0.0.0:8080", "0.0.0.0:9090"] {
        cluster
            .pod("server")
            .serve(["http-echo", "--listen", listen])
            .unwrap();
    }
    let mesh = Mesh::start(&cluster);
    // The server's pod names its container port 9090 `admin`; Service shop/admin sends its
    // port 81 to `targetPort: admin`.
    let mut pod = mesh
        .base
        .get::<core::Pod>("shop", "server")
        .expect("the cluster's server pod")
        .as_ref()
        .clone();
    let containers = &mut pod.spec.as_mut().unwrap().containers;
    containers[0].ports = Some(vec![core::ContainerPort {
        name: Some("admin".into()),
        container_port: 9090,
        ..Default::default()
    }]);
    let vip = mesh_tests::addressing::service_ip(5);
    let service: core::Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "admin", "namespace": "shop"},
        "spec": {"clusterIP": vip.to_string(), "selector": {"app": "server"},
                 "ports": [{"name": "http-admin", "port": 81, "targetPort": "admin"}]}
    }))
    .unwrap();
    mesh.set_objects([
        ConfigObject::Pod(Arc::new(pod)),
        ConfigObject::Service(Arc::new(service)),
    ]);

    let reply = get(&cluster, "client", SocketAddr::from((vip, 81))).unwrap();
    assert_eq!(reply.pod, "server");
    let text = mesh.metrics();
    let destination = sample(
        &text,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "destination_service=\"admin.shop.svc.cluster.local\"",
        ],
    );
    assert_eq!(
        destination,
        Some(1),
        "the server side names the service whose named port targets 9090:\n{text}"
    );
}

#[test]
fn byte_counters_grow_while_a_connection_is_open() {
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap();
    let mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 7000));
    let mut live = cluster
        .pod("client")
        .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut exchange = |len: usize| {
        let sent = vec![7u8; len];
        live.write_all(&sent).unwrap();
        let mut back = vec![0u8; len];
        live.read_exact(&mut back).unwrap();
        assert_eq!(back, sent);
    };
    let counters = |reporter: &str| {
        let text = mesh.metrics();
        let labels = [reporter, "destination_workload=\"server\""];
        (
            sample(&text, "istio_tcp_sent_bytes_total", &labels).unwrap_or(0),
            sample(&text, "istio_tcp_received_bytes_total", &labels).unwrap_or(0),
            sample(&text, "istio_tcp_connections_closed_total", &labels).unwrap_or(0),
        )
    };

    exchange(1000);
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        eventually(
            "the first kilobyte counted",
            Duration::from_secs(5),
            || match counters(reporter) {
                (1000, 1000, 0) => Ok(()),
                other => Err(format!("{reporter}: sent, received, closed = {other:?}")),
            },
        )
        .unwrap();
    }
    exchange(4000);
    eventually(
        "five kilobytes counted",
        Duration::from_secs(5),
        || match counters("reporter=\"source\"") {
            (5000, 5000, 0) => Ok(()),
            other => Err(format!("sent, received, closed = {other:?}")),
        },
    )
    .unwrap();

    drop(live);
    eventually(
        "the close counted",
        Duration::from_secs(5),
        || match counters("reporter=\"source\"") {
            (5000, 5000, 1) => Ok(()),
            other => Err(format!("sent, received, closed = {other:?}")),
        },
    )
    .unwrap();
}
