//! deploy/ against a real kube-apiserver, through kubectl as an operator runs it: every
//! manifest passes a server-side dry run, the CRDs accept the seed lecture's Istio YAML and
//! reject typos, each component's ServiceAccount may do what it needs and nothing more,
//! and the plain manifests are what the Helm chart renders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_tests::kube_control_plane::{ADMIN_TOKEN, ControlPlane};
use mesh_tests::kubectl::deploy_manifest;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/manifests"))
        .expect("deploy/manifests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "deploy/manifests holds {files:?}");
    files
}

/// Every YAML document of `text` that is not empty.
fn documents(text: &str) -> Vec<serde_json::Value> {
    mesh_tests::kube_yaml::documents(text).expect("valid YAML")
}

fn admin(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    plane
        .kubectl(ADMIN_TOKEN, args, stdin)
        .unwrap()
        .ok(&args.join(" "))
        .unwrap()
}

#[test]
fn every_manifest_in_deploy_passes_a_server_side_dry_run() {
    let plane = ControlPlane::start().expect("control plane");
    // Namespaced objects need their namespace to exist, even in a dry run.
    admin(&plane, &["create", "namespace", "istio-system"], None);
    for file in manifests() {
        let out = plane
            .kubectl(
                ADMIN_TOKEN,
                &[
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "-f",
                    file.to_str().unwrap(),
                ],
                None,
            )
            .unwrap();
        assert!(out.success, "{}: {}", file.display(), out.stderr);
        let applied = out.stdout.lines().count();
        let objects = documents(&std::fs::read_to_string(&file).unwrap()).len();
        assert_eq!(applied, objects, "{}: {}", file.display(), out.stdout);
    }
}

/// The Istio and Gateway API objects of the seed lecture (the YAML our users learn from),
/// read from the lecture when this checkout sits beside it, else from the copy in
/// tests/fixtures (which must then equal it).
fn seed_objects() -> Vec<serde_json::Value> {
    let fixture = repo().join("tests/fixtures/seed-lecture-istio.yaml");
    let copied = documents(&std::fs::read_to_string(&fixture).expect("fixture"));
    let lecture = repo().join("../shared/seed/lecture-04-advanced-networking-and-service-mesh.md");
    if let Ok(text) = std::fs::read_to_string(&lecture) {
        let mut from_lecture = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```yaml\n") {
            let block = &rest[start + 8..];
            let end = block.find("```").expect("closed block");
            from_lecture.extend(documents(&block[..end]).into_iter().filter(|d| {
                let api = d["apiVersion"].as_str().unwrap_or_default();
                api.contains("istio.io") || api.starts_with("gateway.networking.k8s.io")
            }));
            rest = &block[end..];
        }
        assert_eq!(
            from_lecture, copied,
            "tests/fixtures/seed-lecture-istio.yaml no longer matches the lecture"
        );
    }
    copied
}

#[test]
fn the_crds_accept_the_seed_lectures_istio_yaml_and_reject_typos() {
    let plane = ControlPlane::start().expect("control plane");
    plane.install(&[deploy_manifest("crds.yaml")]).unwrap();
    admin(&plane, &["create", "namespace", "ml-production"], None);

    let objects = seed_objects();
    assert!(objects.len() >= 20, "{} objects", objects.len());
    let mut tried = 0;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        // IstioOperator is istioctl's install input, not a cluster object: the lecture's
        // has no name, so no API server would take it. The chart's values replace it.
        if kind == "IstioOperator" {
            continue;
        }
        let out = plane
            .kubectl(
                ADMIN_TOKEN,
                &["apply", "--server-side", "--dry-run=server", "-f", "-"],
                Some(&object.to_string()),
            )
            .unwrap();
        assert!(
            out.success,
            "{kind} {}: {}",
            object["metadata"]["name"], out.stderr
        );
        tried += 1;
    }
    assert_eq!(tried, objects.len() - 1, "only IstioOperator is left out");

    let typo = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                metadata: {name: typo, namespace: default}\n\
                spec:\n  action: DENY\n  rule:\n  - from:\n    - source:\n        namespaces: [a]\n";
    let rules = typo.replace("  rule:", "  rules:");
    // (object, what the refusal must say)
    let cases = [
        (typo.to_string(), ".spec.rule: field not declared in schema"),
        (
            rules.replace("namespaces:", "namespace:"),
            ".spec.rules[0].from[0].source.namespace: field not declared in schema",
        ),
        (
            rules.replace("DENY", "DENNY"),
            "Unsupported value: \"DENNY\"",
        ),
        (
            typo.replace("security.istio.io/v1", "security.istio.io/v1beta1"),
            ".spec.rule: field not declared in schema",
        ),
    ];
    for (object, refusal) in cases {
        let out = plane
            .kubectl(
                ADMIN_TOKEN,
                &["apply", "--server-side", "-f", "-"],
                Some(&object),
            )
            .unwrap();
        assert!(!out.success, "accepted:\n{object}");
        assert!(
            out.stderr.contains(refusal),
            "{refusal} not in: {}",
            out.stderr
        );
    }
}

/// `kubectl auth can-i VERB RESOURCE` as `token`.
fn can(plane: &ControlPlane, token: &str, verb: &str, resource: &str) -> bool {
    let out = plane
        .kubectl(
            token,
            &["auth", "can-i", verb, resource, "--all-namespaces"],
            None,
        )
        .unwrap();
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("can-i {verb} {resource}: {other} {}", out.stderr),
    }
}

#[test]
fn each_component_may_do_what_it_needs_and_nothing_more() {
    let plane = ControlPlane::start().expect("control plane");
    plane.install(&manifests()).unwrap();
    let token = |namespace: &str, account: &str| {
        admin(&plane, &["create", "token", account, "-n", namespace], None)
            .trim()
            .to_string()
    };
    let ztunnel = token("istio-system", "ztunnel");
    let cni = token("istio-system", "istio-cni");
    let waypoint = token("default", "waypoint");

    // Real requests first: the reads each watcher makes, and the refusals.
    let get = |token: &str, args: &[&str]| plane.kubectl(token, args, None).unwrap();
    for args in [
        &["get", "pods", "-A"][..],
        &["get", "namespaces"],
        &["get", "services", "-A"],
        &["get", "authorizationpolicies.security.istio.io", "-A"],
        &["get", "peerauthentications.security.istio.io", "-A"],
    ] {
        let out = get(&ztunnel, args);
        assert!(out.success, "ztunnel {args:?}: {}", out.stderr);
    }
    for (who, token) in [
        ("ztunnel", &ztunnel),
        ("istio-cni", &cni),
        ("waypoint", &waypoint),
    ] {
        let out = get(token, &["get", "secrets", "-A"]);
        assert!(
            !out.success && out.stderr.contains("Forbidden"),
            "{who} read Secrets: {}",
            out.stderr
        );
        let out = get(
            token,
            &["run", "intruder", "--image=busybox", "-n", "default"],
        );
        assert!(
            !out.success && out.stderr.contains("forbidden"),
            "{who} created a Pod: {}",
            out.stderr
        );
    }

    // Then the whole matrix: (verb, resource, ztunnel, istio-cni, waypoint).
    #[rustfmt::skip]
    let matrix: &[(&str, &str, bool, bool, bool)] = &[
        ("list",   "pods",                                            true,  true,  true),
        ("watch",  "pods",                                            true,  true,  true),
        ("list",   "namespaces",                                      true,  true,  true),
        ("watch",  "services",                                        true,  false, true),
        ("watch",  "endpointslices.discovery.k8s.io",                 true,  false, true),
        ("list",   "serviceaccounts",                                 true,  false, false),
        ("watch",  "nodes",                                           true,  false, false),
        ("watch",  "authorizationpolicies.security.istio.io",         true,  false, true),
        ("watch",  "peerauthentications.security.istio.io",           true,  false, true),
        ("watch",  "requestauthentications.security.istio.io",        false, false, true),
        ("watch",  "virtualservices.networking.istio.io",             false, false, true),
        ("watch",  "destinationrules.networking.istio.io",            false, false, true),
        ("watch",  "httproutes.gateway.networking.k8s.io",            false, false, true),
        ("get",    "secrets",                                         false, false, false),
        ("list",   "configmaps",                                      false, false, false),
        ("create", "events.events.k8s.io",                            true,  false, false),
        ("create", "pods",                                            false, false, false),
        ("patch",  "pods",                                            false, false, false),
        ("delete", "pods",                                            false, false, false),
        ("update", "namespaces",                                      false, false, false),
        ("create", "authorizationpolicies.security.istio.io",         false, false, false),
        ("create", "serviceaccounts/token",                           false, false, false),
        ("create", "certificatesigningrequests.certificates.k8s.io",  false, false, false),
    ];
    for &(verb, resource, z, c, w) in matrix {
        assert_eq!(
            can(&plane, &ztunnel, verb, resource),
            z,
            "ztunnel {verb} {resource}"
        );
        assert_eq!(
            can(&plane, &cni, verb, resource),
            c,
            "istio-cni {verb} {resource}"
        );
        assert_eq!(
            can(&plane, &waypoint, verb, resource),
            w,
            "waypoint {verb} {resource}"
        );
    }
    // istio-cni reads its own DaemonSet (to tell an uninstall from a restart) and no other.
    let can_in = |token: &str, verb: &str, what: &str| {
        let out = plane
            .kubectl(
                token,
                &["auth", "can-i", verb, what, "-n", "istio-system"],
                None,
            )
            .unwrap();
        out.stdout.trim() == "yes"
    };
    assert!(can_in(&cni, "get", "daemonsets.apps/istio-cni-node"));
    assert!(!can_in(&cni, "get", "daemonsets.apps/ztunnel"));
    assert!(can_in(&cni, "watch", "daemonsets.apps/istio-cni-node"));
    assert!(!can_in(&cni, "list", "daemonsets.apps"));
    assert!(!can_in(&ztunnel, "get", "daemonsets.apps/istio-cni-node"));
}

/// helm: `$MESH_HELM`, or the one scripts/build-helm builds (or has cached).
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_HELM") {
        return path.into();
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-helm"))
        .output()
        .expect("scripts/build-helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs helm from the repository's root.
fn helm_in_repo(helm: &Path, args: &[&str]) -> std::process::Output {
    Command::new(helm)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// Objects by apiVersion/kind/namespace/name.
fn by_identity(objects: Vec<serde_json::Value>) -> BTreeMap<String, serde_json::Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        let key = format!(
            "{} {} {}/{}",
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default()
        );
        assert!(map.insert(key.clone(), object).is_none(), "{key} twice");
    }
    map
}

#[test]
fn helm_template_renders_the_plain_manifests() {
    let helm = helm();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        let command = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# helm "))
            .unwrap_or_else(|| panic!("{}: first line names the helm command", file.display()));
        let out = helm_in_repo(&helm, &command.split_whitespace().collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "helm {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = by_identity(documents(&String::from_utf8_lossy(&out.stdout)));
        let plain = by_identity(documents(&text));
        assert_eq!(
            rendered.keys().collect::<Vec<_>>(),
            plain.keys().collect::<Vec<_>>(),
            "{}: run scripts/render-manifests",
            file.display()
        );
        for (key, object) in &rendered {
            assert_eq!(
                object,
                &plain[key],
                "{key} in {}: run scripts/render-manifests",
                file.display()
            );
        }
    }
    // The chart's own defaults render the components and CRDs a plain install has.
    let chart = [
        "template",
        "ambient-mesh",
        "deploy/chart",
        "--kube-version",
        "1.37.2",
    ];
    let out = helm_in_repo(&helm, &chart);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let defaults = by_identity(documents(&String::from_utf8_lossy(&out.stdout)));
    for name in [
        "DaemonSet istio-system/ztunnel",
        "DaemonSet istio-system/istio-cni-node",
    ] {
        assert!(
            defaults.keys().any(|k| k.ends_with(name)),
            "{name} in the chart's defaults"
        );
    }
    assert_eq!(
        defaults
            .keys()
            .filter(|k| k.contains("CustomResourceDefinition"))
            .count(),
        10
    );

    // A misspelled value is an error naming it, not silently ignored.
    let out = helm_in_repo(
        &helm,
        &[&chart[..], &["--set", "ztunnel.drainSecond=5"]].concat(),
    );
    assert!(!out.status.success(), "a misspelled value was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'drainSecond' not allowed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
