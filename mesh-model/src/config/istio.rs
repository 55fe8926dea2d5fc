//! Istio's security resources as users write them (`security.istio.io/v1` and `v1beta1`).
//!
//! Every struct rejects unknown fields, so a typo (`acton: DENY`) is an error naming the
//! field instead of a policy silently doing something else.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Label selector as Istio uses it (`matchLabels` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A Gateway API style reference to what a policy attaches to (waypoints, later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target.
    #[serde(default)]
    pub group: String,
    /// Kind of the target.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// What an AuthorizationPolicy does when a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests (and, when any ALLOW policy applies, deny the rest).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit matching requests (no effect on the decision).
    Audit,
    /// Delegate to an external authorizer.
    Custom,
}

/// `AuthorizationPolicy.spec.rules[].from[].source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// `AuthorizationPolicy.spec.rules[].to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// Who the request comes from.
    #[serde(default)]
    pub source: Source,
}

/// `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// What the request does.
    #[serde(default)]
    pub operation: Operation,
}

/// `when` condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute name, e.g. `source.ip`, `request.headers[x-user]`.
    pub key: String,
    /// Values that match.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values that do not match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// One rule: all of `from`, `to` and `when` must match (each list is an OR).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources; empty matches any.
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations; empty matches any.
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions; empty matches any.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// External authorizer reference for `action: CUSTOM`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name from mesh config.
    pub name: String,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace it applies to; absent = all.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Attach to a resource instead of selecting workloads.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to several resources.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// What a match does.
    #[serde(default)]
    pub action: Action,
    /// External authorizer, for CUSTOM.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
    /// The rules; none at all with ALLOW denies everything.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// mTLS mode of a PeerAuthentication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Both mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

/// An mTLS setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Which workloads; absent = the namespace (or the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The workload-wide mode.
    #[serde(default)]
    pub mtls: Option<Mtls>,
    /// Per-port modes (only with a selector).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, Mtls>,
}

/// `security.istio.io` AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

/// `security.istio.io` PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `PeerAuthentication`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

/// `security.istio.io` RequestAuthentication: which JWTs a workload accepts (checked at
/// the waypoint; an invalid token is refused, a missing one is left to
/// AuthorizationPolicy's `requestPrincipals`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `RequestAuthentication`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The rules.
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads it applies to (its whole namespace when absent).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// A Gateway or Service it applies to (waypoints).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several of those.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted issuers and how to find and check their tokens.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss` the token must carry.
    pub issuer: String,
    /// `aud` values accepted (any, when empty).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the issuer's keys are published.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The keys inline (a JWKS document).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers the token may come in (default `Authorization: Bearer`).
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may come in.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies the token may come in.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header to pass the verified payload in (base64url).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token on the request after verification.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims to copy into headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching the keys may take (`5s`).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (`Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name.
    pub claim: String,
}
