//! A real Kubernetes control plane for tests: etcd and kube-apiserver on loopback, and on
//! request kube-controller-manager and kube-scheduler.
//!
//! The binaries come from `scripts/build-kube-control-plane` (built from their Go modules,
//! cached outside the repo). The API server runs with a self-made serving certificate,
//! RBAC authorization, ServiceAccount token signing, and a static token for an admin
//! (`system:masters`); everything lives in a temporary directory removed on drop.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
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
    // Declared first: they stop before the API server they talk to.
    controllers: Vec<Process>,
    // Declared before etcd so the API server stops first.
    apiserver: Option<Process>,
    /// How to start the API server again after [`ControlPlane::kill_apiserver`].
    apiserver_program: PathBuf,
    apiserver_args: Vec<String>,
    _etcd: Process,
    url: String,
    ca_file: PathBuf,
    /// The network namespace it runs in (`None`: the host's).
    netns: Option<PathBuf>,
    /// The cluster CA: the API server trusts the client certificates it signs (nodes'),
    /// and it signs the API server's kubelet client certificate and the nodes' kubelet
    /// serving certificates.
    cluster_ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The directory holding the control plane's binaries, building them if needed
/// (`$MESH_KUBE_BIN` or `scripts/build-kube-control-plane`).
pub fn binaries() -> Result<PathBuf> {
    crate::go_builds::built("MESH_KUBE_BIN", "build-kube-control-plane")
}

fn free_port(ip: IpAddr) -> Result<u16> {
    let listener =
        TcpListener::bind((ip, 0)).map_err(|err| HarnessError::io("finding a free port", err))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|err| HarnessError::io("finding a free port", err))
}

/// Writes a file only its owner reads: keys, tokens and kubeconfigs among them.
fn write(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |err| HarnessError::io(format!("writing {}", path.display()), err);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)
}

fn issue_certificate(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: &Path,
    name: &str,
    common_name: &str,
    group: Option<&str>,
    ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf)> {
    let generate = |err: rcgen::Error| {
        HarnessError::ControlPlane(format!("issuing {name}'s certificate: {err}"))
    };
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, group);
    }
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if !ips.is_empty() {
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    }
    let cert = params.signed_by(&key, ca).map_err(generate)?;
    let (cert_file, key_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write(&cert_file, &cert.pem())?;
    write(&key_file, &key.serialize_pem())?;
    Ok((cert_file, key_file))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on the host's loopback and waits until ready.
    pub fn start() -> Result<Self> {
        Self::start_in(None, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts them inside the network namespace at `netns` (a simulated node, so the
    /// other nodes reach the API server over the underlay), listening on `ip`.
    pub fn start_in(netns: Option<PathBuf>, ip: IpAddr) -> Result<Self> {
        let command = |program: PathBuf| match &netns {
            Some(path) => crate::netns::command_in(path, program),
            None => Ok(Command::new(program)),
        };
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-kube-")
            .tempdir()
            .map_err(|err| HarnessError::io("creating the control plane's directory", err))?;
        let path = |name: &str| dir.path().join(name);
        let generate = |err: rcgen::Error| {
            HarnessError::ControlPlane(format!("generating control-plane keys: {err}"))
        };

        let serving_key = rcgen::KeyPair::generate().map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(generate)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        if !ip.is_loopback() {
            params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        }
        let serving = params.self_signed(&serving_key).map_err(generate)?;
        write(&path("serving.crt"), &serving.pem())?;
        write(&path("serving.key"), &serving_key.serialize_pem())?;
        let signing = rcgen::KeyPair::generate().map_err(generate)?;
        write(&path("sa.key"), &signing.serialize_pem())?;
        write(&path("sa.pub"), &signing.public_key_pem())?;
        let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh test cluster CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
        write(&path("cluster-ca.crt"), &ca_cert.pem())?;
        let cluster_ca = rcgen::Issuer::new(ca_params, ca_key);
        issue_certificate(
            &cluster_ca,
            dir.path(),
            "kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            &[],
        )?;
        write(
            &path("tokens.csv"),
            &format!("{ADMIN_TOKEN},mesh-admin,mesh-admin,system:masters\n"),
        )?;

        let ports =
            || -> Result<(u16, u16, u16)> { Ok((free_port(ip)?, free_port(ip)?, free_port(ip)?)) };
        let (etcd_port, peer_port, api_port) = match &netns {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|err| HarnessError::io(format!("opening {}", path.display()), err))?;
                mesh_core::netns::run_in(&file, ports)
                    .map_err(|err| HarnessError::io("entering the namespace", err))??
            }
            None => ports()?,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = command(bin.join("etcd"))?;
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

        let apiserver_args: Vec<String> = [
            "--etcd-servers",
            &etcd_url,
            "--bind-address",
            &ip.to_string(),
            "--secure-port",
            &api_port.to_string(),
            &format!("--tls-cert-file={}", path("serving.crt").display()),
            &format!("--tls-private-key-file={}", path("serving.key").display()),
            &format!("--service-account-key-file={}", path("sa.pub").display()),
            &format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ),
            &format!("--token-auth-file={}", path("tokens.csv").display()),
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--authorization-mode",
            "RBAC",
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--advertise-address",
            &ip.to_string(),
            "--endpoint-reconciler-type",
            "none",
            // Nodes authenticate with certificates of the cluster CA; the API server
            // reaches kubelets (logs, exec) with its own, checking theirs.
            &format!("--client-ca-file={}", path("cluster-ca.crt").display()),
            &format!(
                "--kubelet-client-certificate={}",
                path("kubelet-client.crt").display()
            ),
            &format!(
                "--kubelet-client-key={}",
                path("kubelet-client.key").display()
            ),
            &format!(
                "--kubelet-certificate-authority={}",
                path("cluster-ca.crt").display()
            ),
            "--kubelet-preferred-address-types=InternalIP",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();

        let mut plane = ControlPlane {
            controllers: Vec::new(),
            apiserver: None,
            apiserver_program: bin.join("kube-apiserver"),
            apiserver_args,
            _etcd: etcd,
            url: format!("https://{}", std::net::SocketAddr::new(ip, api_port)),
            ca_file: path("serving.crt"),
            netns: netns.clone(),
            cluster_ca,
            dir,
        };
        plane.start_apiserver()?;
        Ok(plane)
    }

    /// Kills the API server (SIGTERM, then SIGKILL), leaving etcd and its data, so tests
    /// can see the components ride out an outage.
    pub fn kill_apiserver(&mut self) -> Result<()> {
        if let Some(apiserver) = self.apiserver.take() {
            apiserver.stop()?;
        }
        Ok(())
    }

    /// Starts the API server (again) with the same flags and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<()> {
        self.kill_apiserver()?;
        let mut command = match &self.netns {
            Some(path) => crate::netns::command_in(path, &self.apiserver_program)?,
            None => Command::new(&self.apiserver_program),
        };
        command.args(&self.apiserver_args);
        let dir = self.dir.path().to_path_buf();
        self.apiserver = Some(Process::spawn("kube-apiserver", command, &dir)?);
        let apiserver = self.apiserver.as_ref().expect("just started");
        eventually(
            "kube-apiserver to be ready",
            Duration::from_secs(60),
            || {
                if let Some(status) = apiserver.exit_status()? {
                    return Err(HarnessError::ControlPlane(format!(
                        "kube-apiserver exited ({status}):\n{}",
                        apiserver.logs()
                    )));
                }
                match self.get(ADMIN_TOKEN, "/readyz") {
                    Ok((200, _)) => Ok(()),
                    Ok((code, body)) => Err(HarnessError::ControlPlane(format!(
                        "/readyz answered {code}: {body}"
                    ))),
                    Err(err) => Err(err),
                }
            },
        )
    }

    /// Starts kube-controller-manager and kube-scheduler against this API server (in its
    /// namespace), so the real controllers handle Deployments, ReplicaSets, DaemonSets,
    /// EndpointSlices, ServiceAccounts and their tokens, and the real scheduler binds pods
    /// to nodes. Returns once the controllers act: the `default` ServiceAccount of the
    /// `default` namespace exists and the cluster's CA is published in `kube-root-ca.crt`.
    pub fn start_controllers(&mut self) -> Result<()> {
        if !self.controllers.is_empty() {
            return Ok(());
        }
        let bin = binaries()?;
        let dir = self.dir.path().to_path_buf();
        let kubeconfig = dir.join("admin.kubeconfig");
        self.write_kubeconfig(&kubeconfig, ADMIN_TOKEN)?;
        let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
        let components: [(&str, Vec<String>); 2] = [
            (
                "kube-controller-manager",
                vec![
                    kubeconfig.clone(),
                    format!(
                        "--service-account-private-key-file={}",
                        dir.join("sa.key").display()
                    ),
                    format!("--root-ca-file={}", self.ca_file.display()),
                    // Each controller acts as its own ServiceAccount, under the roles the
                    // API server bootstraps for it, as in a real cluster.
                    "--use-service-account-credentials=true".into(),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                ],
            ),
            (
                "kube-scheduler",
                vec![
                    kubeconfig,
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                ],
            ),
        ];
        for (name, args) in components {
            let mut command = match &self.netns {
                Some(path) => crate::netns::command_in(path, bin.join(name))?,
                None => Command::new(bin.join(name)),
            };
            command.args(args);
            self.controllers.push(Process::spawn(name, command, &dir)?);
        }
        eventually(
            "the controllers to act (default ServiceAccount, kube-root-ca.crt)",
            Duration::from_secs(60),
            || {
                for component in &self.controllers {
                    if let Some(status) = component.exit_status()? {
                        return Err(HarnessError::ControlPlane(format!(
                            "a controller exited ({status}):\n{}",
                            component.logs()
                        )));
                    }
                }
                for path in [
                    "/api/v1/namespaces/default/serviceaccounts/default",
                    "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
                ] {
                    let (code, body) = self.get(ADMIN_TOKEN, path)?;
                    if code != 200 {
                        return Err(HarnessError::ControlPlane(format!(
                            "GET {path}: {code} {body}"
                        )));
                    }
                }
                Ok(())
            },
        )
    }

    /// The cluster CA's certificate (PEM file).
    pub fn cluster_ca_file(&self) -> PathBuf {
        self.dir.path().join("cluster-ca.crt")
    }

    /// Issues a certificate of the cluster CA into `dir` as `<name>.crt` and `<name>.key`:
    /// a client identity (`common_name`, in `group`: the certificate's organization) and,
    /// with `ips`, a serving certificate for those addresses.
    pub fn issue_certificate(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        group: Option<&str>,
        ips: &[IpAddr],
    ) -> Result<(PathBuf, PathBuf)> {
        issue_certificate(&self.cluster_ca, dir, name, common_name, group, ips)
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The network namespace it runs in (`None`: the host's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
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
        let mut curl = match &self.netns {
            Some(path) => crate::netns::command_in(path, "curl")?,
            None => Command::new("curl"),
        };
        curl.args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
            .arg(&self.ca_file)
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-w",
                "\n%{http_code}",
            ]);
        if let Some(json) = json {
            let content_type = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            curl.args([
                "-H",
                &format!("Content-Type: {content_type}"),
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
        let body = if body.is_empty() {
            String::from_utf8_lossy(&output.stderr).into_owned()
        } else {
            body.to_string()
        };
        Ok((code.trim().parse().unwrap_or(0), body))
    }

    /// Plays kubelet and the controllers for a simulated cluster: creates its Namespaces,
    /// ServiceAccounts, Nodes, Pods and Services (from the cluster's own YAML) and sets each
    /// Pod's status (`podIP`, `Running`) as a kubelet would.
    pub fn apply_cluster(&self, cluster: &crate::Cluster) -> Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cluster.config_dir())
            .map_err(|err| HarnessError::io("reading the cluster's YAML", err))?
            .flatten()
            .map(|entry| entry.path())
            .collect();
        let rank = |path: &PathBuf| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ["namespace-", "serviceaccount-", "node-", "pod-", "service-"]
                .iter()
                .position(|p| name.starts_with(p))
                .unwrap_or(9)
        };
        files.sort_by_key(rank);
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|err| HarnessError::io(format!("reading {}", file.display()), err))?;
            let object: serde_json::Value = serde_saphyr::from_str(&text)
                .map_err(|err| HarnessError::Spec(format!("{}: {err}", file.display())))?;
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            let collection = match kind {
                "Namespace" => "/api/v1/namespaces".to_string(),
                "Node" => "/api/v1/nodes".to_string(),
                "ServiceAccount" => format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
                "Pod" => format!("/api/v1/namespaces/{namespace}/pods"),
                "Service" => format!("/api/v1/namespaces/{namespace}/services"),
                _ => continue,
            };
            let (code, body) =
                self.request(ADMIN_TOKEN, "POST", &collection, Some(&object.to_string()))?;
            if code != 201 && code != 409 {
                return Err(HarnessError::ControlPlane(format!(
                    "creating {kind} {namespace}/{name}: {code} {body}"
                )));
            }
            if kind == "Pod" {
                let status = serde_json::json!({ "status": object["status"] }).to_string();
                let (code, body) = self.request(
                    ADMIN_TOKEN,
                    "PATCH",
                    &format!("{collection}/{name}/status"),
                    Some(&status),
                )?;
                if code != 200 {
                    return Err(HarnessError::ControlPlane(format!(
                        "setting the status of pod {namespace}/{name}: {code} {body}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes a kubeconfig for `token` to `path`, as a component would be given one.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        self.write_kubeconfig_for(path, &format!("    token: {token}\n"))
    }

    /// Writes a kubeconfig that authenticates with a client certificate (a node's).
    pub fn write_certificate_kubeconfig(&self, path: &Path, cert: &Path, key: &Path) -> Result<()> {
        self.write_kubeconfig_for(
            path,
            &format!(
                "    client-certificate: {}\n    client-key: {}\n",
                cert.display(),
                key.display()
            ),
        )
    }

    /// A kubeconfig for this API server whose user is `user` (its indented YAML fields).
    fn write_kubeconfig_for(&self, path: &Path, user: &str) -> Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: test\n  user:\n{user}contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.url,
            self.ca_file.display()
        );
        write(path, &kubeconfig)
    }
}
