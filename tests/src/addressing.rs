//! The simulated cluster's IP plan, as pure functions.
//!
//! Every cluster lives behind its own underlay namespace, so all clusters use the same
//! plan without colliding, and none of these addresses is ever routed on the host:
//!
//! | what | range | n-th (0-based) |
//! |---|---|---|
//! | node underlay | `172.18.0.0/16` | `172.18.0.{n+1}` |
//! | pod CIDR of node n | `10.244.{n+1}.0/24` | gateway `.1`, pod k at `.{k+2}` |
//! | service ClusterIP | `10.96.0.0/16` | `10.96.0.{n+10}` |

use std::net::Ipv4Addr;

/// Prefix length of the underlay subnet shared by all nodes.
pub const UNDERLAY_PREFIX: u8 = 16;
/// Most nodes a cluster may have (the plan gives each a /24 pod CIDR in 10.244.x).
pub const MAX_NODES: usize = 250;
/// Most pods a node may host (its /24 minus network, gateway and broadcast).
pub const MAX_PODS_PER_NODE: usize = 252;
/// Most services a cluster may have.
pub const MAX_SERVICES: usize = 240;

/// Underlay address of the `node`-th node.
pub fn node_underlay_ip(node: usize) -> Ipv4Addr {
    assert!(node < MAX_NODES, "node index {node} out of range");
    Ipv4Addr::new(172, 18, 0, (node + 1) as u8)
}

/// Pod CIDR of the `node`-th node, as (network address, prefix length).
pub fn node_pod_cidr(node: usize) -> (Ipv4Addr, u8) {
    assert!(node < MAX_NODES, "node index {node} out of range");
    (Ipv4Addr::new(10, 244, (node + 1) as u8, 0), 24)
}

/// Address the node answers on for its pods: each pod's default gateway.
pub fn node_pod_gateway(node: usize) -> Ipv4Addr {
    let (net, _) = node_pod_cidr(node);
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// Address of the `pod`-th pod on the `node`-th node.
pub fn pod_ip(node: usize, pod: usize) -> Ipv4Addr {
    assert!(pod < MAX_PODS_PER_NODE, "pod index {pod} out of range");
    let (net, _) = node_pod_cidr(node);
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, (pod + 2) as u8)
}

/// ClusterIP of the `service`-th service.
pub fn service_ip(service: usize) -> Ipv4Addr {
    assert!(
        service < MAX_SERVICES,
        "service index {service} out of range"
    );
    Ipv4Addr::new(10, 96, 0, (service + 10) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_table() {
        assert_eq!(node_underlay_ip(0), Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(node_pod_cidr(1), (Ipv4Addr::new(10, 244, 2, 0), 24));
        assert_eq!(node_pod_gateway(1), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(pod_ip(1, 0), Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(service_ip(0), Ipv4Addr::new(10, 96, 0, 10));
    }

    #[test]
    fn every_pod_address_is_unique_and_inside_its_node_cidr() {
        let mut seen = std::collections::HashSet::new();
        for node in [0, 1, MAX_NODES - 1] {
            let (net, _) = node_pod_cidr(node);
            for pod in [0, 1, MAX_PODS_PER_NODE - 1] {
                let ip = pod_ip(node, pod);
                assert_eq!(ip.octets()[..3], net.octets()[..3]);
                assert_ne!(ip, node_pod_gateway(node));
                assert_ne!(ip.octets()[3], 255, "broadcast handed to a pod");
                assert!(seen.insert(ip), "{ip} handed out twice");
            }
        }
    }
}
