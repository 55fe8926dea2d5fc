//! The value matchers AuthorizationPolicy uses: Istio's wildcard strings, CIDRs, ports.

use std::net::IpAddr;

use ipnet::IpNet;

/// Istio string match: `*` matches anything present, `abc*` a prefix, `*abc` a suffix,
/// anything else exactly. An absent value matches nothing.
pub(crate) fn string_matches(pattern: &str, value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// Whether `ip` is the address or inside the CIDR `block`; an unparsable block matches
/// nothing (so a typo in an ALLOW list admits no one).
pub(crate) fn ip_matches(block: &str, ip: IpAddr) -> bool {
    if let Ok(net) = block.parse::<IpNet>() {
        return net.contains(&ip);
    }
    block.parse::<IpAddr>().is_ok_and(|exact| exact == ip)
}

/// Whether `port` equals the port written as `text`.
pub(crate) fn port_matches(text: &str, port: u16) -> bool {
    text.parse::<u16>().is_ok_and(|p| p == port)
}

/// A positive list and its negation: the positive list, if given, must have a match; the
/// negative list must have none.
pub(crate) fn list_matches<T: Copy>(
    positive: &[String],
    negative: &[String],
    value: T,
    matches: impl Fn(&str, T) -> bool,
) -> bool {
    (positive.is_empty() || positive.iter().any(|p| matches(p, value)))
        && !negative.iter().any(|p| matches(p, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_istio() {
        let id = Some("cluster.local/ns/shop/sa/web");
        for (pattern, expected) in [
            ("*", true),
            ("cluster.local/ns/shop/sa/web", true),
            ("cluster.local/ns/shop/*", true),
            ("*/sa/web", true),
            ("cluster.local/ns/other/*", false),
            ("cluster.local/ns/shop/sa/we", false),
        ] {
            assert_eq!(string_matches(pattern, id), expected, "{pattern}");
        }
        assert!(
            !string_matches("*", None),
            "plaintext has no principal, even for *"
        );
    }

    #[test]
    fn ip_blocks_and_ports() {
        let ip: IpAddr = "10.244.1.7".parse().unwrap();
        assert!(ip_matches("10.244.1.0/24", ip));
        assert!(ip_matches("10.244.1.7", ip));
        assert!(!ip_matches("10.244.2.0/24", ip));
        assert!(!ip_matches("10.244.1.0/33", ip));
        assert!(
            port_matches("8080", 8080) && !port_matches("80", 8080) && !port_matches("http", 80)
        );
    }
}
