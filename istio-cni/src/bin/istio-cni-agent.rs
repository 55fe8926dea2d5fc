//! `istio-cni-agent`: the node agent of istio-cni (runs in the istio-cni DaemonSet).
//!
//! It will watch the pods of its node, enroll ambient ones and hand their network
//! namespaces to ztunnel over ZDS (issue 4). Until then it only says what it is and refuses
//! to run.

use clap::Parser;

/// Command line of the node agent.
#[derive(Parser)]
#[command(
    version,
    about = "istio-cni-agent: node agent that enrolls ambient pods with the node's ztunnel",
    long_about = "istio-cni-agent: the node agent of istio-cni.\n\n\
        It watches the pods on its node and the namespaces' istio.io/dataplane-mode label, \
        installs or removes the in-pod redirection, and passes each pod's network namespace to \
        ztunnel over the ZDS socket.\n\n\
        Status: not implemented yet; running it exits with an error."
)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the istio-cni node agent is not implemented yet; nothing was started")
}
