//! What becomes of a configuration object the mesh cannot use as written.
//!
//! It is never skipped in silence: it is reported (file or object, and the field or value
//! at fault) in the snapshot's errors, which the binaries log, count and show in their
//! config dump. And a security policy never fails open: a rejected AuthorizationPolicy is
//! replaced by a stand-in that denies everything to the workloads it selects (its whole
//! namespace when even its selector cannot be read), a rejected PeerAuthentication by one
//! that requires mutual TLS. Istio treats policies it cannot enforce the same way.

use serde::Deserialize;

use super::istio::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Mtls, MtlsMode, PeerAuthentication,
    PeerAuthenticationSpec, Rule, WorkloadSelector,
};
use super::{ConfigError, ConfigObject, ObjectKey};

/// A document or object refused, and what the mesh enforces in its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Where and why.
    pub error: ConfigError,
    /// The object it was meant to be, when its kind and name could be read.
    pub key: Option<ObjectKey>,
    /// What stands in for it: a fail-closed policy, for the security kinds.
    pub stand_in: Option<ConfigObject>,
}

/// Why an object that parsed still cannot be enforced as written, if it cannot.
pub fn unenforceable(object: &ConfigObject) -> Option<String> {
    match object {
        ConfigObject::AuthorizationPolicy(policy) if policy.spec.action == Action::Custom => {
            Some("action CUSTOM delegates to an external authorizer, which this mesh does not run; the policy denies everything to the workloads it selects instead".into())
        }
        _ => None,
    }
}

/// The parts of an object read without judging the rest: enough to say which object it
/// was and which workloads a stand-in must cover.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Outline {
    #[serde(default)]
    metadata: OutlineMeta,
    #[serde(default)]
    spec: Option<OutlineSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct OutlineMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct OutlineSpec {
    #[serde(default)]
    selector: Option<WorkloadSelector>,
}

/// Only the metadata, for when the selector itself is malformed.
#[derive(Debug, Default, Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: OutlineMeta,
}

impl Outline {
    /// The outline of an object as JSON (from the API server, or a file's document).
    pub(crate) fn from_json(value: &serde_json::Value) -> Outline {
        Outline::deserialize(value).unwrap_or_else(|_| Outline {
            metadata: MetaOnly::deserialize(value)
                .map(|m| m.metadata)
                .unwrap_or_default(),
            spec: None,
        })
    }

    /// The object's key, when its name is readable.
    pub(crate) fn key(&self, kind: &'static str) -> Option<ObjectKey> {
        let name = self.metadata.name.clone().filter(|n| !n.is_empty())?;
        let cluster_scoped = matches!(kind, "Namespace" | "Node");
        Some(ObjectKey {
            kind,
            namespace: if cluster_scoped {
                "".into()
            } else {
                self.metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("default")
                    .into()
            },
            name: name.into(),
        })
    }

    /// The fail-closed stand-in for a rejected object of `kind`, for the security kinds.
    pub(crate) fn stand_in(&self, kind: &'static str) -> Option<ConfigObject> {
        let key = self.key(kind)?;
        let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(key.name.to_string()),
            namespace: Some(key.namespace.to_string()),
            ..Default::default()
        };
        let selector = self.spec.as_ref().and_then(|s| s.selector.clone());
        match kind {
            "AuthorizationPolicy" => Some(ConfigObject::from(AuthorizationPolicy {
                api_version: "security.istio.io/v1".into(),
                kind: kind.into(),
                metadata,
                spec: AuthorizationPolicySpec {
                    selector,
                    action: Action::Deny,
                    // One rule with no condition: matches every connection.
                    rules: vec![Rule::default()],
                    ..Default::default()
                },
            })),
            "PeerAuthentication" => Some(ConfigObject::from(PeerAuthentication {
                api_version: "security.istio.io/v1".into(),
                kind: kind.into(),
                metadata,
                spec: PeerAuthenticationSpec {
                    selector,
                    mtls: Some(Mtls {
                        mode: MtlsMode::Strict,
                    }),
                    ..Default::default()
                },
            })),
            _ => None,
        }
    }
}
