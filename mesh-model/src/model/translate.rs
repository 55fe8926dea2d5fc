//! Configuration objects to the data-plane model, incrementally.
//!
//! [`Translator::update`] compares the new store with the one it last saw (objects are
//! shared `Arc`s, so an unchanged object is a pointer comparison) and rebuilds only what the
//! changes touch: a changed pod rebuilds that workload and the services that may list it
//! (its namespace's, the ones that listed it, the selector-less ones); a changed Service or
//! EndpointSlice rebuilds that service; a changed policy, the policy lists. A change to a
//! Namespace, Gateway or GatewayClass (membership and waypoint binding of many objects)
//! rebuilds everything, as does the first update.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::waypoint::{self, Subject, Target};
use super::{
    DataPlane, NamespacedName, Service, ServicePort, TargetPort, Waypoint, Workload, WorkloadOwner,
};
use crate::config::gateway_api::{Gateway, GatewayClass};
use crate::config::istio::{AuthorizationPolicy, PeerAuthentication};
use crate::config::{ConfigStore, ObjectKey};
use crate::policy::CompiledPolicy;
use mesh_core::identity::Identity;

/// The label that puts a namespace (or overrides a pod) in or out of the mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// What translation needs besides the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// The DNS domain of the cluster, which services' hostnames end with.
    pub cluster_domain: String,
}

impl Settings {
    /// `trust_domain`, with the default cluster domain `cluster.local`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Settings {
            trust_domain: trust_domain.into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Builds the data plane from `store` in full.
///
/// Pods without an IP, not running, on the host network, or whose service account does
/// not make a valid identity are left out (with a log line), never a panic.
pub fn translate(store: &ConfigStore, settings: &Settings) -> DataPlane {
    build(store, settings)
}

/// Keeps the model of the last store it saw, to update it by what changed.
#[derive(Debug)]
pub struct Translator {
    settings: Settings,
    store: ConfigStore,
    plane: Arc<DataPlane>,
    built: bool,
}

impl Translator {
    /// A translator that has seen nothing yet.
    pub fn new(settings: Settings) -> Self {
        Translator {
            settings,
            store: ConfigStore::default(),
            plane: Arc::default(),
            built: false,
        }
    }

    /// The model of `store`, rebuilt only where it differs from the last store.
    pub fn update(&mut self, store: &ConfigStore) -> Arc<DataPlane> {
        let changed = self.store.changed_keys(store);
        if self.built && changed.is_empty() {
            return self.plane.clone();
        }
        let plane = if self.built {
            update(&self.plane, &self.store, store, &changed, &self.settings)
        } else {
            None
        };
        let plane = plane.unwrap_or_else(|| build(store, &self.settings));
        self.store = store.clone();
        self.plane = Arc::new(plane);
        self.built = true;
        self.plane.clone()
    }
}

fn build(store: &ConfigStore, settings: &Settings) -> DataPlane {
    let mut plane = DataPlane {
        waypoints: waypoints(store),
        ..DataPlane::default()
    };
    for pod in store.all::<core::Pod>() {
        if let Some(workload) = workload(store, pod, settings, &plane.waypoints) {
            insert_workload(&mut plane, workload);
        }
    }
    for service in store.all::<core::Service>() {
        if let Some(service) = translate_service(store, service, settings, &plane) {
            insert_service(&mut plane, service);
        }
    }
    set_policies(&mut plane, store);
    plane
}

/// `None` when the changes need a full build.
fn update(
    previous: &DataPlane,
    old: &ConfigStore,
    new: &ConfigStore,
    changed: &[ObjectKey],
    settings: &Settings,
) -> Option<DataPlane> {
    let mut pods = BTreeSet::new();
    let mut services = BTreeSet::new();
    let mut policies = false;
    for key in changed {
        let name = NamespacedName::new(&*key.namespace, &*key.name);
        match key.kind {
            "Pod" => {
                pods.insert(name);
            }
            "Service" => {
                services.insert(name);
            }
            "EndpointSlice" => {
                for store in [old, new] {
                    let slice = store.get::<discovery::EndpointSlice>(&key.namespace, &key.name);
                    if let Some(service) = slice.and_then(|s| slice_service(s)) {
                        services.insert(NamespacedName::new(&*key.namespace, service));
                    }
                }
            }
            "AuthorizationPolicy" | "PeerAuthentication" => policies = true,
            // Not read by the model (the L7 kinds are the waypoint's).
            "Node"
            | "ServiceAccount"
            | "RequestAuthentication"
            | "VirtualService"
            | "DestinationRule"
            | "Gateway.networking.istio.io"
            | "EnvoyFilter"
            | "HTTPRoute"
            | "GRPCRoute" => {}
            // Namespaces, Gateways, GatewayClasses, kinds the model does not know yet.
            _ => return None,
        }
    }
    let mut plane = previous.clone();
    for key in &pods {
        if let Some(old) = plane.workloads.get(key).cloned() {
            remove_workload(&mut plane, &old);
            services.extend(
                plane
                    .services_by_workload
                    .get(key)
                    .into_iter()
                    .flatten()
                    .map(|s| s.key()),
            );
        }
        let pod = new.get::<core::Pod>(&key.namespace, &key.name);
        if let Some(workload) = pod.and_then(|p| workload(new, p, settings, &plane.waypoints)) {
            insert_workload(&mut plane, workload);
        }
        services.extend(in_namespace(&plane.services, &key.namespace).map(|s| s.key()));
        services.extend(
            new.all::<core::Service>()
                .filter(|s| selector(s).is_none())
                .filter_map(|s| {
                    Some(NamespacedName::new(
                        s.metadata.namespace.clone()?,
                        s.metadata.name.clone()?,
                    ))
                }),
        );
    }
    for key in &services {
        if let Some(old) = plane.services.get(key).cloned() {
            remove_service(&mut plane, &old);
        }
        let service = new.get::<core::Service>(&key.namespace, &key.name);
        if let Some(service) = service.and_then(|s| translate_service(new, s, settings, &plane)) {
            insert_service(&mut plane, service);
        }
    }
    if policies {
        set_policies(&mut plane, new);
    }
    Some(plane)
}

fn set_policies(plane: &mut DataPlane, store: &ConfigStore) {
    plane.authorization_policies = store
        .all::<AuthorizationPolicy>()
        .map(|p| Arc::new(CompiledPolicy::compile(p)))
        .collect();
    plane.peer_authentications = store.all::<PeerAuthentication>().cloned().collect();
}

fn insert_workload(plane: &mut DataPlane, workload: Workload) {
    let workload = Arc::new(workload);
    for ip in &workload.ips {
        plane.workloads_by_ip.insert(*ip, workload.clone());
    }
    plane.workloads.insert(workload.key(), workload);
}

fn remove_workload(plane: &mut DataPlane, workload: &Arc<Workload>) {
    plane.workloads.remove(&workload.key());
    for ip in &workload.ips {
        if plane
            .workloads_by_ip
            .get(ip)
            .is_some_and(|w| Arc::ptr_eq(w, workload))
        {
            plane.workloads_by_ip.remove(ip);
        }
    }
}

fn insert_service(plane: &mut DataPlane, service: Service) {
    let service = Arc::new(service);
    for vip in &service.vips {
        plane.services_by_vip.insert(*vip, service.clone());
    }
    plane
        .services_by_hostname
        .insert(service.hostname.clone(), service.clone());
    for endpoint in &service.endpoints {
        let services = plane
            .services_by_workload
            .entry(endpoint.key())
            .or_default();
        let at = services.partition_point(|s| s.key() < service.key());
        services.insert(at, service.clone());
    }
    plane.services.insert(service.key(), service);
}

fn remove_service(plane: &mut DataPlane, service: &Arc<Service>) {
    plane.services.remove(&service.key());
    plane.services_by_hostname.remove(&service.hostname);
    for vip in &service.vips {
        if plane
            .services_by_vip
            .get(vip)
            .is_some_and(|s| Arc::ptr_eq(s, service))
        {
            plane.services_by_vip.remove(vip);
        }
    }
    for endpoint in &service.endpoints {
        let key = endpoint.key();
        if let Some(services) = plane.services_by_workload.get_mut(&key) {
            services.retain(|s| !Arc::ptr_eq(s, service));
            if services.is_empty() {
                plane.services_by_workload.remove(&key);
            }
        }
    }
}

/// The values of `map` in namespace `namespace` (a range of the map).
fn in_namespace<'a, T>(
    map: &'a BTreeMap<NamespacedName, T>,
    namespace: &'a str,
) -> impl Iterator<Item = &'a T> {
    map.range(NamespacedName::new(namespace, "")..)
        .take_while(move |(key, _)| &*key.namespace == namespace)
        .map(|(_, value)| value)
}

/// Gateways that are waypoints with an address.
fn waypoints(store: &ConfigStore) -> BTreeMap<NamespacedName, Arc<Waypoint>> {
    store
        .all::<Gateway>()
        .filter_map(|gateway| {
            let class = store.get::<GatewayClass>("", &gateway.spec.gateway_class_name);
            Waypoint::from_gateway(gateway, class.map(|c| &**c))
        })
        .map(|w| (w.gateway.clone(), Arc::new(w)))
        .collect()
}

/// Whether `namespace/name` is a Gateway of the waypoint class (ready or not).
fn is_waypoint_gateway(store: &ConfigStore, namespace: &str, name: &str) -> bool {
    store
        .get::<Gateway>(namespace, name)
        .is_some_and(|g| g.spec.gateway_class_name == waypoint::WAYPOINT_CLASS)
}

fn namespace_labels<'a>(store: &'a ConfigStore, namespace: &str) -> &'a BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    store
        .namespace(namespace)
        .and_then(|ns| ns.metadata.labels.as_ref())
        .unwrap_or(&EMPTY)
}

fn workload(
    store: &ConfigStore,
    pod: &core::Pod,
    settings: &Settings,
    waypoints: &BTreeMap<NamespacedName, Arc<Waypoint>>,
) -> Option<Workload> {
    let meta = &pod.metadata;
    let (name, namespace) = (
        meta.name.clone()?,
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
    );
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let identity = match Identity::new(&settings.trust_domain, &namespace, &account) {
        Ok(identity) => identity,
        Err(err) => {
            tracing::warn!(pod = %name, %namespace, error = %err, "pod left out: no valid identity");
            return None;
        }
    };
    let labels = meta.labels.clone().unwrap_or_default();
    let named_ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let ns_labels = namespace_labels(store, &namespace);
    let waypoint_of = waypoint::waypoint_instance_of(&namespace, &labels, |gateway| {
        is_waypoint_gateway(store, &namespace, gateway)
    });
    let subject = Subject {
        target: Target::Workload,
        namespace: &namespace,
        labels: &labels,
        namespace_labels: ns_labels,
        is_waypoint: waypoint_of.is_some(),
    };
    let waypoint = waypoint::bind(subject, waypoints).unwrap_or_else(|unbound| {
        tracing::debug!(pod = %name, %namespace, %unbound, "no waypoint");
        None
    });
    Some(Workload {
        captured: waypoint_of.is_none() && is_captured(ns_labels, &labels),
        owner: owner_of(meta, &name, &labels),
        name,
        namespace,
        uid: meta.uid.clone(),
        identity,
        node: spec.node_name.clone().unwrap_or_default(),
        ips,
        labels,
        named_ports,
        waypoint,
        waypoint_of,
    })
}

/// The workload a pod belongs to, as Istio derives it: its controller (a ReplicaSet made by
/// a Deployment stands for the Deployment: its name less the `pod-template-hash` suffix; a
/// Job named `<cronjob>-<digits>` for its CronJob), else the pod itself.
fn owner_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pod_name: &str,
    labels: &BTreeMap<String, String>,
) -> WorkloadOwner {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    let Some(controller) = controller else {
        return WorkloadOwner {
            kind: "pod".into(),
            name: pod_name.into(),
        };
    };
    let name = controller.name.clone();
    let (kind, name) = match controller.kind.as_str() {
        "ReplicaSet" => match labels
            .get("pod-template-hash")
            .and_then(|hash| name.strip_suffix(&format!("-{hash}")))
        {
            Some(deployment) => ("deployment", deployment.to_string()),
            None => ("replicaset", name),
        },
        "Job" => match name.rsplit_once('-') {
            Some((cronjob, run))
                if !cronjob.is_empty()
                    && !run.is_empty()
                    && run.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ("cronjob", cronjob.to_string())
            }
            _ => ("job", name),
        },
        other => {
            return WorkloadOwner {
                kind: other.to_ascii_lowercase(),
                name,
            };
        }
    };
    WorkloadOwner {
        kind: kind.into(),
        name,
    }
}

/// Ambient membership: a pod label `istio.io/dataplane-mode` decides (`none` opts out,
/// `ambient` opts in); otherwise the namespace's label does.
fn is_captured(
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    match pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => namespace_labels
            .get(DATAPLANE_MODE_LABEL)
            .is_some_and(|mode| mode == "ambient"),
    }
}

fn selector(service: &core::Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn translate_service(
    store: &ConfigStore,
    service: &core::Service,
    settings: &Settings,
    plane: &DataPlane,
) -> Option<Service> {
    let name = service.metadata.name.clone()?;
    let namespace = service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = service.spec.as_ref()?;
    let mut vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    vips.sort();
    vips.dedup();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Named(name.clone()),
                },
            };
            Some(ServicePort {
                port,
                target_port,
                name: p.name.clone(),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let endpoints = match selector(service) {
        Some(selector) => in_namespace(&plane.workloads, &namespace)
            .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .cloned()
            .collect(),
        // No selector: the endpoints are whoever its EndpointSlices name (kept up by
        // hand or by another controller). Only mesh-known pods count; other addresses
        // are not routed through the service yet.
        None => {
            let mut endpoints: Vec<Arc<Workload>> = sliced_addresses(store, &namespace, &name)
                .iter()
                .filter_map(|ip| plane.workloads_by_ip.get(ip).cloned())
                .collect();
            endpoints.sort_by_key(|w| w.key());
            endpoints.dedup_by(|a, b| Arc::ptr_eq(a, b));
            endpoints
        }
    };
    let labels = service.metadata.labels.clone().unwrap_or_default();
    let subject = Subject {
        target: Target::Service,
        namespace: &namespace,
        labels: &labels,
        namespace_labels: namespace_labels(store, &namespace),
        is_waypoint: waypoint::waypoint_instance_of(&namespace, &labels, |gateway| {
            is_waypoint_gateway(store, &namespace, gateway)
        })
        .is_some(),
    };
    let waypoint = waypoint::bind(subject, &plane.waypoints).unwrap_or_else(|unbound| {
        tracing::debug!(service = %name, %namespace, %unbound, "no waypoint");
        None
    });
    Some(Service {
        hostname: format!("{name}.{namespace}.svc.{}", settings.cluster_domain),
        name,
        namespace,
        vips,
        ports,
        endpoints,
        waypoint,
    })
}

/// The Service an EndpointSlice belongs to.
fn slice_service(slice: &discovery::EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")
        .map(String::as_str)
}

/// The ready addresses of the EndpointSlices of Service `namespace/name`.
fn sliced_addresses(store: &ConfigStore, namespace: &str, name: &str) -> Vec<IpAddr> {
    store
        .all::<discovery::EndpointSlice>()
        .filter(|slice| {
            slice.metadata.namespace.as_deref() == Some(namespace)
                && slice_service(slice) == Some(name)
        })
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true)
        })
        .flat_map(|endpoint| &endpoint.addresses)
        .filter_map(|address| address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests;
