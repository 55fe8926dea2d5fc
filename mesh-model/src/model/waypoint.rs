//! Waypoints and which traffic they handle, resolved as Istio's ambient mode does.
//!
//! * A waypoint is a Gateway API `Gateway` of class `istio-waypoint` that has an address in
//!   its status (the controller writes one once a waypoint pod is ready; before that, it
//!   does not count).
//! * `istio.io/use-waypoint: <name>` (and `istio.io/use-waypoint-namespace`) on a Pod or
//!   Service binds it; the object's own label decides before its namespace's; `none` opts
//!   out. An object whose own label names a waypoint that is missing, not ready, of the
//!   wrong traffic type or closed to its namespace gets no waypoint: Istio does not fall back
//!   to the namespace's then either.
//! * The Gateway's `istio.io/waypoint-for` (else its class's, else `service`) says what may
//!   bind: a Service needs `service` or `all`, a workload `workload` or `all`.
//! * The waypoint's HBONE listener's `allowedRoutes.namespaces` says which namespaces may
//!   use it (`Same` by default).
//! * A waypoint's own pods and Service are never bound.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::NamespacedName;
use crate::config::gateway_api::{FromNamespaces, Gateway, GatewayClass};

/// The label that binds a Pod, Service or Namespace to a waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The label that names the namespace of the waypoint `istio.io/use-waypoint` names.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// The label on a Gateway (or its class) saying what traffic it handles.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The GatewayClass of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The label the controller puts on a Gateway's pods and Service.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The label (with [`MESH_CONTROLLER`]) marking what the waypoint controller rendered.
pub const GATEWAY_MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// The value of [`GATEWAY_MANAGED_LABEL`] on a waypoint's objects.
pub const MESH_CONTROLLER: &str = "istio.io-mesh-controller";

/// What traffic a waypoint handles (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaypointFor {
    /// Traffic addressed to Services that use it (the default).
    #[default]
    Service,
    /// Traffic addressed to pods that use it.
    Workload,
    /// Both.
    All,
    /// Neither (it binds nothing).
    None,
}

impl WaypointFor {
    /// The label's value; an unknown value binds nothing (`None`), as a typo must not
    /// route traffic somewhere unexpected.
    pub fn parse(value: &str) -> Self {
        match value {
            "service" => WaypointFor::Service,
            "workload" => WaypointFor::Workload,
            "all" => WaypointFor::All,
            _ => WaypointFor::None,
        }
    }

    fn allows(self, target: Target) -> bool {
        matches!(
            (self, target),
            (WaypointFor::All, _)
                | (WaypointFor::Service, Target::Service)
                | (WaypointFor::Workload, Target::Workload)
        )
    }
}

/// Where a waypoint is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaypointAddress {
    /// An IP (its Service's ClusterIP).
    Ip(IpAddr),
    /// A hostname (its Service's, `waypoint.ns.svc.cluster.local`); preferred when given.
    Hostname(String),
}

/// Which namespaces may use a waypoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Attachment {
    /// Its own namespace only (the default).
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match.
    Selector(LabelSelector),
    /// None.
    Nobody,
}

/// A waypoint: a Gateway of class `istio-waypoint` that has an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Waypoint {
    /// The Gateway.
    pub gateway: NamespacedName,
    /// Where it is reached.
    pub address: WaypointAddress,
    /// What traffic may bind to it.
    pub traffic: WaypointFor,
    /// Which namespaces may use it.
    pub attachment: Attachment,
}

// `LabelSelector` has no `Eq`; equality of selectors is structural anyway.
impl Eq for Waypoint {}

impl Waypoint {
    /// The waypoint `gateway` is, if it is one: class `istio-waypoint` and an address in its
    /// status. `class` is its GatewayClass, whose `istio.io/waypoint-for` is the default.
    pub fn from_gateway(gateway: &Gateway, class: Option<&GatewayClass>) -> Option<Self> {
        if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
            return None;
        }
        let addresses = &gateway.status.as_ref()?.addresses;
        let hostname = addresses
            .iter()
            .find(|a| a.type_.as_deref() == Some("Hostname"))
            .map(|a| WaypointAddress::Hostname(a.value.clone()));
        let address = hostname.or_else(|| {
            addresses
                .iter()
                .filter(|a| a.type_.as_deref().is_none_or(|t| t == "IPAddress"))
                .find_map(|a| a.value.parse().ok().map(WaypointAddress::Ip))
        })?;
        let label = |labels: Option<&BTreeMap<String, String>>| {
            labels.and_then(|l| l.get(WAYPOINT_FOR_LABEL)).cloned()
        };
        let traffic = label(gateway.metadata.labels.as_ref())
            .or_else(|| class.and_then(|c| label(c.metadata.labels.as_ref())))
            .map_or(WaypointFor::Service, |v| WaypointFor::parse(&v));
        let hbone = gateway
            .spec
            .listeners
            .iter()
            .find(|l| l.protocol == "HBONE" && l.port == mesh_core::hbone::HBONE_PORT);
        let namespaces = hbone
            .and_then(|l| l.allowed_routes.as_ref())
            .and_then(|r| r.namespaces.as_ref());
        let attachment = match namespaces.and_then(|n| n.from) {
            None | Some(FromNamespaces::Same) => Attachment::Same,
            Some(FromNamespaces::All) => Attachment::All,
            Some(FromNamespaces::None) => Attachment::Nobody,
            Some(FromNamespaces::Selector) => Attachment::Selector(
                namespaces
                    .and_then(|n| n.selector.clone())
                    .unwrap_or_default(),
            ),
        };
        Some(Waypoint {
            gateway: NamespacedName::new(
                gateway.metadata.namespace.clone().unwrap_or_default(),
                gateway.metadata.name.clone().unwrap_or_default(),
            ),
            address,
            traffic,
            attachment,
        })
    }

    fn admits(&self, namespace: &str, namespace_labels: &BTreeMap<String, String>) -> bool {
        match &self.attachment {
            Attachment::Same => &*self.gateway.namespace == namespace,
            Attachment::All => true,
            Attachment::Selector(selector) => selector_matches(selector, namespace_labels),
            Attachment::Nobody => false,
        }
    }
}

/// What is being bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Service (traffic addressed to its VIP or hostname).
    Service,
    /// A workload (traffic addressed to its pod IP).
    Workload,
}

/// Why an object that asks for a waypoint has none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unbound {
    /// The named Gateway is missing, not a waypoint, or has no address yet.
    #[error("waypoint {0} is not ready (missing, not of class istio-waypoint, or no address)")]
    NotReady(NamespacedName),
    /// The waypoint does not handle this kind of traffic (`istio.io/waypoint-for`).
    #[error("waypoint {waypoint} does not handle {target:?} traffic")]
    WrongTraffic {
        /// The waypoint.
        waypoint: NamespacedName,
        /// What asked for it.
        target: Target,
    },
    /// The waypoint's listener does not admit this namespace.
    #[error("waypoint {0} does not admit this namespace (allowedRoutes)")]
    NotAdmitted(NamespacedName),
}

/// The object being bound, as far as binding reads it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// What it is.
    pub target: Target,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its namespace's labels.
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Whether it is a waypoint's own pod or Service (see [`waypoint_instance_of`]).
    pub is_waypoint: bool,
}

/// The waypoint `subject` is bound to: `Ok(None)` when it asks for none (or opts out),
/// `Err` when it asks for one it cannot have.
pub fn bind(
    subject: Subject<'_>,
    waypoints: &BTreeMap<NamespacedName, Arc<Waypoint>>,
) -> Result<Option<Arc<Waypoint>>, Unbound> {
    if subject.is_waypoint {
        return Ok(None);
    }
    let named = match use_waypoint(subject.labels, subject.namespace) {
        Asked::OptedOut => return Ok(None),
        Asked::Waypoint(named) => named,
        Asked::Nothing => match use_waypoint(subject.namespace_labels, subject.namespace) {
            Asked::Waypoint(named) => named,
            Asked::OptedOut | Asked::Nothing => return Ok(None),
        },
    };
    let waypoint = waypoints
        .get(&named)
        .ok_or_else(|| Unbound::NotReady(named.clone()))?;
    if !waypoint.admits(subject.namespace, subject.namespace_labels) {
        return Err(Unbound::NotAdmitted(named));
    }
    if !waypoint.traffic.allows(subject.target) {
        return Err(Unbound::WrongTraffic {
            waypoint: named,
            target: subject.target,
        });
    }
    Ok(Some(waypoint.clone()))
}

/// The waypoint Gateway a pod or Service with these labels belongs to, if it is a
/// waypoint's own: the controller labels what it renders with the Gateway's name, and
/// (Services) as managed by the mesh controller. `is_waypoint_gateway` says whether the
/// Gateway of that name in the object's namespace is of class `istio-waypoint`.
pub fn waypoint_instance_of(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    is_waypoint_gateway: impl FnOnce(&str) -> bool,
) -> Option<NamespacedName> {
    let name = labels.get(GATEWAY_NAME_LABEL)?;
    let managed = labels.get(GATEWAY_MANAGED_LABEL).map(String::as_str) == Some(MESH_CONTROLLER);
    (managed || is_waypoint_gateway(name)).then(|| NamespacedName::new(namespace, name.as_str()))
}

enum Asked {
    Nothing,
    OptedOut,
    Waypoint(NamespacedName),
}

fn use_waypoint(labels: &BTreeMap<String, String>, default_namespace: &str) -> Asked {
    match labels.get(USE_WAYPOINT_LABEL) {
        None => Asked::Nothing,
        Some(name) if name == "none" => Asked::OptedOut,
        Some(name) => Asked::Waypoint(NamespacedName::new(
            labels
                .get(USE_WAYPOINT_NAMESPACE_LABEL)
                .map_or(default_namespace, String::as_str),
            name.as_str(),
        )),
    }
}

/// Kubernetes label selector semantics: every `matchLabels` pair, every expression.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

#[cfg(test)]
mod tests;
