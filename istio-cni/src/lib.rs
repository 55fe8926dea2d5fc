//! istio-cni: the CNI plugin and node agent that redirect ambient pods' traffic to ztunnel.
//!
//! In the order a pod meets them: the plugin or the agent notices the pod, [`rules`]
//! renders and installs the in-pod redirection inside its network namespace, then the
//! agent hands that namespace to ztunnel (ZDS, to come).

pub mod rules;
