//! Benchmarks of the mesh. Figures are always reported beside a baseline measured in the
//! same run (plain TCP), as a ratio, because these machines are shared and noisy.
//!
//! * [`loopback`]: the HBONE library alone on 127.0.0.1, against plain TCP and plain TLS
//!   (`cargo bench -p mesh-benches --bench hbone`).
//! * [`report`]: the per-run table of medians and ratios.
//!
//! Whole-mesh benchmarks on the simulated cluster (issue 6) will reuse the `mesh-tests` harness.

pub mod loopback;
pub mod report;
