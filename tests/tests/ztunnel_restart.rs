//! Restarting ztunnel under load with the real binaries: `kill -TERM` and a new ztunnel
//! started beside it lose no new connection and reset no live one; after a crash
//! (SIGKILL) new connections work again within a second of the new ztunnel starting.
//!
//! The load runs in `client` (node n1) towards `server` (node n2) through both nodes'
//! ztunnels: 1,000 new connections per second, each one round trip, plus long-lived
//! connections exchanging a message every 20 ms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_tests::apps::tcp_echo;
use mesh_tests::{Cluster, Process, eventually, mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const LONG_LIVED: usize = 10;

/// What the load saw.
#[derive(Debug, Default)]
struct Tally {
    new_ok: AtomicU64,
    new_failed: AtomicU64,
    rounds: AtomicU64,
    live_failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// Runs the load from `client` until `stop` is set.
async fn load(server: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut live = Vec::new();
    for n in 0..LONG_LIVED {
        let (tally, stop) = (tally.clone(), stop.clone());
        live.push(tokio::spawn(async move {
            let mut stream = match tokio::net::TcpStream::connect(server).await {
                Ok(stream) => stream,
                Err(err) => return tally.fail(&tally.live_failed, format!("live {n}: {err}")),
            };
            let message = format!("long-lived {n:03}\n");
            let mut back = vec![0u8; message.len()];
            while !stop.load(Ordering::Relaxed) {
                let round = async {
                    stream.write_all(message.as_bytes()).await?;
                    stream.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(3), round).await {
                    Ok(Ok(())) if back == message.as_bytes() => {
                        tally.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        return tally.fail(&tally.live_failed, format!("live {n}: {other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        // Up to one new connection per millisecond, but never more than NEW_IN_FLIGHT at once:
        // past what the (debug-built) ztunnels accept per second on a slow machine, the
        // pods' accept queues overflow and the kernel resets connections, restart or not.
        if requests.len() >= NEW_IN_FLIGHT {
            while requests.try_join_next().is_some() {}
            continue;
        }
        let tally = tally.clone();
        requests.spawn(async move {
            let trip = tcp_echo::round_trip(server, b"new connection");
            match tokio::time::timeout(Duration::from_secs(3), trip).await {
                Ok(Ok(back)) if back == b"new connection" => {
                    tally.new_ok.fetch_add(1, Ordering::Relaxed);
                }
                other => tally.fail(&tally.new_failed, format!("new: {other:?}")),
            }
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    for task in live {
        let _ = task.await;
    }
}

/// New connections the load keeps open at once, at most.
const NEW_IN_FLIGHT: usize = 32;

fn cluster() -> Cluster {
    let cluster = mesh_tests::topology::shop().build().unwrap();
    cluster
        .pod("server")
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap();
    cluster
}

fn server(cluster: &Cluster) -> SocketAddr {
    SocketAddr::from((cluster.pod("server").ip(), 7000))
}

/// Waits until `client` reaches `server` through the mesh (the ztunnels of both nodes
/// serve the pods).
fn wait_for_mesh(cluster: &Cluster, ztunnel: &Process) {
    let server = server(cluster);
    eventually("the client to reach the server over HBONE", WAIT, || {
        cluster
            .pod("client")
            .block_on(|| tcp_echo::round_trip(server, b"hello"))
            .unwrap()
            .map_err(|e| e.to_string())?;
        if ztunnel.stdout().contains("mode=\"hbone\"") || ztunnel.stdout().contains("mode=hbone") {
            Ok(())
        } else {
            Err("not through ztunnel yet".to_string())
        }
    })
    .unwrap();
}

/// Stops the load when dropped, so a failing assertion does not leave the scoped load
/// thread running forever.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn terminate(process: &Process) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(process.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn a_restart_under_load_loses_no_connection() {
    let cluster = cluster();
    let mesh = mesh::Mesh::start(&cluster).unwrap();
    wait_for_mesh(&cluster, mesh.ztunnel("n1"));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = server(&cluster);
    std::thread::scope(|scope| {
        let (load_tally, load_stop) = (tally.clone(), stop.clone());
        let client = cluster.pod("client");
        let loader = scope.spawn(move || client.block_on(|| load(server, load_tally, load_stop)));
        let _stop = StopOnDrop(stop.clone());
        std::thread::sleep(Duration::from_secs(1));

        // Each node's ztunnel in turn: the client's (outbound), then the server's
        // (inbound HBONE). SIGTERM first, then the successor starts, as a rolling update
        // without surge would do it.
        let mut successors = Vec::new();
        for node in ["n1", "n2"] {
            let old = mesh.ztunnel(node).clone();
            let rounds_before = tally.rounds.load(Ordering::Relaxed);
            terminate(&old);
            std::thread::sleep(Duration::from_millis(200));
            let new = mesh::start_ztunnel(&cluster, node).unwrap();
            new.wait_for_stdout("snapshot reconciled", WAIT).unwrap();
            old.wait_for_stdout("handed the pods to a successor", WAIT)
                .unwrap();
            std::thread::sleep(Duration::from_secs(1));
            assert!(
                tally.rounds.load(Ordering::Relaxed) > rounds_before + LONG_LIVED as u64,
                "long-lived connections kept flowing across {node}'s restart"
            );
            assert!(
                old.exit_status().unwrap().is_none(),
                "the old ztunnel of {node} still serves its live connections"
            );
            successors.push((old, new));
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        loader.join().unwrap().unwrap();

        let failures = tally.failures.lock().unwrap().clone();
        let ok = tally.new_ok.load(Ordering::Relaxed);
        assert_eq!(
            (
                tally.new_failed.load(Ordering::Relaxed),
                tally.live_failed.load(Ordering::Relaxed)
            ),
            (0, 0),
            "{ok} new connections succeeded; failures: {failures:#?}\n{}",
            cluster.logs()
        );
        assert!(ok > 2_000, "only {ok} new connections were made");
        eprintln!(
            "restart under load: {ok} new connections, {} long-lived rounds, no failure",
            tally.rounds.load(Ordering::Relaxed)
        );
        // New connections went through the successors.
        for (old, new) in &successors {
            assert!(
                new.stdout().contains("connection complete"),
                "{}",
                new.logs()
            );
            // With their live connections closed, the old ones exit by themselves.
            eventually("the old ztunnel to exit", WAIT, || {
                match old.exit_status().unwrap() {
                    Some(status) if status.success() => Ok(()),
                    Some(status) => Err(format!("exited with {status}")),
                    None => Err("still running".to_string()),
                }
            })
            .unwrap();
        }
    });
}

#[test]
fn after_a_crash_new_connections_recover_within_a_second() {
    let cluster = cluster();
    let mesh = mesh::Mesh::start(&cluster).unwrap();
    wait_for_mesh(&cluster, mesh.ztunnel("n1"));
    let server = server(&cluster);
    let old = mesh.ztunnel("n1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = Instant::now();
    let _new = mesh::start_ztunnel(&cluster, "n1").unwrap();
    let recovered = cluster
        .pod("client")
        .block_on(|| async move {
            loop {
                let trip = tcp_echo::round_trip(server, b"back?");
                if let Ok(Ok(back)) = tokio::time::timeout(Duration::from_millis(200), trip).await
                    && back == b"back?"
                {
                    return started.elapsed();
                }
                if started.elapsed() > WAIT {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .unwrap();
    eprintln!("after SIGKILL: new connections back {recovered:?} after the new ztunnel started");
    assert!(
        recovered < Duration::from_secs(1),
        "new connections came back after {recovered:?}\n{}",
        cluster.logs()
    );
}
