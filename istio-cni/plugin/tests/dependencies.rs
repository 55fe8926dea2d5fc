//! The binary the container runtime runs for every pod links nothing of the agent's: no
//! Kubernetes client, YAML parser, file watcher, CA or mesh library (issue 11's crate split).

use std::process::Command;

#[test]
fn the_plugin_depends_on_serde_and_thiserror_only() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-p", "istio-cni-plugin"])
        .args(["-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"serde_json"), "{tree}");
    for forbidden in [
        "kube",
        "k8s-openapi",
        "serde-saphyr",
        "notify",
        "rcgen",
        "mesh-core",
        "mesh-model",
        "tokio",
    ] {
        assert!(!crates.contains(&forbidden), "{forbidden} in:\n{tree}");
    }
}
