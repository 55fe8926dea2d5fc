//! The container images (scripts/build-images): each archive is an OCI image named as the
//! chart names it, and its binary runs from the image's own root filesystem (chroot, as
//! the image's user, with nothing from the machine), so the image is self-contained.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_tests::apps::workspace_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

/// Extracts an archive's image into `dir`: returns its config and where its root is.
fn unpack(archive: &Path, dir: &Path) -> (serde_json::Value, String, PathBuf) {
    let layout = dir.join("layout");
    let root = dir.join("root");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let tar = |args: &[&str]| {
        let status = Command::new("tar").args(args).status().unwrap();
        assert!(status.success(), "tar {args:?}");
    };
    tar(&[
        "-xf",
        archive.to_str().unwrap(),
        "-C",
        layout.to_str().unwrap(),
    ]);
    assert!(layout.join("oci-layout").exists(), "an OCI image layout");
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    let name = entry["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = json(&blob(&layout, entry["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(&layout, layer["digest"].as_str().unwrap());
        tar(&["-xzf", path.to_str().unwrap(), "-C", root.to_str().unwrap()]);
    }
    (config, name, root)
}

/// Runs `argv` inside `root` as `user` (uid:gid) with only the image's environment.
fn run_in_image(root: &Path, user: &str, env: &[String], argv: &[&str]) -> String {
    let output = Command::new("chroot")
        .arg(format!("--userspec={user}"))
        .arg(root)
        .args(argv)
        .env_clear()
        .envs(env.iter().filter_map(|pair| pair.split_once('=')))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{argv:?} in the image: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn each_image_runs_its_binary_from_its_own_root_filesystem() {
    let bin_dir = workspace_binary("ztunnel").unwrap();
    let bin_dir = bin_dir.parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let build = Command::new("bash")
        .arg(repo().join("scripts/build-images"))
        .args(["--bin-dir", bin_dir.to_str().unwrap()])
        .args(["--out", out.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "scripts/build-images: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    // The chart's default images are these names.
    let manifests = std::fs::read_to_string(repo().join("deploy/manifests/mesh.yaml")).unwrap();

    for (image, user, binary) in [
        ("ztunnel", "0:0", "ztunnel"),
        ("istio-cni", "0:0", "istio-cni"),
        ("waypoint", "65532:65532", "waypoint"),
    ] {
        let archive = out.path().join(format!("{image}-{version}.tar"));
        let dir = out.path().join(image);
        let (config, name, root) = unpack(&archive, &dir);
        assert_eq!(name, format!("ghcr.io/ambient-mesh/{image}:{version}"));
        if image != "waypoint" {
            assert!(
                manifests.contains(&format!("image: {name}")),
                "{name} in the chart"
            );
        }
        let config = &config["config"];
        assert_eq!(config["User"], user, "{image} runs as {user}");
        let env: Vec<String> = config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let entrypoint: Vec<&str> = config["Entrypoint"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut argv = entrypoint.clone();
        argv.push("--version");
        let printed = run_in_image(&root, user, &env, &argv);
        assert_eq!(printed.trim(), format!("{binary} {version}"), "{image}");
    }

    // istio-cni's agent writes rules with iptables-nft and iproute2: both run from its
    // image, and the plugin it installs on nodes is in it.
    let root = out.path().join("istio-cni/root");
    let env = ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    let iptables = run_in_image(&root, "0:0", &env, &["iptables-nft-save", "--version"]);
    assert!(iptables.contains("nf_tables"), "{iptables}");
    let ip = run_in_image(&root, "0:0", &env, &["ip", "-V"]);
    assert!(ip.contains("iproute2"), "{ip}");
    assert!(root.join("usr/local/bin/istio-cni").exists());
}
