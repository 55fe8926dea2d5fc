//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! In the order things happen: [`zds_client`] receives captured pods and their network
//! namespaces from the istio-cni agent; [`proxy`] serves each from inside its namespace:
//! outbound connections are routed and tunneled over HBONE, inbound tunnels and plaintext
//! are authorized and handed to the app, counted in [`metrics`] (served by
//! [`http_endpoints`]). [`app`] wires them to the configuration.

pub mod admin;
pub mod app;
pub mod http_endpoints;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod zds_client;
