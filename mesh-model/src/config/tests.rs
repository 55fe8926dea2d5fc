use super::*;

fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let parsed = parse_documents(Path::new("policies.yaml"), text);
    match parsed.rejected.first() {
        Some(rejected) => Err(rejected.error.clone()),
        None => Ok(parsed),
    }
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
  name: stored-for-the-waypoint
"#;
    let parsed = parse(text).unwrap();
    assert_eq!(parsed.objects.len(), 4);
    assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
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
fn a_misspelled_field_is_an_error_naming_file_document_object_and_field() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  acton: DENY\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.document, 2);
    let text = err.to_string();
    assert!(
        text.contains("policies.yaml")
            && text.contains("AuthorizationPolicy shop/p")
            && text.contains("acton"),
        "{text}"
    );
}

const DENY_LEGACY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [legacy]}}]\n";

/// The stand-in of a rejected policy: DENY everything to `selector`.
fn assert_denies_all(object: &ConfigObject, name: &str, selector: Option<&str>) {
    let ConfigObject::AuthorizationPolicy(policy) = object else {
        panic!("not a policy: {object:?}")
    };
    assert_eq!(policy.metadata.name.as_deref(), Some(name));
    assert_eq!(policy.spec.action, istio::Action::Deny);
    assert_eq!(policy.spec.rules, vec![istio::Rule::default()]);
    assert_eq!(
        policy
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels["app"].as_str()),
        selector
    );
}

#[test]
fn a_rejected_policy_is_reported_and_fails_closed_while_the_files_other_documents_apply() {
    let typo = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - form: [{source: {principals: [web]}}]\n";
    let parsed = parse_documents(Path::new("p.yaml"), &format!("{DENY_LEGACY}---\n{typo}"));
    assert_eq!(parsed.rejected.len(), 1);
    let error = parsed.rejected[0].error.to_string();
    assert!(
        error.contains("p.yaml (document 2, AuthorizationPolicy shop/allow-web)")
            && error.contains("form"),
        "{error}"
    );
    assert_eq!(
        parsed.objects.len(),
        2,
        "the valid DENY stays, with the stand-in"
    );
    assert_eq!(
        parsed.objects[0].key().to_string(),
        "AuthorizationPolicy shop/deny-legacy"
    );
    assert_denies_all(&parsed.objects[1], "allow-web", Some("server"));
}

#[test]
fn an_unknown_version_of_a_known_kind_and_action_custom_are_refused_not_skipped() {
    let future = DENY_LEGACY.replace("security.istio.io/v1", "security.istio.io/v1beta2");
    let parsed = parse_documents(Path::new("p.yaml"), &future);
    assert_eq!(parsed.skipped, Vec::<String>::new());
    assert!(
        parsed.rejected[0].error.reason.contains("v1beta2"),
        "{:?}",
        parsed.rejected
    );
    assert_denies_all(&parsed.objects[0], "deny-legacy", None);

    let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n";
    let parsed = parse_documents(Path::new("p.yaml"), custom);
    assert!(parsed.rejected[0].error.reason.contains("CUSTOM"));
    assert_denies_all(&parsed.objects[0], "ext", Some("server"));

    // A broken selector: the stand-in covers the whole namespace.
    let bad_selector = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: odd, namespace: shop}\nspec:\n  selector: {matchLabel: {app: server}}\n";
    let parsed = parse_documents(Path::new("p.yaml"), bad_selector);
    assert_denies_all(&parsed.objects[0], "odd", None);

    // A PeerAuthentication that cannot be read requires mutual TLS.
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec:\n  mtls: {mode: PERMISIVE}\n";
    let parsed = parse_documents(Path::new("p.yaml"), pa);
    let ConfigObject::PeerAuthentication(strict) = &parsed.objects[0] else {
        panic!("{parsed:?}")
    };
    assert_eq!(strict.spec.mtls.unwrap().mode, istio::MtlsMode::Strict);

    // Kinds the mesh does not read stay skipped, in any version.
    let parsed = parse_documents(
        Path::new("p.yaml"),
        "apiVersion: security.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\n",
    );
    assert!(parsed.rejected.is_empty() && parsed.objects.is_empty());
    assert_eq!(parsed.skipped, ["security.istio.io/v1 Telemetry"]);
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

/// Every Istio and Gateway API object of the seed lecture (the YAML our users apply) parses
/// into the mesh's strict types; only the IstioOperator (an installer's) is skipped.
#[test]
fn every_object_of_the_seed_lecture_parses() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/seed-lecture-istio.yaml"
    );
    let text = std::fs::read_to_string(fixture).unwrap();
    let parsed = parse_documents(Path::new("seed.yaml"), &text);
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    assert_eq!(parsed.skipped, ["install.istio.io/v1alpha1 IstioOperator"]);
    let mut kinds: Vec<&str> = parsed.objects.iter().map(ConfigObject::kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "AuthorizationPolicy",
            "DestinationRule",
            "EnvoyFilter",
            "Gateway.networking.istio.io",
            "PeerAuthentication",
            "RequestAuthentication",
            "VirtualService"
        ]
    );
    let canary = parsed
        .objects
        .iter()
        .find_map(|o| match o {
            ConfigObject::VirtualService(vs)
                if vs.metadata.name.as_deref() == Some("model-canary") =>
            {
                Some(vs.clone())
            }
            _ => None,
        })
        .unwrap();
    let weights: Vec<Option<i32>> = canary.spec.http[1].route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, [Some(90), Some(10)]);
    assert_eq!(
        canary.spec.http[0].match_[0].headers["x-user-group"]
            .exact
            .as_deref(),
        Some("beta")
    );
}

/// A typo in an L7 kind is reported by its path from the document's root, like in the
/// security kinds.
#[test]
fn a_typo_in_a_route_is_reported_by_field() {
    for (text, field) in [
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: shop}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, wieght: 10}]\n",
            "spec.http[0].route[0].wieght: unknown field `wieght`",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: web, kind: Service, group: \"\"}]\n  rules:\n  - backendRefs: [{name: web, port: 80, wieght: 1}]\n",
            "spec.rules[0].backendRefs[0].wieght: unknown field `wieght`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr, namespace: shop}\nspec:\n  host: web\n  trafficPolicy: {outlierDetection: {consecutive5xxErors: 5}}\n",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErors: unknown field",
        ),
    ] {
        let parsed = parse_documents(Path::new("routes.yaml"), text);
        assert!(parsed.objects.is_empty(), "{:?}", parsed.objects);
        let error = parsed.rejected[0].error.to_string();
        assert!(
            error.contains(field) && error.contains("routes.yaml"),
            "{error}"
        );
    }
}

/// Core kinds are parsed by k8s-openapi, which ignores fields it does not know; a typo there
/// is still reported by file and field (as `kubectl apply` does), and valid documents with
/// nulls, empty maps and named ports are not.
#[test]
fn a_typo_in_a_core_kind_is_reported_by_field() {
    for (text, field) in [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selctor: {app: web}\n  ports: [{port: 80}]\n",
            "spec.selctor",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers:\n  - name: app\n    prots: [{containerPort: 80}]\n",
            "spec.containers[0].prots",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, lables: {istio.io/dataplane-mode: ambient}}\n",
            "metadata.lables",
        ),
    ] {
        let parsed = parse_documents(Path::new("core.yaml"), text);
        assert!(parsed.objects.is_empty(), "{:?}", parsed.objects);
        let error = parsed.rejected[0].error.to_string();
        assert!(
            error.contains(&format!("unknown field `{field}`")) && error.contains("core.yaml"),
            "{error}"
        );
    }
    let valid = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, labels: {}, annotations: null}\nspec:\n  type: ClusterIP\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}]\nstatus: {loadBalancer: {}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  nodeName: n1\n  containers:\n  - name: app\n    image: web:v1\n    ports: [{name: http, containerPort: 8080}]\n    resources: {limits: {cpu: 500m, memory: 128Mi}}\nstatus: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}\n";
    let parsed = parse_documents(Path::new("core.yaml"), valid);
    assert!(parsed.rejected.is_empty(), "{:#?}", parsed.rejected);
    assert_eq!(parsed.objects.len(), 2);
}
