//! Benchmarks of the mesh, built on the simulated-cluster harness of `mesh-tests`.
//!
//! The measurements (HBONE micro-benchmarks, then throughput, latency, CPU and memory per
//! path) arrive with issues 3 and 6. The package exists now so that it shares the harness
//! and the build with the tests from the start.

pub use mesh_tests::Cluster;
