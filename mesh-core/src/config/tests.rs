use super::*;

fn parse(text: &str) -> Result<Parsed, ConfigError> {
    parse_documents(Path::new("policies.yaml"), text)
}

#[test]
fn parses_the_seed_lectures_security_resources_and_skips_other_kinds() {
    let text = r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: model-server-mtls
  namespace: ml-production
spec:
  selector:
    matchLabels:
      app: model-server
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE  # Disable mTLS for health checks
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: model-server-authz
  namespace: ml-production
spec:
  selector:
    matchLabels:
      app: model-server
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/gateway/sa/api-gateway"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["/v1/predict"]
---
# Deny by default
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: ml-production
spec:
  {}  # Empty policy denies all
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ignored-here
"#;
    let parsed = parse(text).unwrap();
    assert_eq!(parsed.objects.len(), 3);
    assert_eq!(
        parsed.skipped,
        ["networking.istio.io/v1beta1 VirtualService"]
    );
    let ConfigObject::PeerAuthentication(pa) = &parsed.objects[0] else {
        panic!("{:?}", parsed.objects[0])
    };
    assert_eq!(pa.spec.mtls.unwrap().mode, istio::MtlsMode::Strict);
    assert_eq!(
        pa.spec.port_level_mtls[&8080].mode,
        istio::MtlsMode::Disable
    );
    let ConfigObject::AuthorizationPolicy(allow) = &parsed.objects[1] else {
        panic!()
    };
    assert_eq!(allow.spec.action, istio::Action::Allow);
    assert_eq!(
        allow.spec.rules[0].from[0].source.principals,
        ["cluster.local/ns/gateway/sa/api-gateway"]
    );
    let ConfigObject::AuthorizationPolicy(deny_all) = &parsed.objects[2] else {
        panic!()
    };
    assert!(deny_all.spec.rules.is_empty() && deny_all.spec.selector.is_none());
}

#[test]
fn a_misspelled_field_is_an_error_naming_file_document_and_field() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  acton: DENY\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.document, 2);
    let text = err.to_string();
    assert!(
        text.contains("policies.yaml") && text.contains("acton"),
        "{text}"
    );
}

#[test]
fn bad_values_and_missing_names_are_errors() {
    let bad_action = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  action: MAYBE\n";
    assert!(parse(bad_action).unwrap_err().reason.contains("MAYBE"));
    let no_name = "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: shop\n";
    assert!(parse(no_name).unwrap_err().reason.contains("metadata.name"));
    let no_kind = "apiVersion: v1\nmetadata:\n  name: x\n";
    assert!(parse(no_kind).unwrap_err().reason.contains("kind"));
    assert!(parse("key: [unclosed\n").is_err());
}

#[test]
fn source_flags_name_what_is_missing() {
    assert_eq!(
        Source::from_flags("file", Some("/cfg".into()), None),
        Ok(Source::Files("/cfg".into()))
    );
    assert_eq!(
        Source::from_flags("kubernetes", None, None),
        Ok(Source::Kubernetes(None))
    );
    assert!(
        Source::from_flags("file", None, None)
            .unwrap_err()
            .contains("--config-dir")
    );
    assert!(
        Source::from_flags("etcd", None, None)
            .unwrap_err()
            .contains("expected file or kubernetes")
    );
}

#[test]
fn namespaced_objects_default_to_the_default_namespace() {
    let parsed = parse("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n").unwrap();
    assert_eq!(parsed.objects[0].key().to_string(), "Service default/web");
    let parsed = parse("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n").unwrap();
    assert_eq!(parsed.objects[0].key().to_string(), "Namespace shop");
}
