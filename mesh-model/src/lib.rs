//! The mesh's configuration and its compiled model, apart from `mesh-core` so that binaries
//! which need only the protocols (the CNI plugin, benchmarks' load generators) link no
//! Kubernetes client, file watcher or YAML parser.
//!
//! In the order a change meets them: `config` reads Kubernetes objects (a directory of YAML,
//! or the API) into one store, `model` compiles the store into workloads, services and
//! waypoints with their indices, and `policy` decides L4 authorization and mTLS mode on them.

pub mod config;
pub mod model;
pub mod policy;
