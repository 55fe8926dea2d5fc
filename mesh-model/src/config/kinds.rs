//! The one place a kind is defined: its Rust type, API group and versions, scope, which
//! components watch it and how the API source reads it. Adding a kind is one entry in
//! [`registry!`]'s invocation below; the object enum, the parsers (YAML files, API JSON), the
//! store's typed accessors and the API watchers are generated from it.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Interest, gateway_api, gateway_routes, istio, istio_networking};

/// How the API source reads a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs {
    /// Through its `k8s-openapi` type (core kinds, validated by the API server).
    Typed,
    /// As a dynamic object, then through the mesh's strict type: one object that does not
    /// fit is rejected on its own instead of failing the whole watch (custom resources).
    Dynamic,
}

/// What the registry knows about a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// How the store and messages name it: the `kind:` as written, qualified by group where
    /// two groups use the same kind (`Gateway.networking.istio.io`).
    pub name: &'static str,
    /// The `kind:` as written.
    pub kind: &'static str,
    /// API group (empty for core).
    pub group: &'static str,
    /// Versions the mesh reads, preferred first (the API source watches that one); a known
    /// kind in another version is refused, not skipped.
    pub versions: &'static [&'static str],
    /// Whether objects live in a namespace (`default` when a file leaves it out).
    pub namespaced: bool,
    /// The narrowest interest that watches it: `Capture` kinds are watched by everyone.
    pub interest: Interest,
    /// How the API source reads it.
    pub read_as: ReadAs,
}

impl KindInfo {
    /// Whether a component with `interest` watches this kind: each interest includes the
    /// narrower ones (capture < proxy < waypoint).
    pub fn watched_by(&self, interest: Interest) -> bool {
        let rank = |i: Interest| match i {
            Interest::Capture => 0,
            Interest::Proxy => 1,
            Interest::Waypoint => 2,
        };
        rank(self.interest) <= rank(interest)
    }

    /// The registry entry for `kind:` in `group`.
    pub fn find(group: &str, kind: &str) -> Option<&'static KindInfo> {
        KINDS.iter().find(|k| k.group == group && k.kind == kind)
    }
}

/// A Rust type the registry knows as a kind.
pub trait Kind: Sized + Clone + 'static {
    /// Its registry entry (a constant: looking a kind up costs nothing on the hot path).
    const INFO: KindInfo;

    /// Its registry entry.
    fn info() -> &'static KindInfo {
        &Self::INFO
    }
    /// Wraps a shared object.
    fn wrap(object: Arc<Self>) -> ConfigObject;
    /// The object, if `object` is of this kind.
    fn get(object: &ConfigObject) -> Option<&Arc<Self>>;
}

/// Generates [`ConfigObject`], [`KINDS`] and the [`Kind`] impls from one list.
macro_rules! registry {
    ($(
        $(#[$doc:meta])*
        $variant:ident($ty:ty) {
            name: $name:literal, kind: $kind:literal, group: $group:literal,
            versions: [$($version:literal),+], namespaced: $namespaced:literal,
            interest: $interest:ident, read_as: $read_as:ident $(,)?
        }
    )+) => {
        /// A configuration object the mesh understands, shared: a change replaces the
        /// `Arc`, so snapshots and the model share unchanged objects instead of copying them.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ConfigObject {
            $( $(#[$doc])* $variant(Arc<$ty>), )+
        }

        /// Every kind the mesh reads.
        pub const KINDS: &[KindInfo] = &[$( <$ty as Kind>::INFO, )+];

        $(
            impl Kind for $ty {
                const INFO: KindInfo = KindInfo {
                    name: $name,
                    kind: $kind,
                    group: $group,
                    versions: &[$($version),+],
                    namespaced: $namespaced,
                    interest: Interest::$interest,
                    read_as: ReadAs::$read_as,
                };
                fn wrap(object: Arc<Self>) -> ConfigObject {
                    ConfigObject::$variant(object)
                }
                fn get(object: &ConfigObject) -> Option<&Arc<Self>> {
                    match object {
                        ConfigObject::$variant(o) => Some(o),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )+

        impl ConfigObject {
            /// Its registry entry.
            pub fn info(&self) -> &'static KindInfo {
                match self { $( ConfigObject::$variant(_) => <$ty as Kind>::info(), )+ }
            }

            /// Whether `other` is the same object: the same `Arc`, or equal.
            pub fn same_as(&self, other: &ConfigObject) -> bool {
                match (self, other) {
                    $( (ConfigObject::$variant(a), ConfigObject::$variant(b)) => Arc::ptr_eq(a, b) || a == b, )+
                    #[allow(unreachable_patterns)]
                    _ => false,
                }
            }

            /// Its metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $( ConfigObject::$variant(o) => &o.metadata, )+ }
            }

            /// Its metadata, to change (copies the object if it is shared).
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $( ConfigObject::$variant(o) => &mut Arc::make_mut(o).metadata, )+ }
            }

            /// The object as JSON, as the API would hold it.
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $( ConfigObject::$variant(o) => serde_json::to_value(&**o).unwrap_or_default(), )+
                }
            }

            /// Decodes one object of kind `info` from JSON: the API's, or a file's YAML
            /// document turned into JSON first (as `kubectl apply` does), so both sources
            /// decode the same way and each type's decoder is compiled once. An error names
            /// the field (`spec.http[0].route[0]: unknown field ...`).
            pub(crate) fn from_json(info: &KindInfo, value: &serde_json::Value) -> Result<Self, String> {
                let at_field = |e: serde_path_to_error::Error<serde_json::Error>| {
                    let path = e.path().to_string();
                    if path == "." {
                        e.into_inner().to_string()
                    } else {
                        format!("{path}: {}", e.into_inner())
                    }
                };
                match info.name {
                    $( $name => serde_path_to_error::deserialize(value)
                        .map(|o| ConfigObject::$variant(Arc::new(o)))
                        .map_err(at_field), )+
                    other => unreachable!("{other} is not registered"),
                }
            }
        }

        /// Starts the API watcher of each kind `interest` watches.
        pub(crate) fn spawn_watchers(
            client: &kube::Client,
            interest: Interest,
            sink: &super::kube_source::Sink,
        ) {
            $(
                let info = <$ty as Kind>::info();
                if info.watched_by(interest) {
                    registry!(@spawn $read_as, $ty, client, info, sink);
                }
            )+
        }
    };
    (@spawn Typed, $ty:ty, $client:ident, $info:ident, $sink:ident) => {
        super::kube_source::spawn_typed::<$ty>($client, $info, $sink.clone())
    };
    (@spawn Dynamic, $ty:ty, $client:ident, $info:ident, $sink:ident) => {
        super::kube_source::spawn_dynamic($client, $info, $sink.clone())
    };
}

registry! {
    /// A namespace: its labels put pods in the mesh and bind waypoints.
    Namespace(core::Namespace) {
        name: "Namespace", kind: "Namespace", group: "", versions: ["v1"],
        namespaced: false, interest: Capture, read_as: Typed,
    }
    /// A pod: a workload.
    Pod(core::Pod) {
        name: "Pod", kind: "Pod", group: "", versions: ["v1"],
        namespaced: true, interest: Capture, read_as: Typed,
    }
    /// A node.
    Node(core::Node) {
        name: "Node", kind: "Node", group: "", versions: ["v1"],
        namespaced: false, interest: Proxy, read_as: Typed,
    }
    /// A service: VIPs, ports, a hostname.
    Service(core::Service) {
        name: "Service", kind: "Service", group: "", versions: ["v1"],
        namespaced: true, interest: Proxy, read_as: Typed,
    }
    /// The endpoints of a service without a selector.
    EndpointSlice(discovery::EndpointSlice) {
        name: "EndpointSlice", kind: "EndpointSlice", group: "discovery.k8s.io",
        versions: ["v1"], namespaced: true, interest: Proxy, read_as: Typed,
    }
    /// A service account: an identity.
    ServiceAccount(core::ServiceAccount) {
        name: "ServiceAccount", kind: "ServiceAccount", group: "", versions: ["v1"],
        namespaced: true, interest: Proxy, read_as: Typed,
    }
    /// L4 (and, at waypoints, L7) authorization.
    AuthorizationPolicy(istio::AuthorizationPolicy) {
        name: "AuthorizationPolicy", kind: "AuthorizationPolicy", group: "security.istio.io",
        versions: ["v1", "v1beta1"], namespaced: true, interest: Proxy, read_as: Dynamic,
    }
    /// Which connections must be mutual TLS.
    PeerAuthentication(istio::PeerAuthentication) {
        name: "PeerAuthentication", kind: "PeerAuthentication", group: "security.istio.io",
        versions: ["v1", "v1beta1"], namespaced: true, interest: Proxy, read_as: Dynamic,
    }
    /// A Gateway API Gateway: waypoints are ones of class `istio-waypoint`.
    Gateway(gateway_api::Gateway) {
        name: "Gateway", kind: "Gateway", group: "gateway.networking.k8s.io",
        versions: ["v1", "v1beta1"], namespaced: true, interest: Proxy, read_as: Dynamic,
    }
    /// A Gateway API GatewayClass: its `istio.io/waypoint-for` is its Gateways' default.
    GatewayClass(gateway_api::GatewayClass) {
        name: "GatewayClass", kind: "GatewayClass", group: "gateway.networking.k8s.io",
        versions: ["v1", "v1beta1"], namespaced: false, interest: Proxy, read_as: Dynamic,
    }
    /// Which JWTs a workload accepts (checked at the waypoint).
    RequestAuthentication(istio::RequestAuthentication) {
        name: "RequestAuthentication", kind: "RequestAuthentication",
        group: "security.istio.io", versions: ["v1", "v1beta1"], namespaced: true,
        interest: Waypoint, read_as: Dynamic,
    }
    /// Istio HTTP/TLS/TCP routing for hosts.
    VirtualService(istio_networking::VirtualService) {
        name: "VirtualService", kind: "VirtualService", group: "networking.istio.io",
        versions: ["v1", "v1beta1", "v1alpha3"], namespaced: true, interest: Waypoint,
        read_as: Dynamic,
    }
    /// Istio traffic policy and subsets for a host.
    DestinationRule(istio_networking::DestinationRule) {
        name: "DestinationRule", kind: "DestinationRule", group: "networking.istio.io",
        versions: ["v1", "v1beta1", "v1alpha3"], namespaced: true, interest: Waypoint,
        read_as: Dynamic,
    }
    /// An Istio Gateway (ingress servers), not the Gateway API's.
    IstioGateway(istio_networking::IstioGateway) {
        name: "Gateway.networking.istio.io", kind: "Gateway", group: "networking.istio.io",
        versions: ["v1", "v1beta1", "v1alpha3"], namespaced: true, interest: Waypoint,
        read_as: Dynamic,
    }
    /// Envoy configuration patches (stored and reported; this mesh runs no Envoy).
    EnvoyFilter(istio_networking::EnvoyFilter) {
        name: "EnvoyFilter", kind: "EnvoyFilter", group: "networking.istio.io",
        versions: ["v1alpha3", "v1beta1"], namespaced: true, interest: Waypoint,
        read_as: Dynamic,
    }
    /// Gateway API HTTP routes (for waypoints: parent a Service or the waypoint).
    HttpRoute(gateway_routes::HttpRoute) {
        name: "HTTPRoute", kind: "HTTPRoute", group: "gateway.networking.k8s.io",
        versions: ["v1", "v1beta1"], namespaced: true, interest: Waypoint, read_as: Dynamic,
    }
    /// Gateway API gRPC routes.
    GrpcRoute(gateway_routes::GrpcRoute) {
        name: "GRPCRoute", kind: "GRPCRoute", group: "gateway.networking.k8s.io",
        versions: ["v1"], namespaced: true, interest: Waypoint, read_as: Dynamic,
    }
}

impl ConfigObject {
    /// Its kind as the store names it ([`KindInfo::name`]: the `kind:` written, qualified
    /// where two groups share it), which is what keys and messages show.
    #[allow(clippy::misnamed_getters)]
    pub fn kind(&self) -> &'static str {
        self.info().name
    }

    /// Its key.
    pub fn key(&self) -> super::ObjectKey {
        let meta = self.metadata();
        super::ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }

    /// A namespaced object written without `metadata.namespace` belongs to `default`, as
    /// with `kubectl apply`.
    pub(crate) fn with_default_namespace(mut self) -> Self {
        if self.info().namespaced && self.metadata().namespace.is_none() {
            self.metadata_mut().namespace = Some("default".to_string());
        }
        self
    }
}

/// Wraps a typed object (for tests and stand-ins).
impl<K: Kind> From<K> for ConfigObject {
    fn from(object: K) -> Self {
        K::wrap(Arc::new(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_type_finds_its_entry() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        assert_eq!(<core::Pod as Kind>::info().kind, "Pod");
        assert_eq!(
            <gateway_api::Gateway as Kind>::info().group,
            "gateway.networking.k8s.io"
        );
        assert!(KindInfo::find("security.istio.io", "PeerAuthentication").is_some());
        assert!(KindInfo::find("", "Deployment").is_none());
    }

    #[test]
    fn the_node_agent_watches_only_what_capture_needs() {
        let capture: Vec<&str> = KINDS
            .iter()
            .filter(|k| k.watched_by(Interest::Capture))
            .map(|k| k.name)
            .collect();
        assert_eq!(capture, ["Namespace", "Pod"]);
        assert!(KINDS.iter().all(|k| k.watched_by(Interest::Waypoint)));
        let proxy_only_l4 = KINDS
            .iter()
            .filter(|k| k.watched_by(Interest::Proxy))
            .all(|k| !matches!(k.name, "VirtualService" | "HTTPRoute" | "DestinationRule"));
        assert!(proxy_only_l4, "ztunnel does not watch L7 kinds");
    }
}
