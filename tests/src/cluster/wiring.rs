//! Turns a [`ClusterSpec`] into namespaces, veth pairs, addresses and routes.
//!
//! Pods get a /32 address and a default route via their node's gateway address (which
//! every pod-facing veth on the node carries), so all pod traffic goes through the node,
//! as with most routed CNIs. Nodes forward, and route each other's pod CIDRs over the
//! underlay bridge. No NAT anywhere.

use crate::addressing::{
    UNDERLAY_PREFIX, node_pod_cidr, node_pod_gateway, node_underlay_ip, pod_ip,
};
use crate::cluster::builder::ClusterSpec;
use crate::error::Result;
use crate::netns::NetNs;

/// Interface names inside the namespaces (they never appear on the host).
const BRIDGE: &str = "br0";
const NIC: &str = "eth0";

/// The namespaces of a wired cluster; dropping it deletes them all.
#[derive(Debug)]
pub(crate) struct Network {
    /// Pod namespaces, per node, in spec order. Declared first so they are dropped first.
    pub pods: Vec<Vec<NetNs>>,
    /// Node namespaces, in spec order.
    pub nodes: Vec<NetNs>,
    /// The namespace holding the bridge all nodes plug into.
    pub underlay: NetNs,
}

/// Creates the whole network of `spec`, with namespace names starting with `prefix`.
///
/// On error, whatever was already created is removed (the namespaces drop).
pub(crate) fn build(prefix: &str, spec: &ClusterSpec) -> Result<Network> {
    let underlay = NetNs::create(format!("{prefix}-underlay"))?;
    underlay.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    underlay.ip(&["link", "set", BRIDGE, "up"])?;

    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for (index, node) in spec.nodes.iter().enumerate() {
        let netns = NetNs::create(format!("{prefix}-node-{}", node.name))?;
        plug_node(&underlay, &netns, index)?;
        nodes.push(netns);
    }
    for (index, netns) in nodes.iter().enumerate() {
        route_to_other_nodes(netns, index, spec.nodes.len())?;
    }

    let mut pods = Vec::with_capacity(spec.nodes.len());
    for (node_index, node) in spec.nodes.iter().enumerate() {
        let mut on_node = Vec::with_capacity(node.pods.len());
        for (pod_index, pod) in node.pods.iter().enumerate() {
            let netns = NetNs::create(format!("{prefix}-pod-{}", pod.name))?;
            plug_pod(&nodes[node_index], &netns, node_index, pod_index)?;
            on_node.push(netns);
        }
        pods.push(on_node);
    }
    Ok(Network {
        pods,
        nodes,
        underlay,
    })
}

/// Connects a node to the underlay bridge and lets it forward.
fn plug_node(underlay: &NetNs, node: &NetNs, index: usize) -> Result<()> {
    let port = format!("n{index}");
    node.ip(&[
        "link",
        "add",
        NIC,
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        underlay.name(),
    ])?;
    underlay.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
    let address = format!("{}/{UNDERLAY_PREFIX}", node_underlay_ip(index));
    node.ip(&["addr", "add", &address, "dev", NIC])?;
    node.ip(&["link", "set", NIC, "up"])?;
    node.sysctl("net.ipv4.ip_forward", "1")
}

/// Routes the pod CIDRs of every other node via that node's underlay address.
fn route_to_other_nodes(node: &NetNs, index: usize, node_count: usize) -> Result<()> {
    for other in (0..node_count).filter(|&other| other != index) {
        let (network, prefix) = node_pod_cidr(other);
        let cidr = format!("{network}/{prefix}");
        let via = node_underlay_ip(other).to_string();
        node.ip(&["route", "add", &cidr, "via", &via, "dev", NIC])?;
    }
    Ok(())
}

/// Connects a pod to its node: a veth, the pod's /32, and routes both ways.
fn plug_pod(node: &NetNs, pod: &NetNs, node_index: usize, pod_index: usize) -> Result<()> {
    let host_side = format!("vp{pod_index}");
    let gateway = node_pod_gateway(node_index).to_string();
    let address = pod_ip(node_index, pod_index).to_string();
    node.ip(&[
        "link",
        "add",
        &host_side,
        "type",
        "veth",
        "peer",
        "name",
        NIC,
        "netns",
        pod.name(),
    ])?;
    node.ip(&["addr", "add", &format!("{gateway}/32"), "dev", &host_side])?;
    node.ip(&["link", "set", &host_side, "up"])?;
    node.ip(&[
        "route",
        "add",
        &format!("{address}/32"),
        "dev",
        &host_side,
        "src",
        &gateway,
    ])?;
    pod.ip(&["addr", "add", &format!("{address}/32"), "dev", NIC])?;
    pod.ip(&["link", "set", NIC, "up"])?;
    pod.ip(&["route", "add", &gateway, "dev", NIC, "scope", "link"])?;
    pod.ip(&[
        "route", "add", "default", "via", &gateway, "dev", NIC, "src", &address,
    ])?;
    Ok(())
}
