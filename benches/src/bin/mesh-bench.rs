//! `mesh-bench`: the cluster benchmarks (issue 6). Builds the simulated two-node cluster
//! with the real mesh binaries, measures every path against the direct baseline, and writes
//! JSON, a Markdown report and SVG charts. Run it through `scripts/bench`, which builds
//! the release binaries first; needs root (network namespaces).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use mesh_benches::suite::{Mode, Phase, Plan};

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Under two minutes on 2 cores.
    Quick,
    /// Under fifteen minutes on 2 cores: longer runs, more repetitions, 10,000 idle
    /// connections, a 60 s memory-recovery window.
    Full,
    /// Seconds: the plumbing at tiny sizes (what the test runs); not a measurement.
    Tiny,
}

/// Command line.
#[derive(Parser)]
#[command(
    version,
    about = "Cluster benchmarks of the ambient mesh, as ratios to direct pod-to-pod traffic"
)]
struct Args {
    /// How much to measure.
    #[arg(long, value_enum, default_value = "quick")]
    mode: ModeArg,
    /// Where to write cluster.json, cluster.md, latency.svg and throughput.svg.
    #[arg(long, default_value = "bench-results/cluster")]
    out: PathBuf,
    /// Also profile both ztunnels at the first rate and write `flamegraph-ztunnels.svg`
    /// there (needs perf and inferno's tools: `scripts/bench <mode> flamegraph`).
    #[arg(long)]
    flamegraph: bool,
    /// Run only these parts of the suite (repeatable; all of them by default), to look at
    /// one figure without waiting for the rest.
    #[arg(long, value_enum)]
    only: Vec<Phase>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-bench builds network namespaces and must run as root");
    }
    mesh_tests::cleanup::install_interrupt_handler();
    let mode = match args.mode {
        ModeArg::Quick => Mode::Quick,
        ModeArg::Full => Mode::Full,
        ModeArg::Tiny => Mode::Tiny,
    };
    let flamegraph = args
        .flamegraph
        .then(|| args.out.join("flamegraph-ztunnels.svg"));
    if flamegraph.is_some() {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
    }
    let mut plan = Plan::for_mode(mode);
    if !args.only.is_empty() {
        plan.phases = Phase::ALL
            .into_iter()
            .filter(|phase| args.only.contains(phase))
            .collect();
    }
    let results = mesh_benches::suite::run(&plan, flamegraph.as_deref())
        .map_err(anyhow::Error::msg)
        .context("benchmark run")?;
    let (written, markdown) = mesh_benches::publish::write(&results, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{markdown}");
    eprintln!(
        "[mesh-bench] wrote {}, {}, {}, {}",
        written.json.display(),
        written.markdown.display(),
        written.latency_chart.display(),
        written.throughput_chart.display()
    );
    Ok(())
}
