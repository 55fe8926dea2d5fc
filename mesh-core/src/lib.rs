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
//! The data-plane model and discovery sources arrive with the L4 data path (issue 4).

pub mod cert;
pub mod hbone;
pub mod identity;
pub mod netns;
pub mod tls;

pub use identity::Identity;
