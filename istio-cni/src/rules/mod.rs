//! The in-pod redirection rules: rendered from data as text, applied with iptables-nft.
//!
//! This is the upstream istio-cni in-pod rule set, so a pod enrolled by us behaves like a
//! pod enrolled by Istio and works with either ztunnel:
//!
//! * outbound TCP from the app (not marked by ztunnel) is REDIRECTed to ztunnel's 15001;
//! * inbound TCP to 15008 is TPROXYed to ztunnel's HBONE listener; other inbound TCP
//!   (plaintext) to 15006; both set the 0x111 mark, and `ip rule fwmark 0x111 lookup 100`
//!   with a `local 0.0.0.0/0` route in table 100 delivers them to the local listener;
//! * packets of connections ztunnel opened itself carry its 0x539 mark and pass untouched;
//!   the mark is saved on the connection (connmark) so replies from the app find their
//!   way back through the same path;
//! * the kubelet's probes arrive SNATed to 169.254.7.127 on the node and bypass capture;
//! * optionally UDP DNS is REDIRECTed to ztunnel's DNS proxy on 15053.
//!
//! [`render`] is pure; [`apply`] and [`remove`] run inside the pod's network namespace.

mod apply;

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use mesh_core::inpod;

pub use apply::{RulesError, apply, installed_rules, is_installed, remove};

/// The chain in `mangle` PREROUTING and the one in `mangle`/`nat` OUTPUT that hold our rules.
pub const CHAIN_PREROUTING: &str = "ISTIO_PRERT";
/// See [`CHAIN_PREROUTING`].
pub const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";

/// Everything the rules depend on; the defaults are Istio's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InpodConfig {
    /// Mark ztunnel sets on its own sockets in the pod (`SO_MARK`), so they bypass capture.
    pub ztunnel_mark: u32,
    /// Mark TPROXY sets on inbound packets, and connmark carries for their connections.
    pub tproxy_mark: u32,
    /// Mask applied to both marks.
    pub mark_mask: u32,
    /// Source address the node SNATs kubelet probes to; they are not captured.
    pub probe_source: Ipv4Addr,
    /// ztunnel's outbound listener in the pod.
    pub outbound_port: u16,
    /// ztunnel's inbound plaintext listener in the pod.
    pub inbound_plaintext_port: u16,
    /// ztunnel's HBONE listener in the pod.
    pub hbone_port: u16,
    /// Capture UDP DNS to ztunnel's DNS proxy (off until ztunnel serves DNS; capturing it
    /// with nothing listening would break name resolution).
    pub capture_dns: bool,
    /// ztunnel's DNS proxy port in the pod.
    pub dns_port: u16,
    /// Routing table that delivers TPROXYed packets locally.
    pub route_table: u32,
    /// Priority of the `ip rule` pointing marked packets at that table.
    pub rule_priority: u32,
}

impl Default for InpodConfig {
    fn default() -> Self {
        InpodConfig {
            ztunnel_mark: inpod::ZTUNNEL_MARK,
            tproxy_mark: inpod::TPROXY_MARK,
            mark_mask: inpod::MARK_MASK,
            probe_source: Ipv4Addr::new(169, 254, 7, 127),
            outbound_port: inpod::OUTBOUND_PORT,
            inbound_plaintext_port: inpod::INBOUND_PLAINTEXT_PORT,
            hbone_port: inpod::HBONE_PORT,
            capture_dns: false,
            dns_port: inpod::DNS_PORT,
            route_table: 100,
            rule_priority: 32764,
        }
    }
}

/// The rendered rules of one pod: iptables-restore input plus the routing rule and route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRules {
    /// `mangle` table rules, in `iptables-save` form (`-A CHAIN ...`).
    pub mangle: Vec<String>,
    /// `nat` table rules, in `iptables-save` form.
    pub nat: Vec<String>,
    /// `ip rule` arguments.
    pub ip_rule: Vec<String>,
    /// `ip route` arguments.
    pub ip_route: Vec<String>,
}

impl PodRules {
    /// Input for `iptables-restore --noflush`: declares (and so empties) our chains, then
    /// fills them. Jumps from the built-in chains are not in it; [`apply`] adds them once.
    pub fn restore_input(&self) -> String {
        let mut out = String::new();
        for (table, rules, chains) in [
            (
                "mangle",
                &self.mangle,
                &[CHAIN_PREROUTING, CHAIN_OUTPUT][..],
            ),
            ("nat", &self.nat, &[CHAIN_OUTPUT][..]),
        ] {
            let _ = writeln!(out, "*{table}");
            for chain in chains {
                let _ = writeln!(out, ":{chain} - [0:0]");
            }
            for rule in rules.iter().filter(|r| !is_jump_from_builtin(r)) {
                let _ = writeln!(out, "{rule}");
            }
            let _ = writeln!(out, "COMMIT");
        }
        out
    }

    /// The jumps from built-in chains into ours, as (table, chain, target).
    pub fn jumps(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        vec![
            ("mangle", "PREROUTING", CHAIN_PREROUTING),
            ("mangle", "OUTPUT", CHAIN_OUTPUT),
            ("nat", "OUTPUT", CHAIN_OUTPUT),
        ]
    }
}

fn is_jump_from_builtin(rule: &str) -> bool {
    rule.starts_with("-A PREROUTING ") || rule.starts_with("-A OUTPUT ")
}

/// Renders the rules for a pod, exactly as `iptables-save` prints them back, so what the
/// kernel holds can be compared with what was meant.
pub fn render(config: &InpodConfig) -> PodRules {
    let mask = config.mark_mask;
    let ztunnel = format!("{:#x}/{mask:#x}", config.ztunnel_mark);
    let tproxy = format!("{:#x}/{mask:#x}", config.tproxy_mark);
    let probe = format!("{}/32", config.probe_source);
    let tproxy_to =
        |port: u16| format!("-j TPROXY --on-port {port} --on-ip 0.0.0.0 --tproxy-mark {tproxy}");

    let mangle = vec![
        format!("-A PREROUTING -j {CHAIN_PREROUTING}"),
        format!("-A OUTPUT -j {CHAIN_OUTPUT}"),
        // Connections ztunnel accepted (its packets are marked) keep the mark for replies.
        format!("-A {CHAIN_PREROUTING} -m mark --mark {ztunnel} -j CONNMARK --set-xmark {tproxy}"),
        format!("-A {CHAIN_PREROUTING} -s {probe} -p tcp -m tcp -j ACCEPT"),
        format!(
            "-A {CHAIN_PREROUTING} -p tcp -m tcp --dport {} -m mark ! --mark {ztunnel} {}",
            config.hbone_port,
            tproxy_to(config.hbone_port)
        ),
        format!(
            "-A {CHAIN_PREROUTING} -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ),
        format!(
            "-A {CHAIN_PREROUTING} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {ztunnel} {}",
            tproxy_to(config.inbound_plaintext_port)
        ),
        format!(
            "-A {CHAIN_OUTPUT} -m connmark --mark {tproxy} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
    ];
    let mut nat = vec![
        format!("-A OUTPUT -j {CHAIN_OUTPUT}"),
        format!("-A {CHAIN_OUTPUT} -d {probe} -p tcp -m tcp -j ACCEPT"),
    ];
    if config.capture_dns {
        nat.push(format!(
            "-A {CHAIN_OUTPUT} ! -o lo -p udp -m mark ! --mark {ztunnel} -m udp --dport 53 -j REDIRECT --to-ports {}",
            config.dns_port
        ));
    }
    nat.push(format!(
        "-A {CHAIN_OUTPUT} -p tcp -m mark --mark {tproxy} -j ACCEPT"
    ));
    nat.push(format!(
        "-A {CHAIN_OUTPUT} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {ztunnel} -j REDIRECT --to-ports {}",
        config.outbound_port
    ));

    let table = config.route_table.to_string();
    PodRules {
        mangle,
        nat,
        ip_rule: [
            "fwmark",
            &tproxy,
            "pref",
            &config.rule_priority.to_string(),
            "lookup",
            &table,
        ]
        .map(String::from)
        .to_vec(),
        ip_route: ["local", "0.0.0.0/0", "dev", "lo", "table", &table]
            .map(String::from)
            .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_istios_in_pod_rule_set() {
        let rules = render(&InpodConfig::default());
        assert_eq!(
            rules.mangle,
            [
                "-A PREROUTING -j ISTIO_PRERT",
                "-A OUTPUT -j ISTIO_OUTPUT",
                "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
                "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
                "-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
                "-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff",
                "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
            ]
        );
        assert_eq!(
            rules.nat,
            [
                "-A OUTPUT -j ISTIO_OUTPUT",
                "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
                "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
            ]
        );
        assert_eq!(
            rules.ip_rule.join(" "),
            "fwmark 0x111/0xfff pref 32764 lookup 100"
        );
        assert_eq!(rules.ip_route.join(" "), "local 0.0.0.0/0 dev lo table 100");
    }

    #[test]
    fn dns_capture_adds_one_redirect_before_tcp_capture() {
        let rules = render(&InpodConfig {
            capture_dns: true,
            ..InpodConfig::default()
        });
        assert_eq!(
            rules.nat[2],
            "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053"
        );
        assert_eq!(rules.nat.len(), 5);
    }

    #[test]
    fn restore_input_declares_our_chains_and_leaves_builtin_jumps_out() {
        let text = render(&InpodConfig::default()).restore_input();
        assert!(
            text.starts_with("*mangle\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n"),
            "{text}"
        );
        assert!(
            text.contains("COMMIT\n*nat\n:ISTIO_OUTPUT - [0:0]\n"),
            "{text}"
        );
        assert!(
            !text.contains("-A PREROUTING") && !text.contains("-A OUTPUT"),
            "{text}"
        );
        assert_eq!(text.matches("COMMIT").count(), 2);
    }
}
