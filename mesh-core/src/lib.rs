//! The mesh's shared library, used by `ztunnel`, `waypoint` and `istio-cni`.
//!
//! It will hold, in the order a byte meets them on its way from one pod to another:
//!
//! ```text
//!   model + discovery  ->  identity  ->  tls  ->  hbone::{client,pool}  ==wire==>  hbone::server
//!   (who is where)        (SPIFFE)     (mTLS)    (HTTP/2 CONNECT out)             (CONNECT in)
//! ```
//!
//! Nothing is implemented yet: the workspace and the simulated-cluster harness land first
//! (issue 2), identity/TLS/HBONE next (issue 3). See `ARCHITECTURE.md`.
