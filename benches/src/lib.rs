//! Benchmarks of the mesh. Figures are always reported beside a baseline measured in the
//! same run, as a ratio, because these machines are shared and noisy.
//!
//! * [`loopback`], [`report`]: the HBONE library alone on 127.0.0.1 against plain TCP and
//!   plain TLS (`cargo bench -p mesh-benches --bench hbone`).
//! * The whole mesh on the simulated cluster (`scripts/bench`, the `mesh-bench` binary):
//!   [`cluster`] builds it and names the paths, [`load`] drives traffic, [`procstat`]
//!   reads the mesh's CPU and memory, [`suite`] runs the plan, [`summary`] compares with
//!   the baseline and the targets, [`publish`] writes JSON, Markdown and [`svg`] charts;
//!   [`profile`] draws a flame graph of both ztunnels; [`tls_relay`] is the mutual-TLS floor the mesh is compared with besides direct TCP.

pub mod cluster;
pub mod load;
pub mod loopback;
pub mod procstat;
pub mod profile;
pub mod publish;
pub mod report;
pub mod suite;
pub mod summary;
pub mod svg;
pub mod tls_relay;
