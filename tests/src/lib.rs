//! The simulated cluster: Kubernetes nodes and pods built from Linux network namespaces.
//!
//! Tests, benchmarks and the local demo share this library. As root it builds, on one
//! machine, the network a real cluster gives its pods:
//!
//! ```text
//!   underlay netns:   br0 ─┬───────────────────────────┬─  (172.18.0.0/16, L2 bridge)
//!                          │ eth0 172.18.0.1           │ eth0 172.18.0.2
//!   node netns:          node n1 (forwards)          node n2 (forwards)
//!                        vp0 ┬ vp1 ┐                 vp0 ┬ ...
//!   pod netns:     eth0 10.244.1.2 10.244.1.3        eth0 10.244.2.2
//! ```
//!
//! Every pod reaches every other pod by IP, across nodes, without NAT. Nothing touches the
//! host's own network: the bridge lives in a namespace of its own, so two clusters built at
//! the same time never see each other even though they use the same addresses.
//!
//! Modules, in the order a cluster comes to life: [`addressing`] plans the IPs,
//! [`netns`] creates namespaces and enters them, [`cluster`] wires nodes and pods,
//! [`kube_yaml`] writes the matching Kubernetes objects, [`process`] runs programs inside
//! pods, [`apps`] are the servers and clients those programs are, and [`cleanup`] makes
//! sure all of it disappears on drop, panic and Ctrl-C. [`mesh`] starts the mesh's own
//! processes on a cluster.

pub mod addressing;
pub mod apps;
pub mod cleanup;
pub mod cluster;
pub mod error;
pub mod eventually;
pub mod go_builds;
pub mod kube_control_plane;
pub mod kube_nodes;
pub mod kube_yaml;
pub mod kubectl;
pub mod mesh;
pub mod netns;
pub mod process;
pub mod topology;

pub use cluster::{Cluster, ClusterBuilder, Node, Pod};
pub use error::HarnessError;
pub use eventually::eventually;
pub use process::Process;
