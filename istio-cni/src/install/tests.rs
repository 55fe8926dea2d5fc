use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use super::*;

struct Node {
    _dir: tempfile::TempDir,
    install: CniInstall,
}

/// A node with a plugin binary to install and an empty CNI configuration directory.
fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("build/istio-cni");
    fs::create_dir_all(plugin.parent().unwrap()).unwrap();
    fs::write(&plugin, b"\x7fELF plugin v1").unwrap();
    let conf_dir = dir.path().join("etc/cni/net.d");
    fs::create_dir_all(&conf_dir).unwrap();
    let install = CniInstall {
        plugin_binary: plugin,
        bin_dir: dir.path().join("opt/cni/bin"),
        conf_dir,
        agent_socket: "/var/run/istio-cni/pluginevent.sock".into(),
    };
    Node { _dir: dir, install }
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn bridge() -> Value {
    json!({ "type": "bridge", "bridge": "cni0", "ipam": { "type": "host-local", "subnet": "10.244.1.0/24" } })
}

#[test]
fn chains_after_the_primary_plugins_once_and_installs_the_binary() {
    let node = node();
    let conflist = node.install.conf_dir.join("10-primary.conflist");
    let original = json!({ "cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [bridge(), { "type": "portmap", "capabilities": { "portMappings": true } }] });
    fs::write(&conflist, original.to_string()).unwrap();
    // A later file is not the primary and stays untouched.
    fs::write(node.install.conf_dir.join("99-other.conflist"), "{}").unwrap();

    let done = node.install.ensure().unwrap();
    assert_eq!(
        done,
        Installed {
            config: conflist.clone(),
            changed: true
        }
    );
    let config = read(&conflist);
    let plugins = config["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    assert_eq!(plugins[..2], original["plugins"].as_array().unwrap()[..]);
    assert_eq!(
        plugins[2],
        json!({ "type": "istio-cni", "agent_socket": "/var/run/istio-cni/pluginevent.sock" })
    );
    assert_eq!(config["name"], "k8s-pod-network");
    assert_eq!(
        fs::read_to_string(node.install.conf_dir.join("99-other.conflist")).unwrap(),
        "{}"
    );

    let binary = node.install.bin_dir.join("istio-cni");
    assert_eq!(fs::read(&binary).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(
        fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );

    let before = fs::read(&conflist).unwrap();
    assert!(
        !node.install.ensure().unwrap().changed,
        "a second run changes nothing"
    );
    assert_eq!(fs::read(&conflist).unwrap(), before);
    let leftovers: Vec<_> = fs::read_dir(&node.install.conf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
}

#[test]
fn comes_back_when_the_primary_cni_rewrites_its_file_and_follows_a_new_binary() {
    let node = node();
    let conflist = node.install.conf_dir.join("05-cilium.conflist");
    let original =
        json!({ "cniVersion": "0.3.1", "name": "cilium", "plugins": [{ "type": "cilium-cni" }] });
    fs::write(&conflist, original.to_string()).unwrap();
    node.install.ensure().unwrap();

    fs::write(&conflist, original.to_string()).unwrap();
    assert!(node.install.ensure().unwrap().changed);
    assert_eq!(read(&conflist)["plugins"][1]["type"], "istio-cni");

    // A stale entry (another socket, or in the middle of the chain) is replaced, not doubled.
    let stale = json!({ "cniVersion": "0.3.1", "name": "cilium", "plugins": [{ "type": "istio-cni", "agent_socket": "/old" }, { "type": "cilium-cni" }] });
    fs::write(&conflist, stale.to_string()).unwrap();
    assert!(node.install.ensure().unwrap().changed);
    let plugins = read(&conflist)["plugins"].as_array().unwrap().clone();
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[0]["type"], "cilium-cni");
    assert_eq!(
        plugins[1]["agent_socket"],
        "/var/run/istio-cni/pluginevent.sock"
    );

    fs::write(&node.install.plugin_binary, b"\x7fELF plugin v2").unwrap();
    assert!(
        node.install.ensure().unwrap().changed,
        "an upgraded agent brings its plugin"
    );
    assert_eq!(
        fs::read(node.install.bin_dir.join("istio-cni")).unwrap(),
        b"\x7fELF plugin v2"
    );
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let node = node();
    let conf = node.install.conf_dir.join("10-flannel.conf");
    let mut single = bridge();
    single["cniVersion"] = "1.0.0".into();
    single["name"] = "cbr0".into();
    fs::write(&conf, single.to_string()).unwrap();

    let done = node.install.ensure().unwrap();
    let conflist = node.install.conf_dir.join("10-flannel.conflist");
    assert_eq!(done.config, conflist);
    assert!(!conf.exists(), "the .conf is replaced by the .conflist");
    let config = read(&conflist);
    assert_eq!(config["cniVersion"], "1.0.0");
    assert_eq!(config["name"], "cbr0");
    assert_eq!(config["plugins"][0], single);
    assert_eq!(config["plugins"][1]["type"], "istio-cni");
}

#[test]
fn names_what_is_missing_or_wrong() {
    let node = node();
    let err = node.install.ensure().unwrap_err();
    assert!(matches!(err, InstallError::NoConfig(_)), "{err}");
    assert!(err.to_string().contains("etc/cni/net.d"), "{err}");

    let broken = node.install.conf_dir.join("10-broken.conflist");
    fs::write(&broken, "{ \"plugins\": [").unwrap();
    let err = node.install.ensure().unwrap_err();
    assert!(err.to_string().contains("10-broken.conflist"), "{err}");
    assert_eq!(
        fs::read_to_string(&broken).unwrap(),
        "{ \"plugins\": [",
        "left as it was"
    );

    fs::write(&broken, "{ \"name\": \"x\" }").unwrap();
    let err = node.install.ensure().unwrap_err();
    assert!(
        err.to_string().contains("neither \"plugins\" nor \"type\""),
        "{err}"
    );
    fs::write(&broken, "{ \"plugins\": 3 }").unwrap();
    let err = node.install.ensure().unwrap_err();
    assert!(
        err.to_string().contains("\"plugins\" is not a list"),
        "{err}"
    );
}

#[test]
fn uninstall_leaves_the_primary_cni_as_it_was() {
    let node = node();
    let conflist = node.install.conf_dir.join("10-primary.conflist");
    let original = json!({ "cniVersion": "1.0.0", "name": "net", "plugins": [bridge()] });
    fs::write(&conflist, original.to_string()).unwrap();
    node.install.ensure().unwrap();
    node.install.uninstall().unwrap();
    assert_eq!(read(&conflist), original);
    assert!(!node.install.bin_dir.join("istio-cni").exists());
    node.install.uninstall().unwrap();
}
