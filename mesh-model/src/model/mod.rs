//! The data-plane model: what ztunnel (and next the waypoint) needs to route and authorize
//! a connection, compiled from the configuration by [`Translator`].
//!
//! * [`Workload`]: a pod with its identity, node, addresses, named ports, whether it is
//!   captured and which waypoint handles traffic addressed to it;
//! * [`Service`]: a ClusterIP service with its hostname, ports (`appProtocol`, target
//!   ports resolved per endpoint), endpoints and waypoint;
//! * [`Waypoint`]: a Gateway of class `istio-waypoint` that has an address ([`waypoint`]
//!   has the binding rules);
//! * indices by IP, VIP, hostname and workload, so the data path never scans.

mod translate;
pub mod waypoint;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use translate::{DATAPLANE_MODE_LABEL, Settings, Translator, translate};
pub use waypoint::{Waypoint, WaypointAddress, WaypointFor};

use crate::config::istio::PeerAuthentication;
use crate::policy::CompiledPolicy;
use mesh_core::identity::Identity;

/// `namespace/name` of a namespaced object, the model's key for workloads and services.
/// Shared strings, so copying the model's indices on a change allocates no keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl NamespacedName {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// The workload as Istio names it in metrics and baggage: the pod's controller as a
    /// user knows it (`deployment`/`web` for a Deployment's pods), else the pod itself.
    pub owner: WorkloadOwner,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod UID when known (ZDS keys pods by it).
    pub uid: Option<String>,
    /// Its SPIFFE identity (from its service account).
    pub identity: Identity,
    /// Node it runs on.
    pub node: String,
    /// Its IPs (`status.podIPs`).
    pub ips: Vec<IpAddr>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Whether its traffic is captured by the mesh (ambient). Never for a waypoint's pods.
    pub captured: bool,
    /// Its containers' named TCP ports, which a Service's `targetPort: <name>` resolves to.
    pub named_ports: BTreeMap<String, u16>,
    /// The waypoint that handles traffic addressed to this pod's IP, if one is bound.
    pub waypoint: Option<Arc<Waypoint>>,
    /// The waypoint this pod is an instance of, if it is one.
    pub waypoint_of: Option<NamespacedName>,
}

/// A workload's kind and name (Istio's `k8s.<kind>.name` baggage, `*_workload` labels).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadOwner {
    /// `deployment`, `statefulset`, `daemonset`, `cronjob`, `job`, `replicaset`, `pod`...
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(self.namespace.as_str(), self.name.as_str())
    }
}

/// Which pod port a service port sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A number.
    Number(u16),
    /// A named container port, resolved per endpoint from its pod's container ports.
    Named(String),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port on the ClusterIP.
    pub port: u16,
    /// Port on the pods.
    pub target_port: TargetPort,
    /// Port name, if any (`http-web`: its prefix declares the protocol, Istio's convention).
    pub name: Option<String>,
    /// `appProtocol` as written (`http`, `kubernetes.io/h2c`, ...).
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// The port on `endpoint` this service port sends to: the number, or the endpoint's
    /// container port of that name (`None` when its pod declares no such port, in which case
    /// that endpoint cannot serve this port, as with kube-proxy).
    pub fn target_on(&self, endpoint: &Workload) -> Option<u16> {
        match &self.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Named(name) => endpoint.named_ports.get(name).copied(),
        }
    }
}

/// A service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// `<name>.<namespace>.svc.<cluster domain>`, how metrics, policies and routes name it.
    pub hostname: String,
    /// ClusterIPs.
    pub vips: Vec<IpAddr>,
    /// TCP ports.
    pub ports: Vec<ServicePort>,
    /// Workloads its selector (or, without one, its EndpointSlices) picks, in key order.
    pub endpoints: Vec<Arc<Workload>>,
    /// The waypoint that handles traffic addressed to this service, if one is bound.
    pub waypoint: Option<Arc<Waypoint>>,
}

impl Service {
    /// Its hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// `namespace/name`.
    pub fn key(&self) -> NamespacedName {
        NamespacedName::new(self.namespace.as_str(), self.name.as_str())
    }

    /// The service port `port`, if it exposes it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// Everything the data plane knows, one immutable version per configuration change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataPlane {
    /// Workloads by IP.
    pub workloads_by_ip: BTreeMap<IpAddr, Arc<Workload>>,
    /// Workloads by `namespace/name`.
    pub workloads: BTreeMap<NamespacedName, Arc<Workload>>,
    /// Services by ClusterIP.
    pub services_by_vip: BTreeMap<IpAddr, Arc<Service>>,
    /// Services by hostname.
    pub services_by_hostname: BTreeMap<String, Arc<Service>>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<NamespacedName, Arc<Service>>,
    /// The services each workload is an endpoint of, by workload key.
    pub services_by_workload: BTreeMap<NamespacedName, Vec<Arc<Service>>>,
    /// Waypoints that have an address, by Gateway `namespace/name`.
    pub waypoints: BTreeMap<NamespacedName, Arc<Waypoint>>,
    /// AuthorizationPolicies, compiled, in key order.
    pub authorization_policies: Vec<Arc<CompiledPolicy>>,
    /// PeerAuthentications, in key order.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
}

impl DataPlane {
    /// The workload with address `ip`.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    /// The service with ClusterIP `vip`.
    pub fn service(&self, vip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&vip)
    }

    /// The service called `hostname` (`web.shop.svc.cluster.local`).
    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services_by_hostname.get(hostname)
    }

    /// Workloads scheduled on `node`.
    pub fn workloads_on(&self, node: &str) -> Vec<Arc<Workload>> {
        self.workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect()
    }

    /// The service a connection that arrived at `workload` on `port` was most likely
    /// addressed to: the source ztunnel picked the endpoint, so the destination sees only
    /// the pod's address. Of the workload's services, the first (by key) with a port whose
    /// target on this workload is `port`, as Istio's ztunnel guesses.
    pub fn inbound_service(&self, workload: &Workload, port: u16) -> Option<&Arc<Service>> {
        self.services_by_workload
            .get(&workload.key())?
            .iter()
            .find(|s| s.ports.iter().any(|p| p.target_on(workload) == Some(port)))
    }
}
