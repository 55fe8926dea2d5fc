//! AuthorizationPolicy at L4, over policies compiled once ([`super::compiled`]).

use std::sync::Arc;

use crate::config::istio::Action;
use crate::model::Workload;

use super::compiled::{CompiledPolicy, L4Facts};
use super::{Connection, Decision, ROOT_NAMESPACE};

/// Decides whether `conn` may reach `dst` under `policies` (all policies of the mesh).
pub fn authorize(policies: &[Arc<CompiledPolicy>], dst: &Workload, conn: &Connection) -> Decision {
    let facts = L4Facts {
        principal: conn.src_identity.as_ref().map(principal_of),
        namespace: conn.src_identity.as_ref().map(|id| id.namespace()),
        account: conn
            .src_identity
            .as_ref()
            .map(|id| format!("{}/{}", id.namespace(), id.service_account())),
        src_ip: conn.src_ip,
        dst_ip: conn.dst_ip,
        dst_port: conn.dst_port,
    };
    let applicable = || policies.iter().filter(|p| applies_to(p, dst));
    for policy in applicable().filter(|p| p.action == Action::Deny) {
        if policy
            .rules
            .iter()
            .any(|rule| rule.matches_l4(&facts, Action::Deny))
        {
            return Decision::DeniedBy(policy.name.clone());
        }
    }
    let mut allows = applicable()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    for policy in allows {
        if policy
            .rules
            .iter()
            .any(|rule| rule.matches_l4(&facts, Action::Allow))
        {
            return Decision::Allow(Some(policy.name.clone()));
        }
    }
    Decision::NotAllowed
}

/// Policies of the workload's namespace or the root namespace, whose selector (if any)
/// matches its labels. Policies attached with targetRef(s) are for waypoints and gateways.
fn applies_to(policy: &CompiledPolicy, dst: &Workload) -> bool {
    if policy.namespace != dst.namespace && policy.namespace != ROOT_NAMESPACE {
        return false;
    }
    if policy.attached {
        return false;
    }
    policy
        .selector
        .as_ref()
        .is_none_or(|selector| selector.iter().all(|(k, v)| dst.labels.get(k) == Some(v)))
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
