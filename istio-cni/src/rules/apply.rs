//! Installing and removing a pod's rules with iptables-nft and iproute2.
//!
//! Every function acts on the network namespace of the calling thread (and the processes
//! it starts): call them through `mesh_core::netns::run_in` with the pod's namespace.
//! [`apply`] first removes whatever an earlier run left, so applying twice (an agent
//! restart, a reconcile) never duplicates a rule.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{CHAIN_OUTPUT, CHAIN_PREROUTING, PodRules};

/// The iptables front end; the kernel side is nf_tables.
const IPTABLES: &str = "iptables-nft";
const IPTABLES_RESTORE: &str = "iptables-nft-restore";
const IPTABLES_SAVE: &str = "iptables-nft-save";

/// Why the rules could not be installed, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A tool could not be started (not installed?).
    #[error("cannot run {program}: {source} (is the iptables / iproute2 package installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `program args`, feeding `stdin`; returns stdout.
fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, RulesError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RulesError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| RulesError::Spawn { program, source })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| RulesError::Spawn { program, source })?;
    if !output.status.success() {
        return Err(RulesError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installs `rules` in the current namespace. Rules already exactly in place are left as
/// they are, so a new agent adopting a captured pod (a restart, an upgrade) never opens a
/// moment without redirection; anything else (none, stale or partial) is replaced.
pub fn apply(rules: &PodRules) -> Result<(), RulesError> {
    if is_installed(rules)? {
        return Ok(());
    }
    remove(rules)?;
    run(
        IPTABLES_RESTORE,
        &["--noflush"],
        Some(&rules.restore_input()),
    )?;
    for (table, chain, target) in rules.jumps() {
        run(IPTABLES, &["-t", table, "-A", chain, "-j", target], None)?;
    }
    let ip_rule: Vec<&str> = rules.ip_rule.iter().map(String::as_str).collect();
    run("ip", &[&["-4", "rule", "add"], &ip_rule[..]].concat(), None)?;
    let ip_route: Vec<&str> = rules.ip_route.iter().map(String::as_str).collect();
    run(
        "ip",
        &[&["-4", "route", "add"], &ip_route[..]].concat(),
        None,
    )?;
    Ok(())
}

/// Removes everything [`apply`] installs from the current namespace; a no-op when
/// nothing is installed.
pub fn remove(rules: &PodRules) -> Result<(), RulesError> {
    for (table, chain, target) in rules.jumps() {
        while run(IPTABLES, &["-t", table, "-C", chain, "-j", target], None).is_ok() {
            run(IPTABLES, &["-t", table, "-D", chain, "-j", target], None)?;
        }
    }
    for (table, chain) in [
        ("mangle", CHAIN_PREROUTING),
        ("mangle", CHAIN_OUTPUT),
        ("nat", CHAIN_OUTPUT),
    ] {
        let saved = run(IPTABLES_SAVE, &["-t", table], None)?;
        if saved
            .lines()
            .any(|line| line.starts_with(&format!(":{chain} ")))
        {
            run(IPTABLES, &["-t", table, "-F", chain], None)?;
            run(IPTABLES, &["-t", table, "-X", chain], None)?;
        }
    }
    let ip_rule: Vec<&str> = rules.ip_rule.iter().map(String::as_str).collect();
    let pref = rule_pref(rules);
    while !run("ip", &["-4", "rule", "show", "pref", pref], None)?
        .trim()
        .is_empty()
    {
        run("ip", &[&["-4", "rule", "del"], &ip_rule[..]].concat(), None)?;
    }
    let table = route_table(rules);
    match run("ip", &["-4", "route", "flush", "table", table], None) {
        // The kernel drops a routing table with its last route.
        Err(RulesError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
        other => other.map(drop),
    }
}

/// The priority of our policy rule (its `pref` argument).
fn rule_pref(rules: &PodRules) -> &str {
    rules
        .ip_rule
        .iter()
        .skip_while(|a| *a != "pref")
        .nth(1)
        .map_or("0", String::as_str)
}

/// The routing table our policy rule looks up (the route's last argument).
fn route_table(rules: &PodRules) -> &str {
    rules.ip_route.last().map_or("100", String::as_str)
}

/// Whether exactly `rules` are in place: our chains and jumps as rendered (nothing more,
/// nothing less), the policy rule and its route.
pub fn is_installed(rules: &PodRules) -> Result<bool, RulesError> {
    let mut wanted: Vec<String> = rules
        .mangle
        .iter()
        .map(|rule| format!("mangle {rule}"))
        .chain(rules.nat.iter().map(|rule| format!("nat {rule}")))
        .collect();
    wanted.sort();
    let mut installed = installed_rules()?;
    installed.sort();
    if installed != wanted {
        return Ok(false);
    }
    let pref = rule_pref(rules);
    if run("ip", &["-4", "rule", "show", "pref", pref], None)?
        .lines()
        .count()
        != 1
    {
        return Ok(false);
    }
    let table = route_table(rules);
    match run("ip", &["-4", "route", "show", "table", table], None) {
        Ok(routes) => Ok(!routes.trim().is_empty()),
        Err(RulesError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
        Err(err) => Err(err),
    }
}

/// The rules of our chains and the jumps into them as `iptables-save` prints them, each
/// prefixed by its table (`mangle -A ISTIO_PRERT ...`): what the kernel really holds.
pub fn installed_rules() -> Result<Vec<String>, RulesError> {
    let mut installed = Vec::new();
    for table in ["mangle", "nat"] {
        for line in run(IPTABLES_SAVE, &["-t", table], None)?.lines() {
            if line.starts_with("-A ") && line.contains("ISTIO_") {
                installed.push(format!("{table} {line}"));
            }
        }
    }
    Ok(installed)
}
