//! A real Kubernetes control plane for tests: etcd and kube-apiserver on loopback.
//!
//! The binaries come from `scripts/build-kube-control-plane` (built from their Go modules,
//! cached outside the repo). The API server runs with a self-made serving certificate,
//! RBAC authorization, ServiceAccount token signing, and a static token for an admin
//! (`system:masters`); everything lives in a temporary directory removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::eventually::eventually;
use crate::process::Process;

/// The admin's bearer token.
pub const ADMIN_TOKEN: &str = "mesh-test-admin";

/// A running etcd + kube-apiserver; stopped and removed on drop.
pub struct ControlPlane {
    // Declared first so the API server stops before etcd.
    apiserver: Process,
    _etcd: Process,
    url: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The directory holding `kube-apiserver` and `etcd`, building them if needed.
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESH_KUBE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube-control-plane");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|err| HarnessError::io(format!("running {}", script.display()), err))?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            command: script.display().to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|err| HarnessError::io("finding a free port", err))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|err| HarnessError::io("finding a free port", err))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|err| HarnessError::io(format!("writing {}", path.display()), err))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub fn start() -> Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-kube-")
            .tempdir()
            .map_err(|err| HarnessError::io("creating the control plane's directory", err))?;
        let path = |name: &str| dir.path().join(name);
        let generate =
            |err: rcgen::Error| HarnessError::Spec(format!("generating control-plane keys: {err}"));

        let serving_key = rcgen::KeyPair::generate().map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(generate)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let serving = params.self_signed(&serving_key).map_err(generate)?;
        write(&path("serving.crt"), &serving.pem())?;
        write(&path("serving.key"), &serving_key.serialize_pem())?;
        let signing = rcgen::KeyPair::generate().map_err(generate)?;
        write(&path("sa.key"), &signing.serialize_pem())?;
        write(&path("sa.pub"), &signing.public_key_pem())?;
        write(
            &path("tokens.csv"),
            &format!("{ADMIN_TOKEN},mesh-admin,mesh-admin,system:masters\n"),
        )?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--data-dir")
            .arg(path("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
            ]);
        let etcd = Process::spawn("etcd", etcd, dir.path())?;

        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .args([
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
            ])
            .arg(format!("--tls-cert-file={}", path("serving.crt").display()))
            .arg(format!(
                "--tls-private-key-file={}",
                path("serving.key").display()
            ))
            .arg(format!(
                "--service-account-key-file={}",
                path("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                path("tokens.csv").display()
            ))
            .args([
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ])
            .args([
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
            ])
            .args([
                "--advertise-address",
                "127.0.0.1",
                "--endpoint-reconciler-type",
                "none",
            ]);
        let apiserver = Process::spawn("kube-apiserver", apiserver, dir.path())?;

        let plane = ControlPlane {
            apiserver,
            _etcd: etcd,
            url: format!("https://127.0.0.1:{api_port}"),
            ca_file: path("serving.crt"),
            _dir: dir,
        };
        eventually(
            "kube-apiserver to be ready",
            Duration::from_secs(60),
            || {
                if let Some(status) = plane.apiserver.exit_status()? {
                    return Err(HarnessError::Spec(format!(
                        "kube-apiserver exited ({status}):\n{}",
                        plane.apiserver.logs()
                    )));
                }
                match plane.get(ADMIN_TOKEN, "/readyz") {
                    Ok((200, _)) => Ok(()),
                    Ok((code, body)) => Err(HarnessError::Spec(format!(
                        "/readyz answered {code}: {body}"
                    ))),
                    Err(err) => Err(err),
                }
            },
        )?;
        Ok(plane)
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed its serving certificate (it is self-signed).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// GETs `path` with `token`; returns the HTTP status and body (via curl).
    pub fn get(&self, token: &str, path: &str) -> Result<(u16, String)> {
        self.request(token, "GET", path, None)
    }

    /// Sends `method path` with `token` and an optional JSON body; returns the HTTP status
    /// and body (via curl, a client from another stack).
    pub fn request(
        &self,
        token: &str,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> Result<(u16, String)> {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
            .arg(&self.ca_file)
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-w",
                "\n%{http_code}",
            ]);
        if let Some(json) = json {
            curl.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                json,
            ]);
        }
        let output = curl
            .arg(format!("{}{path}", self.url))
            .output()
            .map_err(|err| HarnessError::io("running curl", err))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    /// Writes a kubeconfig for `token` to `path`, as a component would be given one.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.url,
            self.ca_file.display()
        );
        write(path, &kubeconfig)
    }
}
