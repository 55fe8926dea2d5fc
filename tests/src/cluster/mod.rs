//! A built simulated cluster and handles to its nodes and pods.
//!
//! [`Cluster::builder`] describes it ([`builder`]), [`ClusterBuilder::build`] wires the
//! namespaces ([`wiring`]) and writes the Kubernetes YAML ([`crate::kube_yaml`]). The
//! handles run programs and code inside nodes and pods. Dropping the cluster stops every
//! program and deletes every namespace; if the test is panicking, it first prints every
//! program's output, which is usually what explains the failure.

pub mod builder;
mod wiring;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

pub use builder::{ClusterBuilder, ClusterSpec, Labels, PodSpec, ServiceSpec};

use crate::addressing::{node_pod_cidr, node_underlay_ip, pod_ip, service_ip};
use crate::apps::testapp_binary;
use crate::error::{HarnessError, Result};
use crate::netns::NetNs;
use crate::process::Process;
use crate::{cleanup, kube_yaml};

/// A simulated Kubernetes cluster: nodes and pods as network namespaces, with YAML.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    spec: ClusterSpec,
    supervisor: Arc<Supervisor>,
    // Drop order matters: pods, then nodes, then the underlay, then the work directory.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    _underlay: NetNs,
    config_dir: PathBuf,
    _workdir: cleanup::WorkDir,
}

impl ClusterBuilder {
    /// Creates the cluster described so far.
    ///
    /// Fails with a message saying what to fix when not root, when iproute2 is missing or
    /// when the description is inconsistent; never silently does less.
    pub fn build(self) -> Result<Cluster> {
        let spec = self.into_spec()?;
        crate::netns::ensure_can_build()?;
        cleanup::install_interrupt_handler();
        cleanup::sweep_stale_once();
        let id = cleanup::unique_prefix();
        let workdir = cleanup::WorkDir::create(&id)
            .map_err(|err| HarnessError::io("creating the cluster's work directory", err))?;
        let config_dir = workdir.path().join("config");
        let log_dir = workdir.path().join("logs");
        for dir in [&config_dir, &log_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|err| HarnessError::io(format!("creating {}", dir.display()), err))?;
        }
        let network = wiring::build(&id, &spec)?;
        // Each node's pods' namespaces, as a directory of links: what a node agent may see.
        for (node_spec, pod_netns) in spec.nodes.iter().zip(&network.pods) {
            let dir = workdir.path().join("netns").join(&node_spec.name);
            std::fs::create_dir_all(&dir)
                .map_err(|err| HarnessError::io(format!("creating {}", dir.display()), err))?;
            for (pod_spec, netns) in node_spec.pods.iter().zip(pod_netns) {
                std::os::unix::fs::symlink(netns.path(), dir.join(&pod_spec.name))
                    .map_err(|err| HarnessError::io("linking a pod namespace", err))?;
            }
        }
        kube_yaml::write_cluster(&config_dir, &spec)?;

        let supervisor = Arc::new(Supervisor {
            log_dir,
            processes: Mutex::default(),
            labels_used: Mutex::default(),
        });
        let mut pods = Vec::new();
        for ((node_index, node_spec), pod_netns) in spec.nodes.iter().enumerate().zip(network.pods)
        {
            for ((pod_index, pod_spec), netns) in node_spec.pods.iter().enumerate().zip(pod_netns) {
                pods.push(Pod {
                    spec: pod_spec.clone(),
                    node: node_spec.name.clone(),
                    ip: pod_ip(node_index, pod_index),
                    netns,
                    supervisor: supervisor.clone(),
                });
            }
        }
        let nodes = spec
            .nodes
            .iter()
            .zip(network.nodes)
            .enumerate()
            .map(|(index, (node_spec, netns))| Node {
                netns_dir: workdir.path().join("netns").join(&node_spec.name),
                name: node_spec.name.clone(),
                underlay_ip: node_underlay_ip(index),
                pod_cidr: node_pod_cidr(index),
                netns,
                supervisor: supervisor.clone(),
            })
            .collect();
        Ok(Cluster {
            id,
            spec,
            supervisor,
            pods,
            nodes,
            _underlay: network.underlay,
            config_dir,
            _workdir: workdir,
        })
    }
}

impl Cluster {
    /// Starts describing a cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The prefix of all its namespace names, unique across processes and clusters.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The description it was built from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The directory of Kubernetes YAML describing it: the file config source.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// A private scratch directory of the cluster (sockets, CA files), removed with it.
    pub fn work_dir(&self) -> &Path {
        self._workdir.path()
    }

    /// Its nodes, in the order they were described.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Its pods, node by node, in the order they were described.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The node called `name`. Panics, listing the nodes, if there is none: a test bug.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!("no node {name:?} in this cluster; nodes: {names:?}")
            })
    }

    /// The pod called `name`. Panics, listing the pods, if there is none: a test bug.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = self.pods.iter().map(|p| p.spec.name.as_str()).collect();
                panic!("no pod {name:?} in this cluster; pods: {names:?}")
            })
    }

    /// The ClusterIP of service `namespace/name`. Panics if there is none: a test bug.
    pub fn service_ip(&self, namespace: &str, name: &str) -> Ipv4Addr {
        let index = self
            .spec
            .services
            .iter()
            .position(|s| s.namespace == namespace && s.name == name)
            .unwrap_or_else(|| panic!("no service {namespace}/{name} in this cluster"));
        service_ip(index)
    }

    /// The output of every program started in the cluster so far.
    pub fn logs(&self) -> String {
        self.supervisor.logs()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "harness: test failed in cluster {}; program output follows\n{}",
                self.id,
                self.logs()
            );
        }
        self.supervisor.stop_all();
    }
}

/// The programs of one cluster and where their output goes.
#[derive(Debug)]
struct Supervisor {
    log_dir: PathBuf,
    processes: Mutex<Vec<Arc<Process>>>,
    labels_used: Mutex<HashMap<String, u32>>,
}

impl Supervisor {
    /// Starts `command` under a label unique in the cluster, e.g. `server.mesh-testapp.0`.
    fn spawn(&self, base_label: &str, command: std::process::Command) -> Result<Arc<Process>> {
        let label = {
            let mut used = self.labels_used.lock().unwrap_or_else(|p| p.into_inner());
            let n = used.entry(base_label.to_string()).or_insert(0);
            *n += 1;
            format!("{base_label}.{}", *n - 1)
        };
        let process = Arc::new(Process::spawn(&label, command, &self.log_dir)?);
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(process.clone());
        Ok(process)
    }

    fn logs(&self) -> String {
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        processes
            .iter()
            .map(|p| p.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn stop_all(&self) {
        let processes =
            std::mem::take(&mut *self.processes.lock().unwrap_or_else(|p| p.into_inner()));
        for process in processes {
            if let Err(err) = process.stop() {
                eprintln!("harness: {err}");
            }
        }
    }
}

/// A simulated node: the namespace where ztunnel and the istio-cni agent will run.
#[derive(Debug)]
pub struct Node {
    name: String,
    netns_dir: PathBuf,
    underlay_ip: Ipv4Addr,
    pod_cidr: (Ipv4Addr, u8),
    netns: NetNs,
    supervisor: Arc<Supervisor>,
}

impl Node {
    /// Its Kubernetes name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the underlay (the Node's InternalIP).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// A directory holding links to the network namespaces of this node's pods (and only
    /// those): what a node agent searches in the simulated cluster.
    pub fn pod_netns_dir(&self) -> PathBuf {
        self.netns_dir.clone()
    }

    /// Its pod CIDR as (network, prefix length).
    pub fn pod_cidr(&self) -> (Ipv4Addr, u8) {
        self.pod_cidr
    }

    /// Its network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Starts a program in the node's namespace with `NODE_NAME` set; stopped with the cluster.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Arc<Process>> {
        let mut command = self.netns.command(program.as_ref())?;
        command.args(args).env("NODE_NAME", &self.name);
        self.supervisor.spawn(
            &format!("{}.{}", self.name, base_name(program.as_ref())),
            command,
        )
    }

    /// Runs a program in the node's namespace to completion and returns its output.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        exec(&self.netns, program.as_ref(), args)
    }

    /// Runs `f` on a thread inside the node's namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.netns.run(f)
    }
}

/// A simulated pod: a network namespace with one address, reachable from every other pod.
#[derive(Debug)]
pub struct Pod {
    spec: PodSpec,
    node: String,
    ip: Ipv4Addr,
    netns: NetNs,
    supervisor: Arc<Supervisor>,
}

impl Pod {
    /// Its Kubernetes name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.spec.namespace
    }

    /// Its ServiceAccount.
    pub fn service_account(&self) -> &str {
        &self.spec.service_account
    }

    /// Its labels.
    pub fn labels(&self) -> &Labels {
        &self.spec.labels
    }

    /// The node it runs on.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Its IP (`status.podIP`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Starts a program in the pod with the downward-API variables (`POD_NAME`,
    /// `POD_NAMESPACE`, `POD_IP`, `NODE_NAME`, `SERVICE_ACCOUNT`); stopped with the cluster.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Arc<Process>> {
        let mut command = self.netns.command(program.as_ref())?;
        command.args(args);
        for (key, value) in self.env() {
            command.env(key, value);
        }
        self.supervisor.spawn(
            &format!("{}.{}", self.spec.name, base_name(program.as_ref())),
            command,
        )
    }

    /// Starts the test app (`mesh-testapp <args>`) in the pod.
    pub fn spawn_testapp<S: AsRef<OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Arc<Process>> {
        self.spawn(testapp_binary()?, args)
    }

    /// Starts a test-app server in the pod and waits until it listens.
    pub fn serve<S: AsRef<OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Arc<Process>> {
        let process = self.spawn_testapp(args)?;
        process.wait_for_stdout(crate::apps::READY_LINE, std::time::Duration::from_secs(10))?;
        Ok(process)
    }

    /// Runs a program in the pod to completion and returns its output.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        exec(&self.netns, program.as_ref(), args)
    }

    /// Runs `f` on a thread inside the pod's namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.netns.run(f)
    }

    /// Runs the future `make()` returns to completion on a Tokio runtime inside the pod's
    /// namespace: how tests use the async clients in [`crate::apps`] from a pod.
    pub fn block_on<T: Send, F: Future<Output = T>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> Result<T> {
        self.netns.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| HarnessError::io("starting a Tokio runtime", err))?;
            Ok(runtime.block_on(make()))
        })?
    }

    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("POD_NAME", self.spec.name.clone()),
            ("POD_NAMESPACE", self.spec.namespace.clone()),
            ("POD_IP", self.ip.to_string()),
            ("NODE_NAME", self.node.clone()),
            ("SERVICE_ACCOUNT", self.spec.service_account.clone()),
        ]
    }
}

fn exec<S: AsRef<OsStr>>(
    netns: &NetNs,
    program: &OsStr,
    args: impl IntoIterator<Item = S>,
) -> Result<Output> {
    let mut command = netns.command(program)?;
    command.args(args);
    command
        .output()
        .map_err(|err| HarnessError::io(format!("running {program:?} in {}", netns.name()), err))
}

fn base_name(program: &OsStr) -> String {
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}
