//! The data-plane model: what ztunnel needs to route and authorize a connection, built
//! from the configuration by [`translate`].
//!
//! * [`Workload`]: a pod with its identity, node, addresses and whether it is captured;
//! * [`Service`]: a ClusterIP with its ports and the workloads behind it;
//! * the security policies, kept as written (their evaluation is `policy`'s job).

mod translate;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use translate::{DATAPLANE_MODE_LABEL, translate};

use crate::config::istio::{AuthorizationPolicy, PeerAuthentication};
use mesh_core::identity::Identity;

/// A pod as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Pod name.
    pub name: String,
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
    /// Whether its traffic is captured by the mesh (ambient).
    pub captured: bool,
}

/// Which pod port a service port sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A number.
    Number(u16),
    /// A named container port, resolved per pod (not known from the Pod's YAML alone
    /// unless its containers declare it).
    Named(String),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port on the ClusterIP.
    pub port: u16,
    /// Port on the pods.
    pub target_port: TargetPort,
    /// Port name, if any.
    pub name: Option<String>,
}

/// A service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// ClusterIPs.
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Workloads its selector picks (running, with an IP), by pod name.
    pub endpoints: Vec<Arc<Workload>>,
}

impl Service {
    /// `<name>.<namespace>.svc.cluster.local`, how metrics and policies name it.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// Everything the data plane knows, rebuilt on every configuration change.
#[derive(Debug, Clone, Default)]
pub struct DataPlane {
    /// Workloads by IP.
    pub workloads_by_ip: BTreeMap<IpAddr, Arc<Workload>>,
    /// Services by ClusterIP.
    pub services_by_vip: BTreeMap<IpAddr, Arc<Service>>,
    /// AuthorizationPolicies, in key order.
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// PeerAuthentications, in key order.
    pub peer_authentications: Vec<PeerAuthentication>,
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

    /// Workloads scheduled on `node`, deduplicated.
    pub fn workloads_on(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut seen = std::collections::BTreeSet::new();
        self.workloads_by_ip
            .values()
            .filter(|w| w.node == node && seen.insert((w.namespace.clone(), w.name.clone())))
            .cloned()
            .collect()
    }
}
