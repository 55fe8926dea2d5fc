//! The real Kubernetes API server the Kubernetes issue's tests run against: it starts on
//! loopback, serves the API, and enforces RBAC.

use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};

#[test]
fn a_real_apiserver_serves_the_api_and_enforces_rbac() {
    let plane = ControlPlane::start().expect("starting etcd and kube-apiserver");
    let (code, body) = plane.get(ADMIN_TOKEN, "/api/v1/namespaces").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"name\": \"default\"") || body.contains("\"name\":\"default\""),
        "{body}"
    );
    let (code, _) = plane.get("not-a-token", "/api/v1/secrets").unwrap();
    assert_eq!(code, 401, "an unknown token is not authenticated");
}
