use std::path::Path;

use super::*;
use crate::config::{ConfigObject, parse_documents};
use mesh_core::identity::Identity;

fn policies(yaml: &str) -> Vec<Arc<CompiledPolicy>> {
    parse_documents(Path::new("authz.yaml"), yaml)
        .valid()
        .unwrap()
        .into_iter()
        .filter_map(|o| match o {
            ConfigObject::AuthorizationPolicy(p) => Some(Arc::new(CompiledPolicy::compile(&p))),
            _ => None,
        })
        .collect()
}

fn server() -> Workload {
    Workload {
        name: "server".into(),
        owner: Default::default(),
        namespace: "shop".into(),
        uid: None,
        identity: Identity::new("cluster.local", "shop", "server").unwrap(),
        node: "n2".into(),
        ips: vec!["10.244.2.2".parse().unwrap()],
        labels: [("app".to_string(), "server".to_string())].into(),
        captured: true,
        named_ports: Default::default(),
        waypoint: None,
        waypoint_of: None,
    }
}

/// A connection from `namespace/account` (mTLS) or plaintext (`None`) at 10.244.1.2.
fn from(identity: Option<(&str, &str)>, port: u16) -> Connection {
    Connection {
        src_identity: identity.map(|(ns, sa)| Identity::new("cluster.local", ns, sa).unwrap()),
        src_ip: "10.244.1.2".parse().unwrap(),
        dst_ip: "10.244.2.2".parse().unwrap(),
        dst_port: port,
    }
}

const ALLOW_WEB: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
"#;

const DENY_LEGACY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["legacy"]}}]
"#;

const DENY_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {}
"#;

#[test]
fn decisions_follow_istio_semantics() {
    let web = Some(("shop", "web"));
    let batch = Some(("shop", "batch"));
    let legacy_web = Some(("legacy", "web"));
    let both = format!("{ALLOW_WEB}---{DENY_LEGACY}");
    let allow_legacy_too = ALLOW_WEB.replace(
        r#"principals: ["cluster.local/ns/shop/sa/web"]"#,
        r#"principals: ["*/sa/web"]"#,
    );
    let allow_and_deny_legacy = format!("{allow_legacy_too}---{DENY_LEGACY}");
    let cases: Vec<(&str, &str, Connection, bool)> = vec![
        ("no policy: everything allowed", "", from(None, 80), true),
        (
            "ALLOW by principal admits it",
            ALLOW_WEB,
            from(web, 80),
            true,
        ),
        (
            "ALLOW by principal refuses another",
            ALLOW_WEB,
            from(batch, 80),
            false,
        ),
        (
            "ALLOW by principal refuses plaintext",
            ALLOW_WEB,
            from(None, 80),
            false,
        ),
        ("DENY by namespace", &both, from(legacy_web, 80), false),
        (
            "DENY wins over a matching ALLOW",
            &allow_and_deny_legacy,
            from(legacy_web, 80),
            false,
        ),
        (
            "DENY does not touch others",
            &allow_and_deny_legacy,
            from(web, 80),
            true,
        ),
        ("empty spec denies all", DENY_ALL, from(web, 80), false),
    ];
    for (why, yaml, conn, allowed) in cases {
        let decision = authorize(&policies(yaml), &server(), &conn);
        assert_eq!(decision.is_allowed(), allowed, "{why}: {decision:?}");
    }
}

#[test]
fn negations_ports_ip_blocks_and_conditions() {
    let rules = |rules: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  rules:\n{rules}"
        )
    };
    let cases: Vec<(String, Connection, bool)> = vec![
        (
            rules("  - to: [{operation: {ports: [\"8080\"]}}]\n"),
            from(None, 8080),
            true,
        ),
        (
            rules("  - to: [{operation: {ports: [\"8080\"]}}]\n"),
            from(None, 9090),
            false,
        ),
        (
            rules("  - to: [{operation: {notPorts: [\"9090\"]}}]\n"),
            from(None, 8080),
            true,
        ),
        (
            rules("  - from: [{source: {ipBlocks: [\"10.244.1.0/24\"]}}]\n"),
            from(None, 80),
            true,
        ),
        (
            rules("  - from: [{source: {notIpBlocks: [\"10.244.1.0/24\"]}}]\n"),
            from(None, 80),
            false,
        ),
        (
            rules("  - from: [{source: {notPrincipals: [\"*\"]}}]\n"),
            from(None, 80),
            true,
        ),
        (
            rules("  - from: [{source: {notNamespaces: [\"shop\"]}}]\n"),
            from(Some(("shop", "web")), 80),
            false,
        ),
        (
            rules("  - from: [{source: {serviceAccounts: [\"shop/web\"]}}]\n"),
            from(Some(("shop", "web")), 80),
            true,
        ),
        (
            rules("  - when: [{key: source.namespace, values: [\"shop\"]}]\n"),
            from(Some(("shop", "web")), 80),
            true,
        ),
        (
            rules("  - when: [{key: destination.port, notValues: [\"80\"]}]\n"),
            from(None, 80),
            false,
        ),
        (rules("  - {}\n"), from(None, 80), true),
    ];
    for (yaml, conn, allowed) in cases {
        assert_eq!(
            authorize(&policies(&yaml), &server(), &conn).is_allowed(),
            allowed,
            "{yaml}"
        );
    }
}

#[test]
fn http_attributes_fail_closed_at_l4() {
    let allow_get = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
"#;
    assert!(
        !authorize(
            &policies(allow_get),
            &server(),
            &from(Some(("shop", "web")), 80)
        )
        .is_allowed()
    );
    let deny_post_from_batch = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/batch"]}}]
    to: [{operation: {methods: ["POST"]}}]
"#;
    let p = policies(deny_post_from_batch);
    assert!(
        !authorize(&p, &server(), &from(Some(("shop", "batch")), 80)).is_allowed(),
        "HTTP part dropped: denies more"
    );
    assert!(authorize(&p, &server(), &from(Some(("shop", "web")), 80)).is_allowed());
}

#[test]
fn scope_selector_root_namespace_and_target_refs() {
    let mesh_wide_deny = DENY_LEGACY.replace("namespace: shop", "namespace: istio-system");
    assert!(
        !authorize(
            &policies(&mesh_wide_deny),
            &server(),
            &from(Some(("legacy", "x")), 80)
        )
        .is_allowed()
    );
    let other_namespace = DENY_ALL.replace("namespace: shop", "namespace: other");
    assert!(authorize(&policies(&other_namespace), &server(), &from(None, 80)).is_allowed());
    let other_app = ALLOW_WEB.replace("app: server", "app: cache");
    assert!(
        authorize(&policies(&other_app), &server(), &from(None, 80)).is_allowed(),
        "selector misses"
    );
    let waypoint = DENY_ALL.replace(
        "spec: {}",
        "spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}",
    );
    assert!(
        authorize(&policies(&waypoint), &server(), &from(None, 80)).is_allowed(),
        "waypoint policies are not ztunnel's"
    );
}
