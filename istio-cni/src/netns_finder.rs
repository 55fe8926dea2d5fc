//! Finding a pod's network namespace from its IP.
//!
//! The agent learns pods from the configuration, which names IPs, not namespaces. Like
//! Istio's agent it looks for the namespace that holds the address: first the named ones
//! (by default `/run/netns`, where CNI runtimes keep them), then, unless told not to,
//! every process's (`/proc/<pid>/ns/net`), each namespace entered once.
//!
//! Pod IPs are unique on a node, so the search is unambiguous there. The simulated
//! cluster, where several test clusters share one host, gives each node's agent a
//! directory of its own pods' namespaces and turns the /proc scan off.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where to look for pods' network namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchScope {
    /// Directories of named namespaces (files or symlinks to them).
    pub dirs: Vec<PathBuf>,
    /// Also look at every process's namespace.
    pub scan_proc: bool,
}

impl Default for SearchScope {
    fn default() -> Self {
        SearchScope {
            dirs: vec![PathBuf::from("/run/netns")],
            scan_proc: true,
        }
    }
}

/// Opens the network namespace in which `ip` is configured on an interface.
pub fn find_by_ip(ip: IpAddr, scope: &SearchScope) -> io::Result<Option<File>> {
    let mut seen = HashSet::new();
    for path in candidates(scope) {
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

fn candidates(scope: &SearchScope) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = scope
        .dirs
        .iter()
        .flat_map(|dir| list(dir, |entry| Some(entry.path())))
        .collect();
    if scope.scan_proc {
        paths.extend(list(Path::new("/proc"), |entry| {
            let name = entry.file_name();
            name.to_str()?.parse::<u32>().ok()?;
            Some(entry.path().join("ns/net"))
        }));
    }
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
