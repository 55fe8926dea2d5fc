//! A Kubernetes cluster that runs pods: the simulated cluster's nodes, a control plane
//! that acts (API server, controllers, scheduler) inside the first node, and on every node
//! `mesh-node-agent` (tests/node-agent, a virtual-kubelet provider), which registers the
//! Node and runs the pods the scheduler binds to it: a network namespace made by the
//! node's CNI configuration (ptp + host-local, then whatever is chained), and the
//! containers as processes in it.
//!
//! Each agent runs its node in mount and PID namespaces of its own, which end with it:
//! its `/proc` shows only its processes, and the directories a node keeps to itself
//! (`/run`, `/etc/cni`, `/opt/cni`, `/var/lib/cni`, `/var/lib/kubelet`) are the node's,
//! backed by `host_root(node)/<dir>`: its CNI configuration and plugins, its pods'
//! network namespaces, the sockets and hostPath volumes of its daemons.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::eventually::eventually;
use crate::kube_control_plane::{ADMIN_TOKEN, ControlPlane};
use crate::process::Process;
use crate::{Cluster, netns};

/// What a node agent may do: what a kubelet does through the Node authorizer, plus the
/// cluster-wide reads virtual-kubelet's informers make (Secrets, ConfigMaps, Services).
const NODE_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: mesh-node-agent
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: [""]
  resources: [nodes/status]
  verbs: [get, update, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, delete]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [get, update, patch]
- apiGroups: [""]
  resources: [secrets, configmaps, services]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, update, patch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, patch]
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: mesh-node-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: mesh-node-agent
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
"#;

/// An image as the node agents see it: what runs when a container names no command, and
/// where a command without a slash is looked up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    /// The command line a container without `command` runs.
    pub entrypoint: Vec<String>,
    /// Directories searched for a `command` without a slash, in order.
    pub path: Vec<String>,
}

/// A cluster whose nodes run the pods Kubernetes schedules to them.
pub struct KubeCluster {
    // Drop order: the agents (and with them every container), then their pods'
    // namespaces, then the control plane, then the nodes.
    agents: Vec<Process>,
    plane: ControlPlane,
    cluster: Cluster,
    images: Mutex<BTreeMap<String, Image>>,
    images_file: PathBuf,
    pod_netns_prefix: String,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("cluster", &self.cluster.id())
            .finish_non_exhaustive()
    }
}

/// The image the test app runs as (`mesh-testapp`, entrypoint only: pods give the
/// subcommand as args).
pub const TESTAPP_IMAGE: &str = "example.com/mesh-testapp:1";

/// The chart's default images mapped to this build's binaries (what `helm install` of
/// deploy/chart pulls), and the test app as [`TESTAPP_IMAGE`].
pub fn mesh_images() -> Result<BTreeMap<String, Image>> {
    let binary = |name: &str| crate::apps::workspace_binary(name);
    let ztunnel = binary("ztunnel")?;
    let dir = ztunnel
        .parent()
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    let image = |entrypoint: PathBuf| Image {
        entrypoint: vec![entrypoint.display().to_string()],
        path: vec![dir.clone()],
    };
    let version = env!("CARGO_PKG_VERSION");
    Ok(BTreeMap::from([
        (
            format!("ghcr.io/ambient-mesh/ztunnel:{version}"),
            image(ztunnel.clone()),
        ),
        (
            format!("ghcr.io/ambient-mesh/istio-cni:{version}"),
            image(binary("istio-cni-agent")?),
        ),
        (
            format!("ghcr.io/ambient-mesh/waypoint:{version}"),
            image(binary("waypoint")?),
        ),
        (
            TESTAPP_IMAGE.to_string(),
            Image {
                entrypoint: vec![crate::apps::testapp_binary()?.display().to_string()],
                path: vec![],
            },
        ),
    ]))
}

/// The directory holding `mesh-node-agent` (`$MESH_NODE_AGENT_BIN` or
/// `scripts/build-node-agent`).
pub fn node_agent_binaries() -> Result<PathBuf> {
    crate::go_builds::built("MESH_NODE_AGENT_BIN", "build-node-agent")
}

impl KubeCluster {
    /// Builds `nodes` (names), starts the control plane in the first and a node agent on
    /// each, and returns once every Node is Ready. `images` is the initial image table.
    pub fn start(nodes: &[&str], images: BTreeMap<String, Image>) -> Result<Self> {
        let agent_dir = node_agent_binaries()?;
        let cni = crate::go_builds::cni_plugins()?;
        let mut builder = Cluster::builder();
        for name in nodes {
            builder = builder.node(name);
        }
        let cluster = builder.build()?;
        let first = &cluster.nodes()[0];
        let mut plane =
            ControlPlane::start_in(Some(first.netns().path()), IpAddr::V4(first.underlay_ip()))?;
        plane.start_controllers()?;
        let rbac = plane.kubectl(ADMIN_TOKEN, &["apply", "-f", "-"], Some(NODE_RBAC))?;
        if !rbac.success {
            return Err(HarnessError::ControlPlane(format!(
                "creating the node agents' role: {}",
                rbac.stderr
            )));
        }
        let images_file = cluster.work_dir().join("images.json");
        let pod_netns_prefix = format!("{}-k", cluster.id());
        let mut kube = KubeCluster {
            agents: Vec::new(),
            plane,
            cluster,
            images: Mutex::new(images),
            images_file,
            pod_netns_prefix,
        };
        kube.write_images()?;
        let api = kube.plane.url().trim_start_matches("https://").to_string();
        for node in kube.cluster.nodes() {
            let root = kube.host_root(node.name());
            let dir = root.join("var/lib/mesh-node-agent");
            let bin_dir = root.join("opt/cni/bin");
            let conf_dir = root.join("etc/cni/net.d");
            for path in [&dir, &bin_dir, &conf_dir] {
                std::fs::create_dir_all(path)
                    .map_err(|err| HarnessError::io(format!("creating {}", path.display()), err))?;
            }
            for plugin in ["ptp", "host-local", "loopback", "bridge"] {
                let link = bin_dir.join(plugin);
                if !link.exists() {
                    std::fs::copy(cni.join(plugin), &link).map_err(|err| {
                        HarnessError::io(format!("installing {plugin} on {}", node.name()), err)
                    })?;
                }
            }
            let (network, prefix) = node.pod_cidr();
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "k8s-pod-network",
                "plugins": [{
                    "type": "ptp",
                    "mtu": 1500,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": format!("{network}/{prefix}") }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                    },
                }],
            });
            let conf = conf_dir.join("10-k8s.conflist");
            std::fs::write(&conf, conflist.to_string())
                .map_err(|err| HarnessError::io(format!("writing {}", conf.display()), err))?;
            let ip = IpAddr::V4(node.underlay_ip());
            let (serving_cert, serving_key) =
                kube.plane
                    .issue_certificate(&dir, "kubelet-serving", node.name(), None, &[ip])?;
            let identity = format!("system:node:{}", node.name());
            let (client_cert, client_key) = kube.plane.issue_certificate(
                &dir,
                "kubelet-client",
                &identity,
                Some("system:nodes"),
                &[],
            )?;
            let kubeconfig = dir.join("kubeconfig");
            kube.plane
                .write_certificate_kubeconfig(&kubeconfig, &client_cert, &client_key)?;
            let mut command = node.netns().command(agent_dir.join("mesh-node-agent"))?;
            command
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--node-name={}", node.name()))
                .arg(format!("--node-ip={ip}"))
                .arg(format!("--pod-cidr={network}/{prefix}"))
                .arg(format!("--host-root={}", root.display()))
                .arg(format!("--images={}", kube.images_file.display()))
                .arg(format!("--netns-prefix={}", kube.pod_netns_prefix))
                .arg(format!("--tls-cert-file={}", serving_cert.display()))
                .arg(format!("--tls-private-key-file={}", serving_key.display()))
                .arg(format!(
                    "--client-ca-file={}",
                    kube.plane.cluster_ca_file().display()
                ))
                .arg(format!("--kubernetes-service={api}"))
                .arg("--restart-backoff=1s")
                .arg("--max-restart-backoff=8s");
            let log_dir = kube.cluster.work_dir().join("logs");
            let label = format!("{}.mesh-node-agent", node.name());
            kube.agents.push(Process::spawn(&label, command, &log_dir)?);
        }
        for node in nodes {
            kube.wait_node_ready(node)?;
        }
        Ok(kube)
    }

    fn wait_node_ready(&self, node: &str) -> Result<()> {
        eventually(
            format!("node {node} to register and be Ready"),
            Duration::from_secs(60),
            || {
                for agent in &self.agents {
                    if let Some(status) = agent.exit_status()? {
                        return Err(HarnessError::ControlPlane(format!(
                            "{} exited ({status}):\n{}",
                            agent.label(),
                            agent.logs()
                        )));
                    }
                }
                let ready = self.kubectl(&[
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ])?;
                if ready.trim() == "True" {
                    Ok(())
                } else {
                    Err(HarnessError::ControlPlane(format!(
                        "node {node} Ready={ready:?}"
                    )))
                }
            },
        )
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// The simulated nodes.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The directory backing `node`'s own directories (`<host_root>/run` is its `/run`).
    pub fn host_root(&self, node: &str) -> PathBuf {
        self.cluster.work_dir().join("hosts").join(node)
    }

    /// Maps an image reference to a local image (from the next container start on).
    pub fn map_image(&self, reference: &str, image: Image) -> Result<()> {
        self.images
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(reference.to_string(), image);
        self.write_images()
    }

    fn write_images(&self) -> Result<()> {
        let images = self
            .images
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let text = serde_json::to_string_pretty(&*images)
            .map_err(|err| HarnessError::Spec(format!("the image table: {err}")))?;
        let temporary = self.images_file.with_extension("tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.images_file))
            .map_err(|err| HarnessError::io("writing the image table", err))
    }

    /// Runs kubectl as the admin; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl as the admin with `stdin`.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let output = self.plane.kubectl(ADMIN_TOKEN, args, stdin)?;
        if output.success {
            Ok(output.stdout)
        } else {
            Err(HarnessError::ControlPlane(format!(
                "kubectl {}: {}",
                args.join(" "),
                output.stderr.trim()
            )))
        }
    }

    /// Installs the mesh as an operator does: the mesh CA as the `cacerts` Secret (Istio's
    /// layout) in `istio-system`, then `helm install ambient-mesh deploy/chart`; returns
    /// once the ztunnel and istio-cni DaemonSets are Ready on every node, or fails after
    /// `within`.
    pub fn install_mesh(&self, within: Duration) -> Result<()> {
        let ca = self.cluster.work_dir().join("cacerts");
        mesh_core::cert::LocalCa::generate("cluster.local")
            .and_then(|generated| generated.write_to(&ca))
            .map_err(|err| HarnessError::Spec(format!("making the mesh CA: {err}")))?;
        self.kubectl(&["create", "namespace", "istio-system"])?;
        let from_dir = format!("--from-file={}", ca.display());
        self.kubectl(&[
            "create",
            "secret",
            "generic",
            "cacerts",
            "-n",
            "istio-system",
            &from_dir,
        ])?;
        self.helm(&[
            "install",
            "ambient-mesh",
            "deploy/chart",
            "--namespace",
            "istio-system",
        ])?;
        let nodes = self.cluster.nodes().len();
        eventually("both DaemonSets Ready on every node", within, || {
            let ready = ["ztunnel", "istio-cni-node"].map(|name| {
                self.kubectl(&[
                    "get",
                    "daemonset",
                    name,
                    "-n",
                    "istio-system",
                    "-o",
                    "jsonpath={.status.numberReady}",
                ])
                .unwrap_or_default()
            });
            if ready.iter().all(|count| *count == nodes.to_string()) {
                Ok(())
            } else {
                Err(HarnessError::ControlPlane(format!(
                    "ztunnel, istio-cni-node Ready: {ready:?} of {nodes}\n{}",
                    self.agent_logs()
                )))
            }
        })
    }

    /// Runs helm (`$MESH_HELM` or `scripts/build-helm`) as the admin, from the repository's
    /// root; its stdout, or an error with its stderr.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let helm = crate::go_builds::built("MESH_HELM", "build-helm")?;
        let kubeconfig = self.cluster.work_dir().join("admin.kubeconfig");
        if !kubeconfig.exists() {
            self.plane.write_kubeconfig(&kubeconfig, ADMIN_TOKEN)?;
        }
        let mut command = match self.plane.netns() {
            Some(path) => netns::command_in(path, &helm)?,
            None => std::process::Command::new(&helm),
        };
        let output = command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .output()
            .map_err(|err| HarnessError::io("running helm", err))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(HarnessError::ControlPlane(format!(
                "helm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// `kubectl <args> -o jsonpath=<path>`; "" when kubectl fails (an object not there yet).
    pub fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let format = format!("jsonpath={path}");
        let mut all = args.to_vec();
        all.extend(["-o", &format]);
        self.kubectl(&all).unwrap_or_default()
    }

    /// Waits until Deployment `namespace/name` has `replicas` ready replicas.
    pub fn wait_deployment_ready(
        &self,
        namespace: &str,
        name: &str,
        replicas: usize,
        within: Duration,
    ) -> Result<()> {
        eventually(
            format!("deployment {namespace}/{name} to have {replicas} ready replicas"),
            within,
            || {
                let ready = self.jsonpath(
                    &["get", "deployment", name, "-n", namespace],
                    "{.status.readyReplicas}",
                );
                if ready == replicas.to_string() {
                    Ok(())
                } else {
                    Err(HarnessError::ControlPlane(format!(
                        "readyReplicas={ready:?}\n{}",
                        self.agent_logs()
                    )))
                }
            },
        )
    }

    /// The agents' logs (for failure messages).
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .map(|agent| format!("--- {}\n{}", agent.label(), agent.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Names of the pod network namespaces the nodes have now (in each node's own
    /// `/run/netns`).
    pub fn pod_namespaces(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for node in self.cluster.nodes() {
            let dir = self.host_root(node.name()).join("run/netns");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            names.extend(
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned()),
            );
        }
        Ok(names)
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.agent_logs());
        }
        // Each agent's node (its PID and mount namespaces) ends with it: every pod
        // process is killed and the pods' network namespaces, mounted only in the node's
        // mount namespace, are released; their veths go with the node namespaces next.
        self.agents.clear();
    }
}
