//! AuthorizationPolicies compiled once per configuration change, so a connection (or, at
//! the waypoint, a request) is checked against parsed networks, ports and matchers
//! instead of re-parsing the policy's strings every time.
//!
//! The L7 parts (methods, paths, hosts, request principals, other `when` keys) are kept
//! compiled too: ztunnel needs only to know they are there (an ALLOW rule with them never
//! matches at L4; a DENY rule's L4 parts still apply), the waypoint evaluates them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::istio::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `namespace/name`, for the access log.
    pub name: String,
    /// Its namespace (`istio-system` policies apply mesh-wide).
    pub namespace: String,
    /// ALLOW, DENY, AUDIT (CUSTOM never gets here: it is rejected, fail-closed).
    pub action: Action,
    /// Labels a workload must have (`None`: the whole namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// Attached with `targetRef(s)`: enforced at a waypoint or gateway, not by ztunnel.
    pub attached: bool,
    /// Its rules (none: matches nothing for ALLOW, as Istio).
    pub rules: Vec<CompiledRule>,
}

/// A compiled rule: some `from`, some `to` and every `when` must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// Sources (empty: any).
    pub from: Vec<CompiledSource>,
    /// Operations (empty: any).
    pub to: Vec<CompiledOperation>,
    /// Conditions.
    pub when: Vec<CompiledCondition>,
    /// Whether any part needs HTTP to be checked.
    pub needs_http: bool,
}

/// Istio's string match: `*` (anything present), `abc*`, `*abc`, or exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatcher {
    /// `*`.
    Any,
    /// `abc*`.
    Prefix(String),
    /// `*abc`.
    Suffix(String),
    /// `abc`.
    Exact(String),
}

impl StringMatcher {
    fn compile(pattern: &str) -> Self {
        if pattern == "*" {
            StringMatcher::Any
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatcher::Prefix(prefix.to_string())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatcher::Suffix(suffix.to_string())
        } else {
            StringMatcher::Exact(pattern.to_string())
        }
    }

    /// Whether `value` matches; an absent value matches nothing, not even `*`.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            StringMatcher::Any => true,
            StringMatcher::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatcher::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatcher::Exact(exact) => exact == value,
        }
    }
}

/// A positive list (if given, one must match) and a negative one (none may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matchers<T> {
    /// One of these must match, when there are any.
    pub positive: Vec<T>,
    /// None of these may match.
    pub negative: Vec<T>,
}

impl<T> Matchers<T> {
    fn compile(positive: &[String], negative: &[String], each: impl Fn(&str) -> T) -> Self {
        Matchers {
            positive: positive.iter().map(|p| each(p)).collect(),
            negative: negative.iter().map(|p| each(p)).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.positive.is_empty() && self.negative.is_empty()
    }

    /// Whether `value` passes both lists.
    pub fn check(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.positive.is_empty() || self.positive.iter().any(&matches))
            && !self.negative.iter().any(matches)
    }
}

/// An address or CIDR; `None` for one that does not parse, which matches nothing (so a typo
/// in an ALLOW list admits no one).
pub type IpMatcher = Option<IpNet>;

fn ip_block(text: &str) -> IpMatcher {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn ip_in(block: &IpMatcher, ip: IpAddr) -> bool {
    block.is_some_and(|net| net.contains(&ip))
}

/// A port; `None` for one that does not parse (matches nothing).
pub type PortMatcher = Option<u16>;

fn port(text: &str) -> PortMatcher {
    text.parse().ok()
}

/// `from[].source`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CompiledSource {
    pub principals: Matchers<StringMatcher>,
    pub namespaces: Matchers<StringMatcher>,
    pub service_accounts: Matchers<StringMatcher>,
    pub ip_blocks: Matchers<IpMatcher>,
    pub remote_ip_blocks: Matchers<IpMatcher>,
    /// JWT principals (L7).
    pub request_principals: Matchers<StringMatcher>,
}

/// `to[].operation`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CompiledOperation {
    pub ports: Matchers<PortMatcher>,
    /// L7.
    pub hosts: Matchers<StringMatcher>,
    /// L7.
    pub methods: Matchers<StringMatcher>,
    /// L7.
    pub paths: Matchers<StringMatcher>,
}

/// A `when` condition, compiled by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompiledCondition {
    /// `source.ip` / `remote.ip`.
    SourceIp(Matchers<IpMatcher>),
    /// `destination.ip`.
    DestinationIp(Matchers<IpMatcher>),
    /// `destination.port`.
    DestinationPort(Matchers<PortMatcher>),
    /// `source.namespace`.
    SourceNamespace(Matchers<StringMatcher>),
    /// `source.principal`.
    SourcePrincipal(Matchers<StringMatcher>),
    /// Any other key (request headers, JWT claims, ...): L7.
    Request {
        /// The key as written.
        key: String,
        /// Its values.
        values: Matchers<StringMatcher>,
    },
}

impl CompiledPolicy {
    /// Compiles `policy`.
    pub fn compile(policy: &AuthorizationPolicy) -> Self {
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        CompiledPolicy {
            name: format!(
                "{namespace}/{}",
                policy.metadata.name.as_deref().unwrap_or("")
            ),
            namespace,
            action: policy.spec.action,
            selector: policy
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone()),
            attached: policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty(),
            rules: policy.spec.rules.iter().map(compile_rule).collect(),
        }
    }
}

fn strings(positive: &[String], negative: &[String]) -> Matchers<StringMatcher> {
    Matchers::compile(positive, negative, StringMatcher::compile)
}

fn compile_rule(rule: &Rule) -> CompiledRule {
    let from: Vec<CompiledSource> = rule
        .from
        .iter()
        .map(|f| compile_source(&f.source))
        .collect();
    let to: Vec<CompiledOperation> = rule
        .to
        .iter()
        .map(|t| compile_operation(&t.operation))
        .collect();
    let when: Vec<CompiledCondition> = rule.when.iter().map(compile_condition).collect();
    let needs_http = from.iter().any(|s| !s.request_principals.is_empty())
        || to
            .iter()
            .any(|o| !(o.hosts.is_empty() && o.methods.is_empty() && o.paths.is_empty()))
        || when
            .iter()
            .any(|c| matches!(c, CompiledCondition::Request { .. }));
    CompiledRule {
        from,
        to,
        when,
        needs_http,
    }
}

fn compile_source(source: &Source) -> CompiledSource {
    CompiledSource {
        principals: strings(&source.principals, &source.not_principals),
        namespaces: strings(&source.namespaces, &source.not_namespaces),
        service_accounts: strings(&source.service_accounts, &source.not_service_accounts),
        ip_blocks: Matchers::compile(&source.ip_blocks, &source.not_ip_blocks, ip_block),
        remote_ip_blocks: Matchers::compile(
            &source.remote_ip_blocks,
            &source.not_remote_ip_blocks,
            ip_block,
        ),
        request_principals: strings(&source.request_principals, &source.not_request_principals),
    }
}

fn compile_operation(operation: &Operation) -> CompiledOperation {
    CompiledOperation {
        ports: Matchers::compile(&operation.ports, &operation.not_ports, port),
        hosts: strings(&operation.hosts, &operation.not_hosts),
        methods: strings(&operation.methods, &operation.not_methods),
        paths: strings(&operation.paths, &operation.not_paths),
    }
}

fn compile_condition(condition: &Condition) -> CompiledCondition {
    let (values, not_values) = (&condition.values, &condition.not_values);
    match condition.key.as_str() {
        "source.ip" | "remote.ip" => {
            CompiledCondition::SourceIp(Matchers::compile(values, not_values, ip_block))
        }
        "destination.ip" => {
            CompiledCondition::DestinationIp(Matchers::compile(values, not_values, ip_block))
        }
        "destination.port" => {
            CompiledCondition::DestinationPort(Matchers::compile(values, not_values, port))
        }
        "source.namespace" => CompiledCondition::SourceNamespace(strings(values, not_values)),
        "source.principal" => CompiledCondition::SourcePrincipal(strings(values, not_values)),
        key => CompiledCondition::Request {
            key: key.to_string(),
            values: strings(values, not_values),
        },
    }
}

/// The L4 facts of a connection, as the matchers read them (strings built once per
/// connection, not once per rule).
pub(crate) struct L4Facts<'a> {
    pub(crate) principal: Option<String>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) account: Option<String>,
    pub(crate) src_ip: IpAddr,
    pub(crate) dst_ip: IpAddr,
    pub(crate) dst_port: u16,
}

impl CompiledRule {
    /// Whether this rule matches at L4 for `action`: an ALLOW rule needing HTTP never does;
    /// otherwise its L4 parts decide (a DENY rule's HTTP parts are dropped: it denies more,
    /// never less).
    pub(crate) fn matches_l4(&self, facts: &L4Facts<'_>, action: Action) -> bool {
        if self.needs_http && action == Action::Allow {
            return false;
        }
        let from = self.from.is_empty() || self.from.iter().any(|s| s.matches_l4(facts));
        let to = self.to.is_empty()
            || self
                .to
                .iter()
                .any(|o| o.ports.check(|p| *p == Some(facts.dst_port)));
        let when = self.when.iter().all(|c| c.matches_l4(facts));
        from && to && when
    }
}

impl CompiledSource {
    fn matches_l4(&self, facts: &L4Facts<'_>) -> bool {
        self.principals
            .check(|m| m.matches(facts.principal.as_deref()))
            && self.namespaces.check(|m| m.matches(facts.namespace))
            && self
                .service_accounts
                .check(|m| m.matches(facts.account.as_deref()))
            && self.ip_blocks.check(|b| ip_in(b, facts.src_ip))
            && self.remote_ip_blocks.check(|b| ip_in(b, facts.src_ip))
    }
}

impl CompiledCondition {
    /// L7 conditions count as met here (they are dropped at L4; an ALLOW rule with one was
    /// already refused).
    fn matches_l4(&self, facts: &L4Facts<'_>) -> bool {
        match self {
            CompiledCondition::SourceIp(m) => m.check(|b| ip_in(b, facts.src_ip)),
            CompiledCondition::DestinationIp(m) => m.check(|b| ip_in(b, facts.dst_ip)),
            CompiledCondition::DestinationPort(m) => m.check(|p| *p == Some(facts.dst_port)),
            CompiledCondition::SourceNamespace(m) => m.check(|s| s.matches(facts.namespace)),
            CompiledCondition::SourcePrincipal(m) => {
                m.check(|s| s.matches(facts.principal.as_deref()))
            }
            CompiledCondition::Request { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_istio() {
        let id = Some("cluster.local/ns/shop/sa/web");
        for (pattern, expected) in [
            ("*", true),
            ("cluster.local/ns/shop/sa/web", true),
            ("cluster.local/ns/shop/*", true),
            ("*/sa/web", true),
            ("cluster.local/ns/other/*", false),
            ("cluster.local/ns/shop/sa/we", false),
        ] {
            assert_eq!(
                StringMatcher::compile(pattern).matches(id),
                expected,
                "{pattern}"
            );
        }
        assert!(
            !StringMatcher::compile("*").matches(None),
            "plaintext has no principal, even for *"
        );
    }

    #[test]
    fn ip_blocks_and_ports() {
        let ip: IpAddr = "10.244.1.7".parse().unwrap();
        assert!(ip_in(&ip_block("10.244.1.0/24"), ip));
        assert!(ip_in(&ip_block("10.244.1.7"), ip));
        assert!(!ip_in(&ip_block("10.244.2.0/24"), ip));
        assert!(
            !ip_in(&ip_block("10.244.1.0/33"), ip),
            "a typo matches nothing"
        );
        assert_eq!(port("8080"), Some(8080));
        assert_eq!(port("http"), None);
    }
}
