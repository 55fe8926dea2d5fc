//! Collects per-iteration times from benchmark runs and prints them as ratios to a
//! baseline from the same run, as Markdown and JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Per-iteration samples, by group then by contender.
#[derive(Debug, Default)]
pub struct Report {
    samples: Mutex<BTreeMap<String, BTreeMap<String, Vec<f64>>>>,
}

impl Report {
    /// Records that `iterations` of `group`/`name` took `elapsed`.
    pub fn record(&self, group: &str, name: &str, iterations: u64, elapsed: Duration) {
        if iterations == 0 {
            return;
        }
        let per_iteration = elapsed.as_nanos() as f64 / iterations as f64;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .entry(group.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()
            .push(per_iteration);
    }

    /// Median nanoseconds per iteration of each contender, by group.
    pub fn medians(&self) -> BTreeMap<String, BTreeMap<String, f64>> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .map(|(group, names)| {
                let medians = names
                    .iter()
                    .map(|(name, values)| (name.clone(), median(values)))
                    .collect();
                (group.clone(), medians)
            })
            .collect()
    }

    /// A Markdown table: median time per iteration and its ratio to `baseline`.
    pub fn markdown(&self, baseline: &str) -> String {
        let mut out = String::from(
            "| group | contender | median per iteration | ratio to baseline |\n|---|---|---|---|\n",
        );
        for (group, medians) in self.medians() {
            let base = medians.get(baseline).copied();
            for (name, value) in &medians {
                let ratio = base.map_or("n/a".to_string(), |base| format!("{:.2}x", value / base));
                out.push_str(&format!(
                    "| {group} | {name} | {} | {ratio} |\n",
                    human(*value)
                ));
            }
        }
        out
    }

    /// The medians as JSON (nanoseconds per iteration).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.medians()).unwrap_or_default()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn human(nanos: f64) -> String {
    match nanos {
        n if n >= 1e9 => format!("{:.2} s", n / 1e9),
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.1} µs", n / 1e3),
        n => format!("{n:.0} ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_use_the_median_of_the_same_group() {
        let report = Report::default();
        for ms in [10, 11, 1000] {
            report.record("rr", "tcp", 10, Duration::from_millis(ms * 10));
        }
        for ms in [30, 33, 31] {
            report.record("rr", "hbone", 10, Duration::from_millis(ms * 10));
        }
        let table = report.markdown("tcp");
        assert!(table.contains("| rr | tcp | 11.00 ms | 1.00x |"), "{table}");
        assert!(
            table.contains("| rr | hbone | 31.00 ms | 2.82x |"),
            "{table}"
        );
    }
}
