//! The CNI plugin (spec 1.0), chained after the node's primary plugin.
//!
//! The container runtime runs it for every pod with `CNI_COMMAND` and the network
//! configuration on stdin. It never changes the pod's networking itself: on ADD it tells
//! the node agent "this pod's network namespace is here" (the agent, which knows the
//! namespace labels, decides whether to capture it) and passes the previous plugin's
//! result through unchanged. A pod outside the mesh must never fail to start because of
//! us, so an unreachable agent is logged, not an error: the agent's own watch catches the
//! pod later anyway.

mod protocol;

use std::io::Write;
use std::path::PathBuf;

pub use protocol::{CniCommand, CniEnv, CniError, NetConf, PluginEvent};

/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where the agent listens for plugin events unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/istio-cni/pluginevent.sock";

/// Runs one CNI invocation: `env` from the environment, `stdin` the network
/// configuration. Returns what to print on stdout.
pub fn run(env: &CniEnv, stdin: &str) -> Result<String, CniError> {
    if env.command == CniCommand::Version {
        return Ok(protocol::version_result(stdin));
    }
    let conf = NetConf::parse(stdin)?;
    let log = |message: &str| log_line(conf.log_file.as_ref(), env, message);
    match env.command {
        CniCommand::Version => unreachable!("answered above"),
        CniCommand::Add => {
            let prev = conf.prev_result.clone().ok_or_else(|| {
                CniError::new(&conf.cni_version, 7, "istio-cni must be chained after a plugin that assigns addresses (no prevResult)")
            })?;
            let event = PluginEvent::from_env(env)?;
            match notify_agent(&conf.agent_socket(), &event) {
                Ok(()) => log(&format!(
                    "ADD {}/{}: agent notified (netns {})",
                    event.pod_namespace, event.pod_name, event.netns
                )),
                Err(err) => log(&format!(
                    "ADD {}/{}: agent not reachable ({err}); it will find the pod by itself",
                    event.pod_namespace, event.pod_name
                )),
            }
            Ok(protocol::pass_through(&conf.cni_version, prev))
        }
        CniCommand::Del => {
            log("DEL: nothing to undo in the pod (the agent releases pods from its configuration)");
            Ok(String::new())
        }
        CniCommand::Check => {
            if conf.prev_result.is_none() {
                return Err(CniError::new(
                    &conf.cni_version,
                    7,
                    "CHECK without prevResult",
                ));
            }
            Ok(String::new())
        }
    }
}

/// Sends one event to the agent over its unix socket and waits for its one-line answer.
fn notify_agent(socket: &PathBuf, event: &PluginEvent) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut writer = &stream;
    writeln!(
        writer,
        "{}",
        serde_json::to_string(event).map_err(std::io::Error::other)?
    )?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.trim() == "ok" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "agent answered {:?}",
            answer.trim()
        )))
    }
}

fn log_line(file: Option<&PathBuf>, env: &CniEnv, message: &str) {
    let Some(file) = file else { return };
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = writeln!(log, "istio-cni container={} {message}", env.container_id);
    }
}
