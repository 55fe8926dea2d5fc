//! The ports and marks ztunnel and istio-cni agree on inside every captured pod, in one
//! place: the rules istio-cni renders, the listeners ztunnel binds and the checks that
//! keep ztunnel from connecting to itself all read them from here.

use std::net::IpAddr;

/// Outbound listener: the pod's outgoing TCP is REDIRECTed here.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener: incoming TCP other than HBONE is TPROXYed here.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE listener (mutual TLS + HTTP/2 CONNECT).
pub const HBONE_PORT: u16 = 15008;
/// DNS proxy (UDP, when DNS capture is on).
pub const DNS_PORT: u16 = 15053;
/// `SO_MARK` on ztunnel's own sockets in a pod: the rules let them pass untouched.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Mark of TPROXYed packets, kept as connmark so replies return to ztunnel.
pub const TPROXY_MARK: u32 = 0x111;
/// The bits of the mark the rules look at.
pub const MARK_MASK: u32 = 0xfff;

/// Every port ztunnel listens on inside a pod. A connection aimed at one of them on the
/// pod's own address would be relayed by ztunnel into its own listener, again and again.
pub const ZTUNNEL_PORTS: [u16; 4] = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT, DNS_PORT];

/// Whether ztunnel must refuse to relay a connection to `ip:port` on behalf of a pod whose
/// addresses are `pod_ips`: loopback and unspecified addresses (in a pod they can only
/// reach the pod itself, where ztunnel's listeners are), or one of ztunnel's in-pod ports
/// on the pod's own address.
pub fn is_own_listener(ip: IpAddr, port: u16, pod_ips: &[IpAddr]) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || (ZTUNNEL_PORTS.contains(&port) && pod_ips.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_pods_own_ztunnel_ports_are_refused() {
        let pod: IpAddr = "10.244.1.3".parse().unwrap();
        let other: IpAddr = "10.244.2.3".parse().unwrap();
        let cases = [
            ("127.0.0.1", 8080, true),
            ("127.0.0.53", 53, true),
            ("::1", 8080, true),
            ("0.0.0.0", 8080, true),
            ("10.244.1.3", 15001, true),
            ("10.244.1.3", 15006, true),
            ("10.244.1.3", 15008, true),
            ("10.244.1.3", 15053, true),
            ("10.244.1.3", 8080, false),
            ("10.244.2.3", 15008, false),
            ("10.244.2.3", 8080, false),
        ];
        for (ip, port, refused) in cases {
            assert_eq!(
                is_own_listener(ip.parse().unwrap(), port, &[pod]),
                refused,
                "{ip}:{port}"
            );
        }
        assert!(!is_own_listener(other, 15001, &[pod]));
    }
}
