//! A flame graph of both ztunnels while the cross-node path carries 1 KiB requests at the
//! plan's first rate: `perf record` (DWARF call graphs, so release binaries without frame
//! pointers unwind) on the two ztunnel processes, then inferno's `inferno-collapse-perf` and
//! `inferno-flamegraph` (installed by `scripts/bench flamegraph`; run as tools, not linked)
//! turn `perf script`'s output into an SVG.

use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the profiled run lasts: enough samples for a readable graph (a ztunnel spends
/// ~0.1 ms of CPU per request).
pub const PROFILED_RUN: Duration = Duration::from_secs(5);

/// Sampling frequency (a prime, so it does not beat with periodic work).
const FREQUENCY: &str = "997";

/// Where the flame graph tools are: `$INFERNO_BIN` if set, else `$PATH`.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("INFERNO_BIN")
        .map(|dir| PathBuf::from(dir).join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `perf record` on `pids` while `load` runs, written to `data`.
pub fn record<T>(
    pids: &[i32],
    data: &FsPath,
    load: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let pids = pids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let perf = Command::new("perf")
        .args([
            "record",
            "-F",
            FREQUENCY,
            "--call-graph",
            "dwarf",
            "-p",
            &pids,
            "-o",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting perf record (is perf installed?): {e}"))?;
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(500));
    let outcome = load();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let finished = perf
        .wait_with_output()
        .map_err(|e| format!("waiting for perf record: {e}"))?;
    if !data.is_file() {
        return Err(format!(
            "perf record wrote nothing: {}",
            String::from_utf8_lossy(&finished.stderr)
        ));
    }
    outcome
}

/// Turns `data` into a flame graph at `svg`, titled `title`, with the folded stacks beside
/// it (`.folded`: one line per stack and its weight, for reading the profile as text).
pub fn flamegraph(data: &FsPath, svg: &FsPath, title: &str) -> Result<(), String> {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf script: {e}"))?;
    let folded = pipe(tool("inferno-collapse-perf"), &[], &script.stdout)?;
    let folded_path = svg.with_extension("folded");
    std::fs::write(&folded_path, &folded)
        .map_err(|e| format!("writing {}: {e}", folded_path.display()))?;
    let graph = pipe(
        tool("inferno-flamegraph"),
        &["--title", title, "--width", "1600"],
        &folded,
    )?;
    std::fs::write(svg, graph).map_err(|e| format!("writing {}: {e}", svg.display()))
}

/// Runs `program args` with `input` on stdin; its stdout.
fn pipe(program: PathBuf, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "{} (install with `scripts/bench flamegraph`, or `cargo install inferno`): {e}",
                program.display()
            )
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let _ = writer.join();
    if !output.status.success() {
        return Err(format!(
            "{}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}
