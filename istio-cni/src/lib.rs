//! istio-cni: the CNI plugin and node agent that redirect ambient pods' traffic to ztunnel.
//!
//! [`install`] puts the plugin on the node and chains it into the CNI configuration.
//! Then, in the order a pod meets them: the CNI [`plugin`] tells the agent where a new pod's
//! network namespace is; the [`agent`] notices the pod in the configuration,
//! [`netns_finder`] finds its network namespace, [`rules`] renders and installs the
//! in-pod redirection there, and the agent hands the namespace to ztunnel over ZDS.

pub mod agent;
pub mod install;
pub mod netns_finder;
pub mod rules;

/// The CNI plugin, its own crate so the binary the runtime runs for every pod links none of
/// the agent's dependencies.
pub use istio_cni_plugin as plugin;
