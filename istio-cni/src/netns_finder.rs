//! Finding a pod's network namespace from its IP.
//!
//! The agent learns pods from the configuration, which names IPs, not namespaces. Like
//! Istio's agent it looks for the namespace that holds the address: first the named ones
//! (`/run/netns`, where CNI runtimes and the simulated cluster keep them), then every
//! process's (`/proc/<pid>/ns/net`), each namespace entered once.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where named network namespaces live.
const NAMED: &str = "/run/netns";

/// Opens the network namespace in which `ip` is configured on an interface.
pub fn find_by_ip(ip: IpAddr) -> io::Result<Option<File>> {
    let mut seen = HashSet::new();
    for path in candidates() {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if holds_address(&file, ip).unwrap_or(false) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

fn candidates() -> Vec<PathBuf> {
    let mut paths = list(Path::new(NAMED), |entry| Some(entry.path()));
    paths.extend(list(Path::new("/proc"), |entry| {
        let name = entry.file_name();
        name.to_str()?.parse::<u32>().ok()?;
        Some(entry.path().join("ns/net"))
    }));
    paths
}

fn list(dir: &Path, keep: impl Fn(&std::fs::DirEntry) -> Option<PathBuf>) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| keep(&e)).collect())
        .unwrap_or_default()
}

fn holds_address(netns: &File, ip: IpAddr) -> io::Result<bool> {
    mesh_core::netns::run_in(netns, || {
        let addresses = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        Ok(addresses.filter_map(|a| a.address).any(|address| {
            address.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                || address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
        }))
    })?
}
