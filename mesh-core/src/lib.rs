//! The mesh's shared library, used by `ztunnel`, `waypoint` and `istio-cni`.
//!
//! In the order a byte meets them on its way from one pod to another:
//!
//! ```text
//!   identity  ->  cert  ->  tls  ->  hbone::client (+ pool)  ==wire==>  hbone::server
//!   (SPIFFE)     (issue,    (mTLS     (HTTP/2 CONNECT out)              (CONNECT in, to a
//!                 renew)     configs)                                     handler that decides)
//! ```
//!
//! Beside that path: `netns` runs work inside pods' network namespaces, `inpod` fixes the ports and marks
//! used there, and `zds` is the protocol that hands those namespaces from istio-cni to
//! ztunnel.

pub mod cert;
pub mod drain;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod netns;
pub mod socket;
pub mod tls;
pub mod workers;
pub mod zds;

pub use identity::Identity;
