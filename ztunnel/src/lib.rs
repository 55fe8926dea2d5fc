//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! [`proxy`] serves each captured pod from inside its network namespace: outbound
//! connections are routed and tunneled over HBONE, inbound tunnels and plaintext are
//! authorized and handed to the app. Enrollment (ZDS), metrics and the admin endpoints
//! arrive next.

pub mod proxy;
