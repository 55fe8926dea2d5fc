//! Writes a run's results where people and tools read them: JSON (everything, samples
//! included), the Markdown report, and two SVG charts.

use std::io;
use std::path::{Path as FsPath, PathBuf};

use serde::Serialize;

use crate::cluster::Path;
use crate::suite::Results;
use crate::summary::{self, Target};
use crate::svg;

/// The files a run wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// `cluster.json`.
    pub json: PathBuf,
    /// `cluster.md`.
    pub markdown: PathBuf,
    /// `latency.svg`: latency percentiles per path at the first open-loop rate.
    pub latency_chart: PathBuf,
    /// `throughput.svg`: throughput per path and stream count.
    pub throughput_chart: PathBuf,
}

#[derive(Serialize)]
struct Document<'a> {
    results: &'a Results,
    targets: &'a [Target],
}

/// Writes everything into `dir`; returns the Markdown too.
pub fn write(results: &Results, dir: &FsPath) -> io::Result<(Written, String)> {
    std::fs::create_dir_all(dir)?;
    let targets = summary::targets(results);
    let markdown = summary::markdown(results, &targets);
    let written = Written {
        json: dir.join("cluster.json"),
        markdown: dir.join("cluster.md"),
        latency_chart: dir.join("latency.svg"),
        throughput_chart: dir.join("throughput.svg"),
    };
    let json = serde_json::to_string_pretty(&Document {
        results,
        targets: &targets,
    })
    .map_err(io::Error::other)?;
    std::fs::write(&written.json, json + "\n")?;
    std::fs::write(&written.markdown, &markdown)?;
    std::fs::write(&written.latency_chart, latency_chart(results))?;
    std::fs::write(&written.throughput_chart, throughput_chart(results))?;
    Ok((written, markdown))
}

fn names() -> Vec<&'static str> {
    Path::ALL.iter().map(|p| p.name()).collect()
}

fn latency_chart(results: &Results) -> String {
    let rate = results.plan.rates.first().copied().unwrap_or_default();
    let pick = |path: Path, q: usize| {
        results
            .paths
            .get(&path)
            .and_then(|p| p.open_loop.get(&(rate as u64)))
            .map_or(f64::NAN, |l| [&l.p50, &l.p90, &l.p99, &l.p999][q].median)
    };
    let series: Vec<(String, Vec<f64>)> = ["p50", "p90", "p99", "p99.9"]
        .iter()
        .enumerate()
        .map(|(q, name)| {
            (
                name.to_string(),
                Path::ALL.iter().map(|&p| pick(p, q)).collect(),
            )
        })
        .collect();
    svg::grouped_bars(
        &format!(
            "1 KiB request/response latency at {rate} req/s ({})",
            results.date
        ),
        "µs",
        &names(),
        &series,
    )
}

fn throughput_chart(results: &Results) -> String {
    let series: Vec<(String, Vec<f64>)> = results
        .plan
        .streams
        .iter()
        .map(|&streams| {
            let values = Path::ALL
                .iter()
                .map(|path| {
                    results
                        .paths
                        .get(path)
                        .and_then(|p| p.throughput_gbps.get(&streams))
                        .map_or(f64::NAN, |s| s.median)
                })
                .collect();
            (format!("{streams} stream(s)"), values)
        })
        .collect();
    svg::grouped_bars(
        &format!("Bulk throughput ({})", results.date),
        "Gbit/s",
        &names(),
        &series,
    )
}
