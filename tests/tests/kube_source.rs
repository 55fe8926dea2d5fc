//! The Kubernetes config source against a real kube-apiserver: objects created, changed
//! and deleted through the API show up in the store the data plane is built from.

use std::sync::Arc;
use std::time::Duration;

use mesh_model::config::file_source::Snapshot;
use mesh_model::config::kube_source;
use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};

fn wait_for(
    runtime: &tokio::runtime::Runtime,
    snapshots: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) {
    runtime.block_on(async {
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if check(&snapshots.borrow_and_update()) {
                    return;
                }
                snapshots.changed().await.unwrap();
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    });
}

#[test]
fn api_objects_reach_the_store_and_leave_it() {
    let plane = ControlPlane::start().expect("starting etcd and kube-apiserver");
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    plane
        .write_kubeconfig(kubeconfig.path(), ADMIN_TOKEN)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut snapshots = runtime.block_on(async {
        mesh_core::tls::install_process_provider();
        let client = kube_source::client(Some(kubeconfig.path())).await.unwrap();
        kube_source::watch(
            client,
            mesh_model::config::Interest::Proxy,
            Duration::from_millis(50),
        )
    });

    let namespace = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","labels":{"istio.io/dataplane-mode":"ambient"}}}"#;
    let (code, body) = plane
        .request(ADMIN_TOKEN, "POST", "/api/v1/namespaces", Some(namespace))
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(&runtime, &mut snapshots, "the labeled namespace", |s| {
        s.store
            .namespace("shop")
            .and_then(|ns| ns.metadata.labels.as_ref())
            .is_some_and(|l| {
                l.get("istio.io/dataplane-mode")
                    .is_some_and(|v| v == "ambient")
            })
    });

    let service = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop"},"spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}}"#;
    let (code, body) = plane
        .request(
            ADMIN_TOKEN,
            "POST",
            "/api/v1/namespaces/shop/services",
            Some(service),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(&runtime, &mut snapshots, "the service", |s| {
        s.store
            .all::<k8s_openapi::api::core::v1::Service>()
            .any(|svc| svc.metadata.name.as_deref() == Some("web"))
    });

    let slice = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","namespace":"shop","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[{"addresses":["10.244.1.2"]}]}"#;
    let (code, body) = plane
        .request(
            ADMIN_TOKEN,
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
            Some(slice),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(&runtime, &mut snapshots, "the endpoint slice", |s| {
        s.store
            .all::<k8s_openapi::api::discovery::v1::EndpointSlice>()
            .any(|slice| {
                slice
                    .endpoints
                    .iter()
                    .flatten()
                    .any(|e| e.addresses == ["10.244.1.2"])
            })
    });

    let (code, body) = plane
        .request(
            ADMIN_TOKEN,
            "DELETE",
            "/api/v1/namespaces/shop/services/web",
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for(&runtime, &mut snapshots, "the service to go", |s| {
        !s.store
            .all::<k8s_openapi::api::core::v1::Service>()
            .any(|svc| svc.metadata.name.as_deref() == Some("web"))
    });
}
