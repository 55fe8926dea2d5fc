//! `istio-cni`: the CNI plugin, chained after the node's primary CNI plugin.
//!
//! The runtime calls it with `CNI_COMMAND` (ADD, DEL, CHECK, VERSION) for every pod; it will
//! install the in-pod redirection for ambient pods (issue 4). Until then it only says what
//! it is and refuses to run.

use clap::Parser;

/// Command line of the CNI plugin (the CNI runtime passes its arguments in the environment).
#[derive(Parser)]
#[command(
    version,
    about = "istio-cni: CNI plugin that redirects ambient pods' traffic to the node's ztunnel",
    long_about = "istio-cni: a chained CNI plugin (CNI spec 1.0).\n\n\
        For each pod the container runtime creates, it installs the in-pod iptables redirection \
        when the pod's namespace is labeled istio.io/dataplane-mode=ambient, and hands the pod's \
        network namespace to the node's ztunnel.\n\n\
        Status: not implemented yet; running it exits with an error."
)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the istio-cni plugin is not implemented yet; nothing was changed")
}
