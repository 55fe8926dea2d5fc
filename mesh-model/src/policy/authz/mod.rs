//! AuthorizationPolicy at L4.

use std::sync::Arc;

use crate::config::istio::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};
use crate::model::Workload;

use super::matching::{ip_matches, list_matches, port_matches, string_matches};
use super::{Connection, Decision, ROOT_NAMESPACE};

/// Decides whether `conn` may reach `dst` under `policies` (all policies of the mesh).
pub fn authorize(
    policies: &[Arc<AuthorizationPolicy>],
    dst: &Workload,
    conn: &Connection,
) -> Decision {
    let applicable: Vec<&AuthorizationPolicy> = policies
        .iter()
        .map(|p| &**p)
        .filter(|p| applies_to(p, dst))
        .collect();
    for policy in applicable.iter().filter(|p| p.spec.action == Action::Deny) {
        if policy
            .spec
            .rules
            .iter()
            .any(|rule| rule_matches(rule, conn, Action::Deny))
        {
            return Decision::DeniedBy(policy_name(policy));
        }
    }
    let allows: Vec<&&AuthorizationPolicy> = applicable
        .iter()
        .filter(|p| p.spec.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return Decision::Allow(None);
    }
    for policy in allows {
        if policy
            .spec
            .rules
            .iter()
            .any(|rule| rule_matches(rule, conn, Action::Allow))
        {
            return Decision::Allow(Some(policy_name(policy)));
        }
    }
    Decision::NotAllowed
}

fn policy_name(policy: &AuthorizationPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or("")
    )
}

/// Policies of the workload's namespace or the root namespace, whose selector (if any)
/// matches its labels. Policies attached with targetRef(s) are for waypoints and gateways.
fn applies_to(policy: &AuthorizationPolicy, dst: &Workload) -> bool {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    if namespace != dst.namespace && namespace != ROOT_NAMESPACE {
        return false;
    }
    if policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty() {
        return false;
    }
    policy.spec.selector.as_ref().is_none_or(|selector| {
        selector
            .match_labels
            .iter()
            .all(|(k, v)| dst.labels.get(k) == Some(v))
    })
}

/// A rule matches when some `from`, some `to` and every `when` match (absent = any).
fn rule_matches(rule: &Rule, conn: &Connection, action: Action) -> bool {
    let has_http = rule.to.iter().any(|to| has_http_operation(&to.operation))
        || rule.from.iter().any(|from| has_http_source(&from.source))
        || rule.when.iter().any(|condition| !is_l4_key(&condition.key));
    if has_http && action == Action::Allow {
        return false;
    }
    let from = rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|from| source_matches(&from.source, conn));
    let to = rule.to.is_empty()
        || rule
            .to
            .iter()
            .any(|to| operation_matches(&to.operation, conn));
    let when = rule
        .when
        .iter()
        .filter(|c| is_l4_key(&c.key))
        .all(|c| condition_matches(c, conn));
    from && to && when
}

fn has_http_source(source: &Source) -> bool {
    !source.request_principals.is_empty() || !source.not_request_principals.is_empty()
}

fn has_http_operation(operation: &Operation) -> bool {
    !(operation.hosts.is_empty()
        && operation.not_hosts.is_empty()
        && operation.methods.is_empty()
        && operation.not_methods.is_empty()
        && operation.paths.is_empty()
        && operation.not_paths.is_empty())
}

fn is_l4_key(key: &str) -> bool {
    matches!(
        key,
        "source.ip"
            | "remote.ip"
            | "source.namespace"
            | "source.principal"
            | "destination.ip"
            | "destination.port"
    )
}

fn source_matches(source: &Source, conn: &Connection) -> bool {
    let principal = conn.src_identity.as_ref().map(principal_of);
    let namespace = conn
        .src_identity
        .as_ref()
        .map(|id| id.namespace().to_string());
    let account = conn
        .src_identity
        .as_ref()
        .map(|id| format!("{}/{}", id.namespace(), id.service_account()));
    strings(
        &source.principals,
        &source.not_principals,
        principal.as_deref(),
    ) && strings(
        &source.namespaces,
        &source.not_namespaces,
        namespace.as_deref(),
    ) && strings(
        &source.service_accounts,
        &source.not_service_accounts,
        account.as_deref(),
    ) && list_matches(
        &source.ip_blocks,
        &source.not_ip_blocks,
        conn.src_ip,
        ip_matches,
    ) && list_matches(
        &source.remote_ip_blocks,
        &source.not_remote_ip_blocks,
        conn.src_ip,
        ip_matches,
    )
}

fn operation_matches(operation: &Operation, conn: &Connection) -> bool {
    list_matches(
        &operation.ports,
        &operation.not_ports,
        conn.dst_port,
        port_matches,
    )
}

fn condition_matches(condition: &Condition, conn: &Connection) -> bool {
    let value = match condition.key.as_str() {
        "source.ip" | "remote.ip" => {
            return list_matches(
                &condition.values,
                &condition.not_values,
                conn.src_ip,
                ip_matches,
            );
        }
        "destination.ip" => {
            return list_matches(
                &condition.values,
                &condition.not_values,
                conn.dst_ip,
                ip_matches,
            );
        }
        "destination.port" => {
            return list_matches(
                &condition.values,
                &condition.not_values,
                conn.dst_port,
                port_matches,
            );
        }
        "source.namespace" => conn
            .src_identity
            .as_ref()
            .map(|id| id.namespace().to_string()),
        "source.principal" => conn.src_identity.as_ref().map(principal_of),
        _ => None,
    };
    strings(&condition.values, &condition.not_values, value.as_deref())
}

fn strings(positive: &[String], negative: &[String], value: Option<&str>) -> bool {
    list_matches(positive, negative, value, string_matches)
}

/// Istio writes principals without the scheme: `cluster.local/ns/shop/sa/web`.
fn principal_of(identity: &mesh_core::identity::Identity) -> String {
    identity
        .to_string()
        .trim_start_matches("spiffe://")
        .to_string()
}

#[cfg(test)]
mod tests;
