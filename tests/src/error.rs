//! Why building or driving the simulated cluster failed, worded so a failing test says
//! what to fix.

use std::io;
use std::time::Duration;

/// Everything the harness can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Network namespaces and veth pairs need CAP_SYS_ADMIN and CAP_NET_ADMIN.
    #[error(
        "the simulated cluster must run as root (it creates network namespaces and veth pairs); \
         run the suite with `sudo scripts/test`"
    )]
    NotRoot,
    /// A program the harness drives is not installed.
    #[error(
        "`{program}` is not installed; `scripts/setup-machine` installs it (Debian package {package})"
    )]
    MissingTool {
        /// The program looked for on PATH.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command the harness ran exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The cluster description is inconsistent (a pod without a node, a duplicate name...).
    #[error("invalid cluster description: {0}")]
    Spec(String),
    /// The test control plane (etcd, kube-apiserver, kubectl) failed at run time.
    #[error("control plane: {0}")]
    ControlPlane(String),
    /// A program the test waited on exited first.
    #[error("{label} exited ({status}) before {awaited}\n{logs}")]
    Exited {
        /// The program's label.
        label: String,
        /// How it exited.
        status: String,
        /// What the test was waiting for.
        awaited: String,
        /// Its output.
        logs: String,
    },
    /// A condition polled with [`crate::eventually`] never held.
    #[error("timed out after {waited:?} waiting for {what}; last failure: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// The last error the condition returned.
        last: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of harness operations.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
