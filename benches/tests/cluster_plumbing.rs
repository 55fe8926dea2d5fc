//! The cluster benchmark's plumbing at tiny sizes, so `scripts/bench` cannot rot between
//! runs: a real cluster, the real mesh, every path and figure, and every output file.
//! Nothing here is a measurement; no figure is compared with a bound.

use mesh_benches::cluster::Path;
use mesh_benches::suite::{Mode, Plan};

#[test]
fn a_tiny_run_measures_every_path_and_writes_every_output() {
    let plan = Plan::for_mode(Mode::Tiny);
    let results = mesh_benches::suite::run(&plan, None).expect("tiny run");
    for path in Path::ALL {
        let figures = &results.paths[&path];
        for streams in &plan.streams {
            assert!(
                figures.throughput_gbps[streams].median > 0.0,
                "{path:?} {streams}"
            );
        }
        assert!(figures.closed_loop.rate.median > 0.0, "{path:?}");
        assert!(figures.closed_loop.p50.median <= figures.closed_loop.p999.median);
        let rate = plan.rates[0];
        let open = &figures.open_loop[&(rate as u64)];
        assert!(
            open.rate.median > rate * 0.5,
            "{path:?}: offered {rate}/s, achieved {}",
            open.rate.median
        );
        assert!(figures.connections.rate.median > 0.0, "{path:?}");
    }
    let costs = &results.costs;
    assert!(costs.cpu_us_per_request_per_ztunnel.median > 0.0);
    assert!(costs.cpu_us_per_connection_both_ztunnels.median > 0.0);
    assert!(costs.cpu_us_per_request_per_relay.median > 0.0);
    // The in-pod path's requests really crossed the two relays behind the capture rules
    // (without the rules they would go straight to the server and the idle relays would
    // spend nothing per request; relaying one costs them tens of µs).
    assert!(
        costs.cpu_us_per_request_per_relay_in_pod.median > 1.0,
        "{:?}",
        costs.cpu_us_per_request_per_relay_in_pod
    );
    assert!(costs.cpu_us_per_connection_both_relays.median > 0.0);
    assert!(costs.cpu_ms_per_gib_both_ztunnels.median > 0.0);
    assert!(costs.cpu_ms_per_gib_both_relays.median > 0.0);
    assert!(costs.idle_rss_mib > 1.0 && costs.peak_rss_mib >= costs.idle_rss_mib);
    assert_eq!(costs.idle_connections, plan.idle_connections);
    assert_eq!(results.pinned_open_loop.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let (written, markdown) = mesh_benches::publish::write(&results, dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
    assert_eq!(
        json["results"]["paths"].as_object().unwrap().len(),
        Path::ALL.len()
    );
    assert!(json["targets"].as_array().unwrap().len() >= 6);
    assert_eq!(
        std::fs::read_to_string(&written.markdown).unwrap(),
        markdown
    );
    for path in Path::ALL {
        assert!(markdown.contains(path.name()), "{}", path.name());
    }
    assert!(markdown.contains("## Targets") && markdown.contains(&results.machine));
    assert!(
        markdown.contains("x floor"),
        "mesh figures beside the tls-relay floor"
    );
    assert!(markdown.contains("CPU per GiB carried"), "{markdown}");
    assert!(markdown.contains("x the in-pod relay"), "{markdown}");
    for chart in [&written.latency_chart, &written.throughput_chart] {
        let svg = std::fs::read_to_string(chart).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.matches("<rect x=").count() >= 8,
            "{svg}"
        );
    }
}
