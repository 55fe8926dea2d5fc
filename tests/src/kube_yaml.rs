//! The Kubernetes objects that describe the simulated cluster, written as YAML files.
//!
//! This directory is the file config source: the mesh's components read the same
//! Kubernetes YAML a user would `kubectl apply` (Pods carry `spec.nodeName` and
//! `status.podIP`, as the API server would show them), so there is no second config
//! dialect. One object per file, named `<kind>-<namespace>-<name>.yaml`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::addressing::{node_pod_cidr, node_underlay_ip, pod_ip, service_ip};
use crate::cluster::builder::{ClusterSpec, Labels, PodSpec, ServiceSpec};
use crate::error::{HarnessError, Result};

fn meta(namespace: Option<&str>, name: &str, labels: &Labels) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: (!labels.is_empty()).then(|| labels.clone()),
        ..Default::default()
    }
}

/// A Namespace with its labels (where `istio.io/dataplane-mode` lives).
pub fn namespace(name: &str, labels: &Labels) -> core::Namespace {
    core::Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

/// A ServiceAccount: the `sa` part of a pod's SPIFFE identity.
pub fn service_account(namespace: &str, name: &str) -> core::ServiceAccount {
    core::ServiceAccount {
        metadata: meta(Some(namespace), name, &Labels::new()),
        ..Default::default()
    }
}

/// A Node with its underlay address and pod CIDR.
pub fn node(name: &str, address: Ipv4Addr, pod_cidr: &str) -> core::Node {
    core::Node {
        metadata: meta(None, name, &Labels::new()),
        spec: Some(core::NodeSpec {
            pod_cidr: Some(pod_cidr.into()),
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(vec![core::NodeAddress {
                type_: "InternalIP".into(),
                address: address.to_string(),
            }]),
            ..Default::default()
        }),
    }
}

/// A running Pod as the API server would show it: scheduled, with its IPs in the status.
pub fn pod(spec: &PodSpec, node_name: &str, ip: Ipv4Addr, host_ip: Ipv4Addr) -> core::Pod {
    core::Pod {
        metadata: meta(Some(&spec.namespace), &spec.name, &spec.labels),
        spec: Some(core::PodSpec {
            node_name: Some(node_name.into()),
            service_account_name: Some(spec.service_account.clone()),
            containers: vec![core::Container {
                name: "app".into(),
                image: Some("mesh-testapp".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(host_ip.to_string()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![core::PodIP { ip: ip.to_string() }]),
            ..Default::default()
        }),
    }
}

/// A ClusterIP Service.
pub fn service(spec: &ServiceSpec, cluster_ip: Ipv4Addr) -> core::Service {
    let ports = spec
        .ports
        .iter()
        .map(|p| core::ServicePort {
            name: Some(format!("tcp-{}", p.port)),
            port: p.port.into(),
            target_port: Some(IntOrString::Int(p.target_port.into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    core::Service {
        metadata: meta(Some(&spec.namespace), &spec.name, &spec.labels),
        spec: Some(core::ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            selector: Some(spec.selector.clone()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes one object to `<dir>/<kind>-<namespace>-<name>.yaml` and returns the path.
pub fn write<K>(dir: &Path, object: &K) -> Result<PathBuf>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize,
{
    let meta = object.metadata();
    let name = meta.name.as_deref().unwrap_or("unnamed");
    let file = match meta.namespace.as_deref() {
        Some(namespace) => format!("{}-{namespace}-{name}.yaml", K::KIND.to_lowercase()),
        None => format!("{}-{name}.yaml", K::KIND.to_lowercase()),
    };
    let yaml = serde_saphyr::to_string(object).map_err(|err| {
        HarnessError::io(
            format!("serializing {} {name}", K::KIND),
            std::io::Error::other(err.to_string()),
        )
    })?;
    let path = dir.join(file);
    std::fs::write(&path, yaml)
        .map_err(|err| HarnessError::io(format!("writing {}", path.display()), err))?;
    Ok(path)
}

/// Writes every object of the cluster: Namespaces, ServiceAccounts, Nodes, Pods, Services.
pub fn write_cluster(dir: &Path, spec: &ClusterSpec) -> Result<()> {
    let no_labels = Labels::new();
    for name in spec.kube_namespaces() {
        let labels = spec.namespace_labels.get(&name).unwrap_or(&no_labels);
        write(dir, &namespace(&name, labels))?;
    }
    for (namespace, account) in spec.service_accounts() {
        write(dir, &service_account(&namespace, &account))?;
    }
    for (node_index, node_spec) in spec.nodes.iter().enumerate() {
        let (network, prefix) = node_pod_cidr(node_index);
        let host_ip = node_underlay_ip(node_index);
        write(
            dir,
            &node(&node_spec.name, host_ip, &format!("{network}/{prefix}")),
        )?;
        for (pod_index, pod_spec) in node_spec.pods.iter().enumerate() {
            let ip = pod_ip(node_index, pod_index);
            write(dir, &pod(pod_spec, &node_spec.name, ip, host_ip))?;
        }
    }
    for (index, service_spec) in spec.services.iter().enumerate() {
        write(dir, &service(service_spec, service_ip(index)))?;
    }
    Ok(())
}

/// The documents of a multi-document YAML text as JSON values (empty ones skipped).
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    Ok(serde_saphyr::from_multiple::<serde_json::Value>(text)
        .map_err(|err| HarnessError::Spec(format!("YAML: {err}")))?
        .into_iter()
        .filter(|document| !document.is_null())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::builder::ClusterBuilder;

    #[test]
    fn writes_one_file_per_object_with_the_fields_components_read() {
        let spec = ClusterBuilder::default()
            .node("n1")
            .pod("client")
            .namespace("shop")
            .service_account("web")
            .labels([("app", "client")])
            .node("n2")
            .pod("server")
            .namespace("shop")
            .labels([("app", "server")])
            .service("server")
            .namespace("shop")
            .selector([("app", "server")])
            .port(80, 8080)
            .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
            .into_spec()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_cluster(dir.path(), &spec).unwrap();

        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "namespace-shop.yaml",
                "node-n1.yaml",
                "node-n2.yaml",
                "pod-shop-client.yaml",
                "pod-shop-server.yaml",
                "service-shop-server.yaml",
                "serviceaccount-shop-default.yaml",
                "serviceaccount-shop-web.yaml",
            ]
        );

        let read = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap();
        let server: core::Pod = serde_saphyr::from_str(&read("pod-shop-server.yaml")).unwrap();
        let server_spec = server.spec.unwrap();
        assert_eq!(server_spec.node_name.as_deref(), Some("n2"));
        assert_eq!(server.status.unwrap().pod_ip.as_deref(), Some("10.244.2.2"));
        let client: core::Pod = serde_saphyr::from_str(&read("pod-shop-client.yaml")).unwrap();
        assert_eq!(
            client.spec.unwrap().service_account_name.as_deref(),
            Some("web")
        );

        let ns: core::Namespace = serde_saphyr::from_str(&read("namespace-shop.yaml")).unwrap();
        assert_eq!(
            ns.metadata.labels.unwrap()["istio.io/dataplane-mode"],
            "ambient"
        );
        let svc_yaml = read("service-shop-server.yaml");
        assert!(
            svc_yaml.contains("apiVersion: v1") && svc_yaml.contains("kind: Service"),
            "{svc_yaml}"
        );
        let svc: core::Service = serde_saphyr::from_str(&svc_yaml).unwrap();
        let svc_spec = svc.spec.unwrap();
        assert_eq!(svc_spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(
            svc_spec.ports.unwrap()[0].target_port,
            Some(IntOrString::Int(8080))
        );
    }
}
