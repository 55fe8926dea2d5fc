//! istio-cni: the CNI plugin and node agent that redirect ambient pods' traffic to ztunnel.
//!
//! The rule renderer, plugin and agent arrive with issue 4; the crate exists now so that
//! the workspace has its final shape.
