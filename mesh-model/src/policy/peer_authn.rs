//! PeerAuthentication: which mTLS mode applies to a workload's port.

use std::sync::Arc;

use crate::config::istio::{MtlsMode, PeerAuthentication};
use crate::model::Workload;

use super::ROOT_NAMESPACE;

/// The effective mode for `port` of `workload`: the most specific policy that sets one
/// wins (port level, then workload selector, then namespace, then mesh); PERMISSIVE when
/// none does. Among several selector policies for one workload the first by name wins.
pub fn peer_authentication(
    policies: &[Arc<PeerAuthentication>],
    workload: &Workload,
    port: u16,
) -> MtlsMode {
    let in_namespace = |p: &&PeerAuthentication, namespace: &str| {
        p.metadata.namespace.as_deref() == Some(namespace)
    };
    let selects = |p: &&PeerAuthentication| {
        p.spec.selector.as_ref().is_some_and(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
        })
    };
    let mode_of = |p: &PeerAuthentication| p.spec.mtls.map(|m| m.mode).unwrap_or_default();

    let mut selected: Vec<&PeerAuthentication> = policies
        .iter()
        .map(|p| &**p)
        .filter(|p| in_namespace(p, &workload.namespace) && selects(p))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if let Some(policy) = selected.first() {
        let port_mode = policy
            .spec
            .port_level_mtls
            .get(&u32::from(port))
            .map(|m| m.mode);
        for mode in [port_mode.unwrap_or_default(), mode_of(policy)] {
            if mode != MtlsMode::Unset {
                return mode;
            }
        }
    }
    for namespace in [workload.namespace.as_str(), ROOT_NAMESPACE] {
        let scope = policies
            .iter()
            .map(|p| &**p)
            .find(|p| in_namespace(p, namespace) && p.spec.selector.is_none());
        if let Some(mode) = scope.map(mode_of).filter(|m| *m != MtlsMode::Unset) {
            return mode;
        }
    }
    MtlsMode::Permissive
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigObject, parse_documents};
    use mesh_core::identity::Identity;

    fn policies(yaml: &str) -> Vec<Arc<PeerAuthentication>> {
        parse_documents(Path::new("pa.yaml"), yaml)
            .valid()
            .unwrap()
            .into_iter()
            .filter_map(|o| match o {
                ConfigObject::PeerAuthentication(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn workload(namespace: &str, app: &str) -> Workload {
        Workload {
            name: app.into(),
            owner: Default::default(),
            namespace: namespace.into(),
            uid: None,
            identity: Identity::new("cluster.local", namespace, "default").unwrap(),
            node: "n1".into(),
            ips: vec!["10.244.1.2".parse().unwrap()],
            labels: [("app".to_string(), app.to_string())].into(),
            captured: true,
            named_ports: Default::default(),
            waypoint: None,
            waypoint_of: None,
        }
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: model-server-mtls, namespace: ml}
spec:
  selector: {matchLabels: {app: model-server}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
    9090: {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset, namespace: ml}
spec: {}
"#;

    #[test]
    fn the_most_specific_setting_wins() {
        let policies = policies(POLICIES);
        let cases = [
            (
                workload("ml", "model-server"),
                8080,
                MtlsMode::Disable,
                "port level",
            ),
            (
                workload("ml", "model-server"),
                9090,
                MtlsMode::Strict,
                "port UNSET falls back to the workload mode",
            ),
            (
                workload("ml", "model-server"),
                80,
                MtlsMode::Strict,
                "workload level",
            ),
            (
                workload("ml", "other"),
                8080,
                MtlsMode::Strict,
                "namespace UNSET falls back to the mesh",
            ),
            (
                workload("legacy", "old"),
                80,
                MtlsMode::Permissive,
                "namespace level",
            ),
        ];
        for (workload, port, expected, why) in cases {
            assert_eq!(
                peer_authentication(&policies, &workload, port),
                expected,
                "{why}"
            );
        }
        assert_eq!(
            peer_authentication(&[], &workload("shop", "web"), 80),
            MtlsMode::Permissive,
            "Istio's default"
        );
    }
}
