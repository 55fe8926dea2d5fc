//! `istio-cni`: the CNI plugin, chained after the node's primary CNI plugin.
//!
//! The runtime calls it with `CNI_COMMAND` (ADD, DEL, CHECK, VERSION) and the network
//! configuration on stdin; see `istio_cni_plugin`.

use std::io::Read;

const HELP: &str = "istio-cni: a chained CNI plugin (CNI spec 1.0).

For each pod the container runtime creates, it tells the node's istio-cni agent where the
pod's network namespace is; the agent installs the in-pod redirection when the pod's
namespace is labeled istio.io/dataplane-mode=ambient and hands the namespace to the node's
ztunnel. The previous plugin's result is passed through unchanged.

Run by the container runtime with CNI_COMMAND=ADD|DEL|CHECK|VERSION and the network
configuration (JSON) on stdin. Configuration keys besides the standard ones:
  log_file       file to append log lines to
  agent_socket   the agent's plugin-event socket (default /var/run/istio-cni/pluginevent.sock)
";

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    let env = match istio_cni_plugin::CniEnv::from_vars(|key| std::env::var(key).ok()) {
        Ok(env) => env,
        Err(err) => fail(&err),
    };
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    match istio_cni_plugin::run(&env, &stdin) {
        Ok(out) => print!("{out}"),
        Err(err) => fail(&err),
    }
}

fn fail(err: &istio_cni_plugin::CniError) -> ! {
    println!("{}", err.to_json());
    eprintln!("{err}");
    std::process::exit(1);
}
