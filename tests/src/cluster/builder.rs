//! The cluster description and its fluent builder: plain data, validated before anything
//! touches the kernel.

use std::collections::{BTreeMap, BTreeSet};

use crate::addressing::{MAX_NODES, MAX_PODS_PER_NODE, MAX_SERVICES};
use crate::error::{HarnessError, Result};

/// Kubernetes-style labels, sorted so the written YAML is stable.
pub type Labels = BTreeMap<String, String>;

/// One pod as the test describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name, unique in the whole simulated cluster so tests can look pods up by it.
    pub name: String,
    /// Kubernetes namespace (default `default`).
    pub namespace: String,
    /// ServiceAccount, which becomes the pod's SPIFFE identity (default `default`).
    pub service_account: String,
    /// Pod labels, matched by Service selectors and policies.
    pub labels: Labels,
}

/// One node and the pods scheduled on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name (`spec.nodeName` of its pods).
    pub name: String,
    /// Its pods, in the order their addresses are handed out.
    pub pods: Vec<PodSpec>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Port on the ClusterIP.
    pub port: u16,
    /// Port on the selected pods.
    pub target_port: u16,
}

/// One ClusterIP Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace (default `default`).
    pub namespace: String,
    /// Labels on the Service object itself.
    pub labels: Labels,
    /// Which pods of its namespace back it.
    pub selector: Labels,
    /// Its ports (at least one).
    pub ports: Vec<ServicePortSpec>,
}

/// The whole description [`ClusterBuilder::build`] turns into namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Nodes with their pods.
    pub nodes: Vec<NodeSpec>,
    /// Services, in the order their ClusterIPs are handed out.
    pub services: Vec<ServiceSpec>,
    /// Labels of Kubernetes namespaces (e.g. `istio.io/dataplane-mode: ambient`).
    pub namespace_labels: BTreeMap<String, Labels>,
}

impl ClusterSpec {
    /// Every Kubernetes namespace the cluster mentions, sorted.
    pub fn kube_namespaces(&self) -> BTreeSet<String> {
        let pods = self
            .nodes
            .iter()
            .flat_map(|n| &n.pods)
            .map(|p| p.namespace.clone());
        let services = self.services.iter().map(|s| s.namespace.clone());
        let labeled = self.namespace_labels.keys().cloned();
        pods.chain(services).chain(labeled).collect()
    }

    /// Every (namespace, service account) pair the pods use, sorted.
    pub fn service_accounts(&self) -> BTreeSet<(String, String)> {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .map(|p| (p.namespace.clone(), p.service_account.clone()))
            .collect()
    }

    /// Checks the description: names, uniqueness and the address plan's limits.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(HarnessError::Spec(msg));
        if self.nodes.is_empty() {
            return fail("a cluster needs at least one node".into());
        }
        if self.nodes.len() > MAX_NODES {
            return fail(format!("{} nodes, at most {MAX_NODES}", self.nodes.len()));
        }
        if self.services.len() > MAX_SERVICES {
            return fail(format!(
                "{} services, at most {MAX_SERVICES}",
                self.services.len()
            ));
        }
        let mut node_names = BTreeSet::new();
        let mut pod_names = BTreeSet::new();
        for node in &self.nodes {
            check_name("node", &node.name)?;
            if !node_names.insert(&node.name) {
                return fail(format!("node {} is declared twice", node.name));
            }
            if node.pods.len() > MAX_PODS_PER_NODE {
                return fail(format!(
                    "node {} has more than {MAX_PODS_PER_NODE} pods",
                    node.name
                ));
            }
            for pod in &node.pods {
                check_name("pod", &pod.name)?;
                check_name("namespace", &pod.namespace)?;
                check_name("service account", &pod.service_account)?;
                if !pod_names.insert(&pod.name) {
                    return fail(format!("pod {} is declared twice", pod.name));
                }
            }
        }
        let mut services = BTreeSet::new();
        for service in &self.services {
            check_name("service", &service.name)?;
            check_name("namespace", &service.namespace)?;
            if !services.insert((&service.namespace, &service.name)) {
                return fail(format!(
                    "service {}/{} is declared twice",
                    service.namespace, service.name
                ));
            }
            if service.ports.is_empty() {
                return fail(format!(
                    "service {}/{} has no ports",
                    service.namespace, service.name
                ));
            }
        }
        for namespace in self.namespace_labels.keys() {
            check_name("namespace", namespace)?;
        }
        Ok(())
    }
}

/// A Kubernetes object name the harness also uses in namespace names: a DNS-1123 label.
fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(HarnessError::Spec(format!(
            "{what} name {name:?} is not a DNS-1123 label (lowercase letters, digits, '-', at most 63)"
        )))
    }
}

/// What the next `namespace`, `labels`, ... call applies to.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Node(usize),
    Pod(usize, usize),
    Service(usize),
}

/// Describes a cluster fluently; [`ClusterBuilder::build`](crate::ClusterBuilder::build)
/// creates it.
///
/// Calls apply to the last node, pod or service named:
///
/// ```no_run
/// # use mesh_tests::Cluster;
/// let cluster = Cluster::builder()
///     .node("n1").pod("client").namespace("shop").service_account("web")
///     .node("n2").pod("server").namespace("shop").labels([("app", "server")])
///     .service("server").namespace("shop").selector([("app", "server")]).port(80, 8080)
///     .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
///     .build()?;
/// # Ok::<(), mesh_tests::HarnessError>(())
/// ```
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    pub(crate) spec: ClusterSpec,
    cursor: Option<Cursor>,
    misuse: Option<String>,
}

impl ClusterBuilder {
    /// Adds a node (or returns to one already added); following `pod` calls land on it.
    pub fn node(mut self, name: &str) -> Self {
        let index = match self.spec.nodes.iter().position(|n| n.name == name) {
            Some(index) => index,
            None => {
                self.spec.nodes.push(NodeSpec {
                    name: name.into(),
                    pods: Vec::new(),
                });
                self.spec.nodes.len() - 1
            }
        };
        self.cursor = Some(Cursor::Node(index));
        self
    }

    /// Adds a pod to the current node, in namespace `default` with service account `default`.
    pub fn pod(mut self, name: &str) -> Self {
        let node = match self.cursor {
            Some(Cursor::Node(n) | Cursor::Pod(n, _)) => n,
            _ => return self.misuse(format!("pod {name} must follow a node(..)")),
        };
        let pods = &mut self.spec.nodes[node].pods;
        pods.push(PodSpec {
            name: name.into(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: Labels::new(),
        });
        self.cursor = Some(Cursor::Pod(node, pods.len() - 1));
        self
    }

    /// Adds a ClusterIP Service in namespace `default`; follow with `selector` and `port`.
    pub fn service(mut self, name: &str) -> Self {
        self.spec.services.push(ServiceSpec {
            name: name.into(),
            namespace: "default".into(),
            labels: Labels::new(),
            selector: Labels::new(),
            ports: Vec::new(),
        });
        self.cursor = Some(Cursor::Service(self.spec.services.len() - 1));
        self
    }

    /// Sets the Kubernetes namespace of the current pod or service.
    pub fn namespace(mut self, namespace: &str) -> Self {
        match self.cursor {
            Some(Cursor::Pod(n, p)) => self.spec.nodes[n].pods[p].namespace = namespace.into(),
            Some(Cursor::Service(s)) => self.spec.services[s].namespace = namespace.into(),
            _ => {
                return self.misuse(format!(
                    "namespace({namespace}) must follow a pod or service"
                ));
            }
        }
        self
    }

    /// Sets the ServiceAccount of the current pod.
    pub fn service_account(mut self, account: &str) -> Self {
        match self.cursor {
            Some(Cursor::Pod(n, p)) => self.spec.nodes[n].pods[p].service_account = account.into(),
            _ => return self.misuse(format!("service_account({account}) must follow a pod")),
        }
        self
    }

    /// Adds labels to the current pod or service object.
    pub fn labels<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let target = match self.cursor {
            Some(Cursor::Pod(n, p)) => &mut self.spec.nodes[n].pods[p].labels,
            Some(Cursor::Service(s)) => &mut self.spec.services[s].labels,
            _ => return self.misuse("labels(..) must follow a pod or service".into()),
        };
        target.extend(
            labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        self
    }

    /// Adds to the current service's pod selector.
    pub fn selector<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        match self.cursor {
            Some(Cursor::Service(s)) => self.spec.services[s].selector.extend(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            _ => return self.misuse("selector(..) must follow a service".into()),
        }
        self
    }

    /// Adds a port to the current service: `port` on the ClusterIP, `target_port` on pods.
    pub fn port(mut self, port: u16, target_port: u16) -> Self {
        match self.cursor {
            Some(Cursor::Service(s)) => self.spec.services[s]
                .ports
                .push(ServicePortSpec { port, target_port }),
            _ => return self.misuse(format!("port({port}, {target_port}) must follow a service")),
        }
        self
    }

    /// Adds labels to a Kubernetes namespace, e.g. `istio.io/dataplane-mode=ambient`.
    pub fn namespace_labels<'a>(
        mut self,
        namespace: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.spec
            .namespace_labels
            .entry(namespace.into())
            .or_default()
            .extend(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
        self
    }

    /// The description so far.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The validated description; the first builder misuse, if any, is the error.
    pub(crate) fn into_spec(self) -> Result<ClusterSpec> {
        if let Some(misuse) = self.misuse {
            return Err(HarnessError::Spec(misuse));
        }
        self.spec.validate()?;
        Ok(self.spec)
    }

    fn misuse(mut self, message: String) -> Self {
        self.misuse.get_or_insert(message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_apply_to_the_last_pod_or_service() {
        let spec = ClusterBuilder::default()
            .node("n1")
            .pod("a")
            .namespace("shop")
            .service_account("web")
            .labels([("app", "a")])
            .pod("b")
            .node("n2")
            .pod("c")
            .service("svc")
            .namespace("shop")
            .selector([("app", "a")])
            .port(80, 8080)
            .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
            .into_spec()
            .unwrap();
        let a = &spec.nodes[0].pods[0];
        assert_eq!(
            (a.namespace.as_str(), a.service_account.as_str()),
            ("shop", "web")
        );
        assert_eq!(a.labels["app"], "a");
        assert_eq!(spec.nodes[0].pods[1].namespace, "default");
        assert_eq!(spec.nodes[1].pods[0].name, "c");
        assert_eq!(
            spec.services[0].ports,
            vec![ServicePortSpec {
                port: 80,
                target_port: 8080
            }]
        );
        assert_eq!(
            spec.kube_namespaces().into_iter().collect::<Vec<_>>(),
            ["default", "shop"]
        );
    }

    #[test]
    fn misuse_and_bad_names_are_reported() {
        let cases: Vec<(ClusterBuilder, &str)> = vec![
            (
                ClusterBuilder::default().pod("orphan"),
                "must follow a node",
            ),
            (ClusterBuilder::default(), "at least one node"),
            (
                ClusterBuilder::default()
                    .node("n1")
                    .pod("a")
                    .node("n2")
                    .pod("a"),
                "declared twice",
            ),
            (ClusterBuilder::default().node("N1"), "not a DNS-1123 label"),
            (
                ClusterBuilder::default().node("n1").service("s"),
                "has no ports",
            ),
            (
                ClusterBuilder::default().node("n1").selector([("a", "b")]),
                "must follow a service",
            ),
        ];
        for (builder, expected) in cases {
            let err = builder.into_spec().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
