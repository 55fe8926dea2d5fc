//! The cluster benchmark suite: what is measured, how long, how often, and the results.
//!
//! Every repetition runs every path in turn (so drift on a shared machine spreads over all
//! of them); each figure is the median of its repetitions, with min and max beside it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{BenchCluster, Path};
use crate::load::{self, LatencyRun};
use crate::procstat;

/// How much to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Seconds in all: the plumbing test's sizes, not a measurement.
    Tiny,
    /// Under two minutes.
    Quick,
    /// Under fifteen minutes.
    Full,
}

/// A part of the suite that can be run alone, to look at one figure without waiting for
/// the others (the figures of the parts not run are absent from the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every path's throughput, latency, connection rate, and the CPU per request and per
    /// connection.
    Paths,
    /// The first open-loop rate with everything on one CPU.
    Pinned,
    /// Idle connections, the peak, and recovery after a burst.
    Memory,
}

impl Phase {
    /// Every phase, in the order a run takes them.
    pub const ALL: [Phase; 3] = [Phase::Paths, Phase::Pinned, Phase::Memory];
}

/// The sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Which mode this is.
    pub mode: Mode,
    /// The parts of the suite this run takes ([`Phase::ALL`] unless narrowed).
    pub phases: Vec<Phase>,
    /// Measured repetitions (after one warm-up).
    pub repetitions: usize,
    /// Length of each measured run.
    pub run: Duration,
    /// Length of the warm-up run per path.
    pub warmup: Duration,
    /// Stream counts of the bulk runs.
    pub streams: Vec<usize>,
    /// Offered rates of the open-loop runs, requests per second.
    pub rates: Vec<f64>,
    /// Connections sharing each open-loop rate.
    pub open_loop_connections: usize,
    /// Idle connections held open for the memory figure.
    pub idle_connections: usize,
    /// High-volume connections of the memory burst, and how long RSS may take to settle.
    pub burst: (usize, Duration),
}

impl Plan {
    /// The plan of `mode`.
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Tiny => Plan {
                mode,
                phases: Phase::ALL.to_vec(),
                repetitions: 1,
                run: Duration::from_millis(150),
                warmup: Duration::from_millis(50),
                streams: vec![1, 2],
                rates: vec![200.0],
                open_loop_connections: 2,
                idle_connections: 20,
                burst: (4, Duration::from_secs(2)),
            },
            Mode::Quick => Plan {
                mode,
                phases: Phase::ALL.to_vec(),
                repetitions: 3,
                run: Duration::from_millis(700),
                warmup: Duration::from_millis(300),
                streams: vec![1, 4, 8],
                rates: vec![1_000.0, 10_000.0],
                open_loop_connections: 4,
                idle_connections: 1_000,
                burst: (150, Duration::from_secs(20)),
            },
            Mode::Full => Plan {
                mode,
                phases: Phase::ALL.to_vec(),
                repetitions: 5,
                run: Duration::from_secs(3),
                warmup: Duration::from_secs(1),
                streams: vec![1, 4, 8],
                rates: vec![1_000.0, 10_000.0],
                open_loop_connections: 4,
                idle_connections: 10_000,
                burst: (150, Duration::from_secs(60)),
            },
        }
    }
}

/// A figure over the repetitions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stat {
    /// Median of the samples.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Every sample, in run order.
    pub samples: Vec<f64>,
}

impl Stat {
    /// The statistic of `samples`.
    pub fn of(samples: Vec<f64>) -> Self {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// Latency percentiles in microseconds, and the achieved rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Median.
    pub p50: Stat,
    /// 90th percentile.
    pub p90: Stat,
    /// 99th percentile.
    pub p99: Stat,
    /// 99.9th percentile.
    pub p999: Stat,
    /// Completed operations per second.
    pub rate: Stat,
}

/// Per-repetition samples of one latency figure.
#[derive(Default)]
struct LatencySamples(Vec<[f64; 5]>);

impl LatencySamples {
    fn push(&mut self, run: &LatencyRun) {
        self.0.push([
            run.quantile_us(0.5),
            run.quantile_us(0.9),
            run.quantile_us(0.99),
            run.quantile_us(0.999),
            run.rate(),
        ]);
    }

    fn summarize(&self) -> Latencies {
        let column = |i: usize| Stat::of(self.0.iter().map(|s| s[i]).collect());
        Latencies {
            p50: column(0),
            p90: column(1),
            p99: column(2),
            p999: column(3),
            rate: column(4),
        }
    }
}

/// Everything measured on one path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathResults {
    /// Bulk throughput in Gbit/s, by stream count.
    pub throughput_gbps: BTreeMap<usize, Stat>,
    /// One connection, requests back to back.
    pub closed_loop: Latencies,
    /// Fixed offered rates (coordinated-omission corrected), by requests per second.
    pub open_loop: BTreeMap<u64, Latencies>,
    /// New connections (connect, 1-byte ping-pong, close) back to back.
    pub connections: Latencies,
}

/// What the mesh's processes cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Costs {
    /// CPU µs per request, per ztunnel, at the first open-loop rate on the cross-node path.
    pub cpu_us_per_request_per_ztunnel: Stat,
    /// CPU seconds of all mesh processes (ztunnels and agents) per 1,000 such requests.
    pub cpu_seconds_per_1000_requests_all: Stat,
    /// CPU µs of both ztunnels together per new cross-node connection.
    pub cpu_us_per_connection_both_ztunnels: Stat,
    /// The floor's: CPU µs per request per TLS relay at the first open-loop rate.
    pub cpu_us_per_request_per_relay: Stat,
    /// The same for the relays inside the capture pods (`tls-relay-in-pod`): the part of
    /// ztunnel's figure that the in-pod capture and route cost.
    pub cpu_us_per_request_per_relay_in_pod: Stat,
    /// Context switches per request per ztunnel in that run: the sleeps and wake-ups each
    /// request costs a ztunnel's threads.
    pub switches_per_request_per_ztunnel: Stat,
    /// The floor's: context switches per request per TLS relay in its run.
    pub switches_per_request_per_relay: Stat,
    /// The floor's: CPU µs of both relays per new connection (a TLS handshake each: the
    /// relays have no tunnel to reuse).
    pub cpu_us_per_connection_both_relays: Stat,
    /// CPU ms of both ztunnels per GiB one cross-node bulk stream carried: what a byte
    /// costs, which throughput on a shared machine shows only through its neighbours' noise.
    pub cpu_ms_per_gib_both_ztunnels: Stat,
    /// The floor's: CPU ms of both TLS relays per GiB of their one bulk stream.
    pub cpu_ms_per_gib_both_relays: Stat,
    /// The kernel's share of the proxies' CPU in those runs (system over user + system
    /// time, summed over the repetitions): what no change to the proxy's code can save.
    pub kernel_share: KernelShares,
    /// Resident memory of each ztunnel when idle, MiB (the larger of the two).
    pub idle_rss_mib: f64,
    /// Extra resident memory per idle proxied connection, KiB (the larger ztunnel).
    pub kib_per_idle_connection: f64,
    /// Connections held for that figure.
    pub idle_connections: usize,
    /// The highest resident memory either ztunnel reached, MiB.
    pub peak_rss_mib: f64,
    /// After a burst of high-volume connections: seconds until both ztunnels were back
    /// within 1.1x their idle RSS (`None`: not within the plan's window).
    pub burst_recovery_seconds: Option<f64>,
    /// The ztunnels' RSS right after the burst, MiB (the larger).
    pub burst_rss_mib: f64,
    /// Each ztunnel's RSS when the recovery check ended (settled, or the window over) and
    /// what 1.1x its idle RSS allows, MiB: how close a recovery that missed came.
    pub burst_end_rss_mib: Vec<(f64, f64)>,
}

/// The kernel's share (0 to 1) of the proxies' CPU in the runs whose cost [`Costs`] reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelShares {
    /// Both ztunnels, cross-node requests at the first open-loop rate.
    pub request_ztunnels: f64,
    /// Both TLS relays, in their run at that rate.
    pub request_relays: f64,
    /// Both ztunnels, new cross-node connections.
    pub connection_ztunnels: f64,
    /// Both TLS relays, new connections (handshakes included).
    pub connection_relays: f64,
    /// Both ztunnels, one cross-node bulk stream.
    pub bulk_ztunnels: f64,
    /// Both TLS relays, their one bulk stream.
    pub bulk_relays: f64,
}

/// User and system clock ticks of some processes, added up over runs.
#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    /// The processes' ticks now.
    fn of(pids: &[i32]) -> BenchResult<Ticks> {
        let mut total = Ticks::default();
        for &pid in pids {
            let (user, system) =
                procstat::user_system_ticks(pid).map_err(|e| format!("ticks of {pid}: {e}"))?;
            total.user += user;
            total.system += system;
        }
        Ok(total)
    }

    /// Adds what was spent between `before` and `after`.
    fn add_spent(&mut self, before: Ticks, after: Ticks) {
        self.user += after.user.saturating_sub(before.user);
        self.system += after.system.saturating_sub(before.system);
    }

    /// The kernel's share (NaN when nothing was counted).
    fn kernel_share(self) -> f64 {
        self.system as f64 / (self.user + self.system) as f64
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// When (UTC, RFC 3339).
    pub date: String,
    /// What ran it.
    pub machine: String,
    /// The sizes.
    pub plan: Plan,
    /// Figures per path.
    pub paths: BTreeMap<Path, PathResults>,
    /// Costs of the mesh's processes.
    pub costs: Costs,
    /// Latency at the first open-loop rate with client, server and both ztunnels pinned to
    /// CPU 0 (cross-CPU wake-ups left out), direct and cross-node.
    pub pinned_open_loop: BTreeMap<Path, Latencies>,
}

/// Progress lines go to stderr, so stdout stays the report.
fn progress(message: &str) {
    eprintln!("[mesh-bench] {message}");
}

type BenchResult<T> = Result<T, String>;

fn in_client<T: Send>(
    bench: &BenchCluster,
    path: Path,
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> BenchResult<T> {
    bench
        .client(path)
        .run(work)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.name()))
}

fn ztunnel_pids(bench: &BenchCluster) -> Vec<i32> {
    ["n1", "n2"]
        .iter()
        .map(|n| bench.mesh.ztunnel(n).pid())
        .collect()
}

fn mesh_pids(bench: &BenchCluster) -> Vec<i32> {
    bench
        .mesh
        .processes()
        .iter()
        .map(|(_, p)| p.pid())
        .collect()
}

fn cpu_ns(pids: &[i32]) -> BenchResult<Vec<u64>> {
    pids.iter()
        .map(|&pid| procstat::cpu_ns(pid).map_err(|e| format!("cpu of {pid}: {e}")))
        .collect()
}

fn context_switches(pids: &[i32]) -> BenchResult<Vec<u64>> {
    pids.iter()
        .map(|&pid| procstat::context_switches(pid).map_err(|e| format!("switches of {pid}: {e}")))
        .collect()
}

/// What `after - before` sums to, per process of `per` and per request of `requests`.
fn spent_per(before: &[u64], after: &[u64], per: usize, requests: f64) -> f64 {
    let spent: u64 = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    spent as f64 / per as f64 / requests
}

fn rss_mib(pids: &[i32]) -> BenchResult<f64> {
    let mut max = 0.0f64;
    for &pid in pids {
        let kib = procstat::rss_kib(pid).map_err(|e| format!("rss of {pid}: {e}"))?;
        max = max.max(kib as f64 / 1024.0);
    }
    Ok(max)
}

/// How long the mesh rests after start before its idle memory is read: one period of
/// ztunnel's heap trim (`--memory-trim-seconds`, 10 s) and a margin.
const IDLE_SETTLE: Duration = Duration::from_secs(12);

/// Runs the whole plan on a fresh benchmark cluster; with `flamegraph`, also profiles both
/// ztunnels at the first rate and writes the flame graph there ([`crate::profile`]).
pub fn run(plan: &Plan, flamegraph: Option<&std::path::Path>) -> BenchResult<Results> {
    raise_file_limit();
    progress("building the cluster and starting the mesh");
    let bench = BenchCluster::start().map_err(|e| e.to_string())?;
    let ztunnels = ztunnel_pids(&bench);
    // Idle means at rest: after ztunnel's heap trim has run once since start (it runs every
    // 10 s), not with the start-up's garbage (config parsing, first handshakes) still held.
    std::thread::sleep(IDLE_SETTLE);
    let idle_rss = ztunnels
        .iter()
        .map(|&pid| procstat::rss_kib(pid).map(|k| k as f64 / 1024.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;

    let mut throughput: BTreeMap<(Path, usize), Vec<f64>> = BTreeMap::new();
    let mut closed: BTreeMap<Path, LatencySamples> = BTreeMap::new();
    let mut open: BTreeMap<(Path, u64), LatencySamples> = BTreeMap::new();
    let mut connections: BTreeMap<Path, LatencySamples> = BTreeMap::new();
    let (mut cpu_request, mut cpu_all, mut cpu_connection) = (Vec::new(), Vec::new(), Vec::new());
    let (mut relay_request, mut relay_connection) = (Vec::new(), Vec::new());
    let (mut switches_ztunnel, mut switches_relay) = (Vec::new(), Vec::new());
    let (mut request_ticks, mut relay_request_ticks) = (Ticks::default(), Ticks::default());
    let (mut connection_ticks, mut relay_connection_ticks) = (Ticks::default(), Ticks::default());
    let (mut cpu_bulk, mut relay_bulk) = (Vec::new(), Vec::new());
    let (mut bulk_ticks, mut relay_bulk_ticks) = (Ticks::default(), Ticks::default());
    let relays = bench.relay_pids();
    let pod_relays = bench.pod_relay_pids();
    let mut pod_relay_request = Vec::new();

    let rounds = if plan.phases.contains(&Phase::Paths) {
        plan.repetitions + 1
    } else {
        0
    };
    for repetition in 0..rounds {
        let warmup = repetition == 0;
        let length = if warmup { plan.warmup } else { plan.run };
        progress(&if warmup {
            "warm-up".to_string()
        } else {
            format!("repetition {repetition}/{}", plan.repetitions)
        });
        for path in Path::ALL {
            for &streams in &plan.streams {
                let sink = bench.sink(path);
                let proxies = match path {
                    Path::MeshCrossNode if streams == 1 => ztunnels.clone(),
                    Path::TlsRelay if streams == 1 => relays.clone(),
                    _ => Vec::new(),
                };
                let (before, ticks_before) = (cpu_ns(&proxies)?, Ticks::of(&proxies)?);
                let run = in_client(&bench, path, || load::bulk(sink, streams, length))?;
                let (after, ticks_after) = (cpu_ns(&proxies)?, Ticks::of(&proxies)?);
                if !warmup {
                    throughput
                        .entry((path, streams))
                        .or_default()
                        .push(run.bits_per_second() / 1e9);
                    if !proxies.is_empty() {
                        let (samples, ticks) = if path == Path::TlsRelay {
                            (&mut relay_bulk, &mut relay_bulk_ticks)
                        } else {
                            (&mut cpu_bulk, &mut bulk_ticks)
                        };
                        let gib = run.bytes as f64 / f64::from(1u32 << 30);
                        samples.push(spent_per(&before, &after, 1, gib) / 1e6);
                        ticks.add_spent(ticks_before, ticks_after);
                    }
                }
            }
            let echo = bench.echo(path);
            let run = in_client(&bench, path, || load::closed_loop(echo, length))?;
            if !warmup {
                closed.entry(path).or_default().push(&run);
            }
            for (index, &rate) in plan.rates.iter().enumerate() {
                let measure_cpu = index == 0 && !warmup;
                let all = match path {
                    Path::MeshCrossNode if measure_cpu => mesh_pids(&bench),
                    Path::TlsRelay if measure_cpu => relays.clone(),
                    Path::TlsRelayInPod if measure_cpu => pod_relays.clone(),
                    _ => Vec::new(),
                };
                let proxies = match path {
                    Path::MeshCrossNode if measure_cpu => ztunnels.clone(),
                    Path::TlsRelay if measure_cpu => relays.clone(),
                    Path::TlsRelayInPod if measure_cpu => pod_relays.clone(),
                    _ => Vec::new(),
                };
                let (before, switches_before) = (cpu_ns(&all)?, context_switches(&proxies)?);
                let ticks_before = Ticks::of(&proxies)?;
                let run = in_client(&bench, path, || {
                    load::open_loop(echo, rate, plan.open_loop_connections, length)
                })?;
                let (after, switches_after) = (cpu_ns(&all)?, context_switches(&proxies)?);
                let ticks_after = Ticks::of(&proxies)?;
                let requests = run.histogram.len() as f64;
                let switches =
                    spent_per(&switches_before, &switches_after, proxies.len(), requests);
                if measure_cpu && path == Path::TlsRelay {
                    relay_request_ticks.add_spent(ticks_before, ticks_after);
                    relay_request.push(spent_per(&before, &after, relays.len(), requests) / 1000.0);
                    switches_relay.push(switches);
                }
                if measure_cpu && path == Path::TlsRelayInPod {
                    let per_relay = spent_per(&before, &after, pod_relays.len(), requests);
                    pod_relay_request.push(per_relay / 1000.0);
                }
                if measure_cpu && path == Path::MeshCrossNode {
                    request_ticks.add_spent(ticks_before, ticks_after);
                    let mut ztunnel_ns = 0.0;
                    let mut all_ns = 0.0;
                    for ((pid, b), a) in all.iter().zip(&before).zip(&after) {
                        let spent = a.saturating_sub(*b) as f64;
                        all_ns += spent;
                        if ztunnels.contains(pid) {
                            ztunnel_ns += spent;
                        }
                    }
                    let per_ztunnel = ztunnel_ns / ztunnels.len() as f64;
                    cpu_request.push(per_ztunnel / 1000.0 / requests);
                    cpu_all.push(all_ns / 1e9 / requests * 1000.0);
                    switches_ztunnel.push(switches);
                }
                if !warmup {
                    open.entry((path, rate as u64)).or_default().push(&run);
                }
            }
            let proxies = match path {
                Path::TlsRelay => relays.clone(),
                _ => ztunnels.clone(),
            };
            let (before, ticks_before) = (cpu_ns(&proxies)?, Ticks::of(&proxies)?);
            let run = in_client(&bench, path, || load::connections(echo, length))?;
            let (after, ticks_after) = (cpu_ns(&proxies)?, Ticks::of(&proxies)?);
            if !warmup {
                let spent: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
                let per_connection = spent as f64 / 1000.0 / run.histogram.len() as f64;
                match path {
                    Path::MeshCrossNode => {
                        cpu_connection.push(per_connection);
                        connection_ticks.add_spent(ticks_before, ticks_after);
                    }
                    Path::TlsRelay => {
                        relay_connection.push(per_connection);
                        relay_connection_ticks.add_spent(ticks_before, ticks_after);
                    }
                    _ => {}
                }
                connections.entry(path).or_default().push(&run);
            }
        }
    }

    let mut paths: BTreeMap<Path, PathResults> = BTreeMap::new();
    for ((path, streams), samples) in throughput {
        paths
            .entry(path)
            .or_default()
            .throughput_gbps
            .insert(streams, Stat::of(samples));
    }
    for (path, samples) in closed {
        paths.entry(path).or_default().closed_loop = samples.summarize();
    }
    for ((path, rate), samples) in open {
        paths
            .entry(path)
            .or_default()
            .open_loop
            .insert(rate, samples.summarize());
    }
    for (path, samples) in connections {
        paths.entry(path).or_default().connections = samples.summarize();
    }

    if let Some(svg) = flamegraph {
        profile_ztunnels(&bench, plan, svg)?;
    }
    let pinned_open_loop = if plan.phases.contains(&Phase::Pinned) {
        pinned(&bench, plan)?
    } else {
        BTreeMap::new()
    };
    let mut costs = if plan.phases.contains(&Phase::Memory) {
        memory(&bench, plan, &idle_rss)?
    } else {
        Costs {
            idle_rss_mib: idle_rss.iter().copied().fold(0.0, f64::max),
            ..Costs::default()
        }
    };
    costs.cpu_us_per_request_per_ztunnel = Stat::of(cpu_request);
    costs.cpu_seconds_per_1000_requests_all = Stat::of(cpu_all);
    costs.cpu_us_per_connection_both_ztunnels = Stat::of(cpu_connection);
    costs.cpu_us_per_request_per_relay = Stat::of(relay_request);
    costs.cpu_us_per_request_per_relay_in_pod = Stat::of(pod_relay_request);
    costs.cpu_us_per_connection_both_relays = Stat::of(relay_connection);
    costs.cpu_ms_per_gib_both_ztunnels = Stat::of(cpu_bulk);
    costs.cpu_ms_per_gib_both_relays = Stat::of(relay_bulk);
    costs.switches_per_request_per_ztunnel = Stat::of(switches_ztunnel);
    costs.switches_per_request_per_relay = Stat::of(switches_relay);
    costs.kernel_share = KernelShares {
        request_ztunnels: request_ticks.kernel_share(),
        request_relays: relay_request_ticks.kernel_share(),
        connection_ztunnels: connection_ticks.kernel_share(),
        connection_relays: relay_connection_ticks.kernel_share(),
        bulk_ztunnels: bulk_ticks.kernel_share(),
        bulk_relays: relay_bulk_ticks.kernel_share(),
    };

    Ok(Results {
        date: now_utc(),
        machine: machine(),
        plan: plan.clone(),
        paths,
        costs,
        pinned_open_loop,
    })
}

/// Both ztunnels under `perf` for [`crate::profile::PROFILED_RUN`], twice: while the
/// cross-node path carries the first open-loop rate (the graph goes to `svg`), and while it
/// opens new connections back to back (to `svg` with `-connections` added to its name).
fn profile_ztunnels(bench: &BenchCluster, plan: &Plan, svg: &std::path::Path) -> BenchResult<()> {
    let rate = plan.rates[0];
    let echo = bench.echo(Path::MeshCrossNode);
    let connections_svg = svg.with_file_name(format!(
        "{}-connections.svg",
        svg.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("flamegraph")
    ));
    let requests = format!(
        "1 KiB at {rate} req/s over {} connections",
        plan.open_loop_connections
    );
    profile_one(bench, svg, &requests, || {
        load::open_loop(
            echo,
            rate,
            plan.open_loop_connections,
            crate::profile::PROFILED_RUN,
        )
        .map(drop)
    })?;
    profile_one(
        bench,
        &connections_svg,
        "new connections back to back (connect, 1-byte ping-pong, close)",
        || load::connections(echo, crate::profile::PROFILED_RUN).map(drop),
    )
}

/// One profiled run of `load` in the cross-node client; its flame graph goes to `svg`.
fn profile_one(
    bench: &BenchCluster,
    svg: &std::path::Path,
    what: &str,
    load: impl FnOnce() -> std::io::Result<()> + Send,
) -> BenchResult<()> {
    progress(&format!("profiling both ztunnels: {what}"));
    let data = std::env::temp_dir().join(format!("mesh-bench-{}.perf.data", std::process::id()));
    let recorded = crate::profile::record(&ztunnel_pids(bench), &data, || {
        in_client(bench, Path::MeshCrossNode, load)
    });
    let graphed = recorded.and_then(|_| {
        let title = format!("both ztunnels, cross-node, {what} ({})", now_utc());
        crate::profile::flamegraph(&data, svg, &title)
    });
    let _ = std::fs::remove_file(&data);
    graphed
}

/// The first open-loop rate again, direct and cross-node, with the client, the server
/// apps and both ztunnels on CPU 0; everything is unpinned afterwards.
fn pinned(bench: &BenchCluster, plan: &Plan) -> BenchResult<BTreeMap<Path, Latencies>> {
    progress("pinned to one CPU");
    let pids: Vec<i32> = ztunnel_pids(bench)
        .into_iter()
        .chain(bench.server_pids())
        .collect();
    let pin = |cpus: &[usize]| -> BenchResult<()> {
        for &pid in &pids {
            procstat::set_affinity(pid, cpus).map_err(|e| format!("pinning {pid}: {e}"))?;
        }
        Ok(())
    };
    pin(&[0])?;
    let rate = plan.rates[0];
    let mut results = BTreeMap::new();
    let outcome = (|| -> BenchResult<()> {
        for path in [Path::Direct, Path::MeshCrossNode] {
            let mut samples = LatencySamples::default();
            for _ in 0..plan.repetitions {
                let echo = bench.echo(path);
                let run = in_client(bench, path, || {
                    // The load threads inherit this thread's affinity.
                    procstat::set_thread_affinity(&[0])?;
                    load::open_loop(echo, rate, plan.open_loop_connections, plan.run)
                })?;
                samples.push(&run);
            }
            results.insert(path, samples.summarize());
        }
        Ok(())
    })();
    pin(&procstat::all_cpus())?;
    outcome.map(|()| results)
}

/// Memory: idle connections, the peak, and recovery after a burst.
fn memory(bench: &BenchCluster, plan: &Plan, idle_rss: &[f64]) -> BenchResult<Costs> {
    let ztunnels = ztunnel_pids(bench);
    let idle = idle_rss.iter().copied().fold(0.0, f64::max);
    progress(&format!("{} idle connections", plan.idle_connections));
    let path = Path::MeshCrossNode;
    let echo = bench.echo(path);
    let before: Vec<u64> = ztunnels
        .iter()
        .map(|&p| procstat::rss_kib(p))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let count = plan.idle_connections;
    let per_connection = bench
        .client(path)
        .run(|| -> std::io::Result<f64> {
            let held = load::idle_connections(echo, count)?;
            std::thread::sleep(Duration::from_millis(500));
            let mut worst = 0.0f64;
            for (&pid, &was) in ztunnels.iter().zip(&before) {
                let now = procstat::rss_kib(pid)?;
                worst = worst.max(now.saturating_sub(was) as f64 / count as f64);
            }
            drop(held);
            Ok(worst)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

    let (streams, window) = plan.burst;
    progress(&format!("burst of {streams} high-volume connections"));
    let sink = bench.sink(path);
    in_client(bench, path, || {
        load::bulk(sink, streams, plan.run.max(Duration::from_secs(1)))
    })?;
    let burst_rss = rss_mib(&ztunnels)?;
    let start = Instant::now();
    let mut recovery = None;
    while start.elapsed() < window {
        let settled = ztunnels.iter().zip(idle_rss).all(|(&pid, &idle)| {
            procstat::rss_kib(pid).is_ok_and(|kib| kib as f64 / 1024.0 <= idle * 1.1)
        });
        if settled {
            recovery = Some(start.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut end = Vec::new();
    for (&pid, &idle) in ztunnels.iter().zip(idle_rss) {
        let kib = procstat::rss_kib(pid).map_err(|e| e.to_string())?;
        end.push((kib as f64 / 1024.0, idle * 1.1));
    }
    let mut peak = 0.0f64;
    for &pid in &ztunnels {
        let kib = procstat::peak_rss_kib(pid).map_err(|e| e.to_string())?;
        peak = peak.max(kib as f64 / 1024.0);
    }
    Ok(Costs {
        idle_rss_mib: idle,
        kib_per_idle_connection: per_connection,
        idle_connections: count,
        peak_rss_mib: peak,
        burst_recovery_seconds: recovery,
        burst_rss_mib: burst_rss,
        burst_end_rss_mib: end,
        ..Costs::default()
    })
}

/// Holding thousands of connections needs more descriptors than the default soft limit;
/// the mesh's processes inherit the raised limit.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = 65_536;
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// CPU model, CPU count and kernel: what a reader needs to weigh the figures.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|m| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    format!("{} x {model}, Linux {kernel}", procstat::all_cpus().len())
}
