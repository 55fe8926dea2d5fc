//! The mesh's own processes on a simulated cluster, on the file config source: a CA, then
//! istio-cni's agent and ztunnel on every node, run from the workspace's binaries. The
//! demo, the end-to-end tests and the benchmarks start the mesh the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::apps::workspace_binary;
use crate::error::{HarnessError, Result};
use crate::{Cluster, Process};

/// Where `node`'s agent serves ZDS and its ztunnel connects.
pub fn zds_socket(cluster: &Cluster, node: &str) -> PathBuf {
    cluster.work_dir().join(format!("{node}-zds.sock"))
}

/// The mesh CA's directory (Istio's cacerts layout), shared by every ztunnel.
pub fn ca_dir(cluster: &Cluster) -> PathBuf {
    cluster.work_dir().join("ca")
}

/// What both of a node's components are told: the config, the node, the ZDS socket.
fn common_args(cluster: &Cluster, node: &str) -> Vec<String> {
    vec![
        "--config-dir".into(),
        cluster.config_dir().display().to_string(),
        "--node-name".into(),
        node.into(),
        "--zds-socket".into(),
        zds_socket(cluster, node).display().to_string(),
    ]
}

/// Starts `node`'s istio-cni agent, which finds pods only in that node's netns directory.
pub fn start_agent(cluster: &Cluster, node: &str) -> Result<Arc<Process>> {
    let mut args = common_args(cluster, node);
    args.extend([
        "--netns-dir".into(),
        cluster.node(node).pod_netns_dir().display().to_string(),
        "--no-proc-scan".into(),
        "--plugin-socket".into(),
        cluster
            .work_dir()
            .join(format!("{node}-cni.sock"))
            .display()
            .to_string(),
    ]);
    cluster
        .node(node)
        .spawn(workspace_binary("istio-cni-agent")?, args)
}

/// Starts `node`'s ztunnel with the cluster's CA.
pub fn start_ztunnel(cluster: &Cluster, node: &str) -> Result<Arc<Process>> {
    let mut args = common_args(cluster, node);
    args.extend(["--ca-dir".into(), ca_dir(cluster).display().to_string()]);
    cluster.node(node).spawn(workspace_binary("ztunnel")?, args)
}

/// The running mesh: each node's agent and ztunnel (stopped with the cluster).
#[derive(Debug)]
pub struct Mesh {
    agents: BTreeMap<String, Arc<Process>>,
    ztunnels: BTreeMap<String, Arc<Process>>,
}

impl Mesh {
    /// Generates the CA (unless the cluster has one) and starts every node's agent and
    /// ztunnel.
    pub fn start(cluster: &Cluster) -> Result<Self> {
        let ca = ca_dir(cluster);
        if !ca.join("ca-cert.pem").exists() {
            mesh_core::cert::LocalCa::generate("cluster.local")
                .and_then(|ca_files| ca_files.write_to(&ca))
                .map_err(|err| HarnessError::Spec(format!("making the mesh CA: {err}")))?;
        }
        let mut mesh = Mesh {
            agents: BTreeMap::new(),
            ztunnels: BTreeMap::new(),
        };
        for node in cluster.nodes() {
            let name = node.name().to_string();
            mesh.agents
                .insert(name.clone(), start_agent(cluster, &name)?);
            mesh.ztunnels
                .insert(name.clone(), start_ztunnel(cluster, &name)?);
        }
        Ok(mesh)
    }

    /// `node`'s ztunnel.
    pub fn ztunnel(&self, node: &str) -> &Arc<Process> {
        &self.ztunnels[node]
    }

    /// `node`'s istio-cni agent.
    pub fn agent(&self, node: &str) -> &Arc<Process> {
        &self.agents[node]
    }

    /// Every mesh process, labeled `ztunnel/<node>` or `istio-cni-agent/<node>`.
    pub fn processes(&self) -> Vec<(String, Arc<Process>)> {
        let ztunnels = self
            .ztunnels
            .iter()
            .map(|(node, p)| (format!("ztunnel/{node}"), p.clone()));
        let agents = self
            .agents
            .iter()
            .map(|(node, p)| (format!("istio-cni-agent/{node}"), p.clone()));
        ztunnels.chain(agents).collect()
    }
}
