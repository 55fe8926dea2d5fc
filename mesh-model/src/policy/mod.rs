//! L4 policy: may this connection reach this workload? Pure functions over the model.
//!
//! * [`authorize`]: Istio AuthorizationPolicy at L4, as ztunnel enforces it: DENY policies
//!   first; then, if any ALLOW policy applies to the workload, one must match.
//! * [`peer_authentication`]: the effective PeerAuthentication mode for a workload and
//!   port, which decides whether plaintext is accepted.
//!
//! Rules that name HTTP attributes (methods, paths, hosts, request principals, headers)
//! cannot be checked on a TCP connection. Like Istio's ztunnel we fail closed: in an ALLOW
//! policy such a rule matches nothing; in a DENY policy its HTTP parts are dropped, so it
//! denies more, never less.

mod authz;
pub mod compiled;
mod peer_authn;

use std::net::IpAddr;

pub use authz::authorize;
pub use compiled::CompiledPolicy;
pub use peer_authn::peer_authentication;

use mesh_core::identity::Identity;

/// The namespace whose policies apply to the whole mesh (Istio's default root).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// What policy knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// The original source address.
    pub src_ip: IpAddr,
    /// The destination address.
    pub dst_ip: IpAddr,
    /// The destination port.
    pub dst_port: u16,
}

/// An authorization decision and the policy that made it, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: by no applicable policy (`None`), or by the named ALLOW policy.
    Allow(Option<String>),
    /// Denied by the named DENY policy.
    DeniedBy(String),
    /// Denied because ALLOW policies apply and none matched.
    NotAllowed,
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}
