//! HBONE micro-benchmarks on loopback: one tunnel vs plain TCP vs plain TLS, for 1 KiB
//! request/response latency, bulk throughput, new-tunnel cost, 100 concurrent tunnels on
//! one pooled connection, and the HTTP/2 flow-control windows.
//!
//! `cargo bench -p mesh-benches --bench hbone` (add `-- --quick` for a fast pass). After
//! criterion's own output it prints medians and ratios to plain TCP from this same run,
//! and writes them to `bench-results/hbone.{md,json}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mesh_benches::loopback::{
    App, BULK_BYTES, Contender, Loopback, MESSAGE_BYTES, Stream, bulk, ping_once, round_trip,
};
use mesh_benches::report::Report;
use mesh_core::hbone::FlowControl;
use tokio::runtime::Runtime;

const CONCURRENT: usize = 100;

async fn open(fixture: &Loopback, contender: Contender, app: App) -> Stream {
    fixture
        .open(contender, app)
        .await
        .unwrap_or_else(|err| panic!("opening a {contender:?} stream: {err}"))
}

fn request_response(c: &mut Criterion, rt: &Runtime, fixture: &Loopback, report: &Report) {
    let mut group = c.benchmark_group("rr_1KiB");
    for contender in Contender::ALL {
        let name = contender.name();
        let mut stream = rt.block_on(open(fixture, contender, App::Echo));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let mut buf = [1u8; MESSAGE_BYTES];
                    let start = Instant::now();
                    for _ in 0..iters {
                        round_trip(&mut stream, &mut buf).await.expect("round trip");
                    }
                    start.elapsed()
                });
                report.record("rr_1KiB", name, iters, elapsed);
                elapsed
            })
        });
    }
    group.finish();
}

fn bulk_throughput(
    c: &mut Criterion,
    rt: &Runtime,
    fixtures: &[(&str, Contender, Loopback)],
    report: &Report,
    group_name: &str,
) {
    let mut group = c.benchmark_group(group_name);
    group
        .throughput(Throughput::Bytes(BULK_BYTES as u64))
        .sample_size(10);
    let chunk = vec![0x5au8; 64 << 10];
    for (name, contender, fixture) in fixtures {
        let mut stream = rt.block_on(open(fixture, *contender, App::Sink));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        bulk(&mut stream, &chunk).await.expect("bulk transfer");
                    }
                    start.elapsed()
                });
                report.record(group_name, name, iters, elapsed);
                elapsed
            })
        });
    }
    group.finish();
}

fn new_connection(c: &mut Criterion, rt: &Runtime, fixture: &Loopback, report: &Report) {
    let mut group = c.benchmark_group("new_stream_ping");
    // Keep one tunnel open so every measured tunnel rides the pooled connection.
    let _warm = rt.block_on(open(fixture, Contender::Hbone, App::Echo));
    for contender in Contender::ALL {
        let name = contender.name();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        ping_once(open(fixture, contender, App::Echo).await)
                            .await
                            .expect("ping");
                    }
                    start.elapsed()
                });
                report.record("new_stream_ping", name, iters, elapsed);
                elapsed
            })
        });
    }
    group.finish();
}

fn concurrent(c: &mut Criterion, rt: &Runtime, fixture: &Loopback, report: &Report) {
    let group_name = "rr_1KiB_x100_concurrent";
    let mut group = c.benchmark_group(group_name);
    group.sample_size(30);
    for contender in Contender::ALL {
        let name = contender.name();
        let mut streams: Vec<Stream> = rt.block_on(async {
            let mut streams = Vec::new();
            for _ in 0..CONCURRENT {
                streams.push(open(fixture, contender, App::Echo).await);
            }
            streams
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (elapsed, back) = rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = streams
                        .drain(..)
                        .map(|mut stream| {
                            tokio::spawn(async move {
                                let mut buf = [2u8; MESSAGE_BYTES];
                                for _ in 0..iters {
                                    round_trip(&mut stream, &mut buf).await.expect("round trip");
                                }
                                stream
                            })
                        })
                        .collect();
                    let mut back = Vec::new();
                    for task in tasks {
                        back.push(task.await.expect("a round-trip task"));
                    }
                    (start.elapsed(), back)
                });
                streams = back;
                report.record(group_name, name, iters, elapsed);
                elapsed
            })
        });
    }
    group.finish();
}

fn main() {
    mesh_core::tls::install_process_provider();
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime"),
    );
    let report = Report::default();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let fixture = rt
        .block_on(Loopback::start(FlowControl::default()))
        .expect("starting the loopback contenders");
    request_response(&mut c, &rt, &fixture, &report);
    new_connection(&mut c, &rt, &fixture, &report);
    concurrent(&mut c, &rt, &fixture, &report);

    // Bulk throughput, with the HTTP/2 windows as the variable for HBONE.
    let windows = [
        (
            "hbone_64KiB_windows",
            FlowControl {
                stream_window: 65_535,
                connection_window: 65_535,
                max_frame_size: 16_384,
            },
        ),
        (
            "hbone_4MiB_16MiB",
            FlowControl {
                stream_window: 4 << 20,
                connection_window: 16 << 20,
                max_frame_size: 1 << 20,
            },
        ),
        ("hbone", FlowControl::default()),
    ];
    let tls_fixture = rt
        .block_on(Loopback::start(FlowControl::default()))
        .expect("TLS contender");
    let mut fixtures = vec![
        ("tcp", Contender::Tcp, fixture),
        ("tls", Contender::Tls, tls_fixture),
    ];
    for (name, flow) in windows {
        fixtures.push((
            name,
            Contender::Hbone,
            rt.block_on(Loopback::start(flow))
                .expect("an HBONE contender"),
        ));
    }
    bulk_throughput(&mut c, &rt, &fixtures, &report, "bulk_16MiB");

    c.final_summary();
    let table = report.markdown("tcp");
    println!(
        "\nMedians and ratios to plain TCP, this run (default windows: {:?}):\n\n{table}",
        FlowControl::default()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("hbone.md"), &table);
        let _ = std::fs::write(dir.join("hbone.json"), report.json());
    }
}
