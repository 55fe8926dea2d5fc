//! `waypoint`: the optional L7 proxy of the ambient mesh.
//!
//! Its HTTP stack (routes, splits, retries, timeouts, JWT, L7 policy) arrives with a later
//! issue; until then the binary only says what it is and refuses to run.

use clap::Parser;

/// Command line of the L7 proxy.
#[derive(Parser)]
#[command(
    version,
    about = "waypoint: optional L7 proxy of the ambient mesh",
    long_about = "waypoint: the optional L7 proxy of the ambient mesh, deployed per namespace or \
        service account.\n\n\
        It terminates HBONE tunnels, applies HTTP routing (VirtualService, HTTPRoute), \
        resilience (retries, timeouts, circuit breaking, rate limits) and L7 policy (JWT, \
        AuthorizationPolicy), then opens HBONE to the chosen endpoint.\n\n\
        Status: not implemented yet; running it exits with an error."
)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the waypoint proxy is not implemented yet; nothing was started")
}
