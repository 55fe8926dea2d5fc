//! Load generators for the cluster benchmarks: plain blocking sockets on threads, run inside
//! a client pod's network namespace (threads inherit the namespace of the thread that
//! spawns them). Latencies go into HDR histograms in nanoseconds.
//!
//! Open-loop runs are corrected for coordinated omission: each request has an intended
//! send time on a fixed schedule, and its latency counts from that time, so a stall shows
//! up in every request it delayed instead of hiding as one slow sample.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Bytes per request and per response in the latency runs.
pub const MESSAGE_BYTES: usize = 1024;

/// A latency histogram (nanoseconds, 3 significant digits, up to 60 s).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What a request/response or connection run measured.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Latencies in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LatencyRun {
    /// Completed operations per second.
    pub fn rate(&self) -> f64 {
        self.histogram.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }
}

/// What a bulk run measured.
#[derive(Debug, Clone, Copy)]
pub struct BulkRun {
    /// Bytes the servers confirmed receiving.
    pub bytes: u64,
    /// From the first write to the last confirmation.
    pub elapsed: Duration,
}

impl BulkRun {
    /// Throughput in bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64()
    }
}

fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Makes the calling thread's sleeps precise to the kernel's resolution, not 50 µs.
fn precise_sleeps() {
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// `streams` connections to a [`tcp_sink`](mesh_tests::apps::tcp_sink) each write for
/// `duration`, half-close, and wait for the sink's byte count.
pub fn bulk(target: SocketAddr, streams: usize, duration: Duration) -> io::Result<BulkRun> {
    let chunk = vec![0x5au8; 128 << 10];
    let connections = (0..streams)
        .map(|_| connect(target))
        .collect::<io::Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<io::Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = connections
            .into_iter()
            .map(|mut stream| {
                let chunk = &chunk;
                scope.spawn(move || -> io::Result<u64> {
                    while Instant::now() < deadline {
                        stream.write_all(chunk)?;
                    }
                    stream.shutdown(Shutdown::Write)?;
                    let mut count = [0u8; 8];
                    stream.read_exact(&mut count)?;
                    Ok(u64::from_be_bytes(count))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("bulk worker panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut bytes = 0;
    for result in results {
        bytes += result?;
    }
    Ok(BulkRun { bytes, elapsed })
}

fn round_trip(stream: &mut TcpStream, buffer: &mut [u8; MESSAGE_BYTES]) -> io::Result<()> {
    stream.write_all(buffer)?;
    stream.read_exact(buffer)
}

/// One connection to a [`tcp_echo`](mesh_tests::apps::tcp_echo) server sends 1 KiB
/// requests back to back for `duration` (closed loop: the next waits for the last).
pub fn closed_loop(target: SocketAddr, duration: Duration) -> io::Result<LatencyRun> {
    let mut stream = connect(target)?;
    let mut buffer = [0x42u8; MESSAGE_BYTES];
    let mut histogram = histogram();
    let start = Instant::now();
    while start.elapsed() < duration {
        let sent = Instant::now();
        round_trip(&mut stream, &mut buffer)?;
        record(&mut histogram, sent.elapsed());
    }
    Ok(LatencyRun {
        histogram,
        elapsed: start.elapsed(),
    })
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.max(1));
}

/// `connections` connections to an echo server offer `rate` requests per second in all,
/// on a fixed schedule, for `duration` (open loop, corrected for coordinated omission).
pub fn open_loop(
    target: SocketAddr,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> io::Result<LatencyRun> {
    let streams = (0..connections)
        .map(|_| connect(target))
        .collect::<io::Result<Vec<_>>>()?;
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let results: Vec<io::Result<Histogram<u64>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, mut stream)| {
                scope.spawn(move || -> io::Result<Histogram<u64>> {
                    precise_sleeps();
                    let mut histogram = histogram();
                    let mut buffer = [0x42u8; MESSAGE_BYTES];
                    // Connections take turns: connection i sends at start + (i + k·n)/rate.
                    let offset = Duration::from_secs_f64(index as f64 / rate);
                    let mut intended = start + offset;
                    while intended < start + duration {
                        let now = Instant::now();
                        if intended > now {
                            std::thread::sleep(intended - now);
                        }
                        round_trip(&mut stream, &mut buffer)?;
                        record(&mut histogram, intended.elapsed());
                        intended += interval;
                    }
                    Ok(histogram)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("load worker panicked")))
            })
            .collect()
    });
    let mut merged = histogram();
    for result in results {
        merged
            .add(result?)
            .map_err(|err| io::Error::other(err.to_string()))?;
    }
    Ok(LatencyRun {
        histogram: merged,
        elapsed: Instant::now().saturating_duration_since(start),
    })
}

/// New connections back to back for `duration`: connect, 1-byte ping-pong, close. The
/// latency is the whole exchange.
pub fn connections(target: SocketAddr, duration: Duration) -> io::Result<LatencyRun> {
    let mut histogram = histogram();
    let start = Instant::now();
    while start.elapsed() < duration {
        let began = Instant::now();
        let mut stream = connect(target)?;
        let mut byte = [7u8; 1];
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        drop(stream);
        record(&mut histogram, began.elapsed());
    }
    Ok(LatencyRun {
        histogram,
        elapsed: start.elapsed(),
    })
}

/// `count` connections to an echo server, each proven through with a 1-byte ping, held
/// open idle until dropped.
pub fn idle_connections(target: SocketAddr, count: usize) -> io::Result<Vec<TcpStream>> {
    (0..count)
        .map(|_| {
            let mut stream = connect(target)?;
            let mut byte = [1u8; 1];
            stream.write_all(&byte)?;
            stream.read_exact(&mut byte)?;
            Ok(stream)
        })
        .collect()
}
