//! The configuration the mesh reads: Kubernetes objects, as users write them.
//!
//! Both sources, a directory of YAML ([`file_source`]) and the Kubernetes API (later),
//! produce the same [`ConfigStore`]; [`crate::model`] turns it into what the data plane
//! needs. Objects are parsed into their real types: core objects with `k8s-openapi`,
//! Istio's security resources with strict types ([`istio`]).

pub mod file_source;
pub mod istio;
pub mod kube_source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory of Kubernetes YAML (the embedded default).
    Files(PathBuf),
    /// The Kubernetes API, through this kubeconfig (or in-cluster / the default one).
    Kubernetes(Option<PathBuf>),
}

impl Source {
    /// The source the `--config-source`, `--config-dir` and `--kubeconfig` flags of the
    /// mesh's binaries name; the error says which flag is missing or wrong.
    pub fn from_flags(
        kind: &str,
        dir: Option<PathBuf>,
        kubeconfig: Option<PathBuf>,
    ) -> Result<Self, String> {
        match (kind, dir) {
            ("file", Some(dir)) => Ok(Source::Files(dir)),
            ("file", None) => Err("--config-dir is required with --config-source file".into()),
            ("kubernetes", _) => Ok(Source::Kubernetes(kubeconfig)),
            (other, _) => Err(format!(
                "--config-source {other:?}: expected file or kubernetes"
            )),
        }
    }
}

/// Which kinds a component reads from the Kubernetes API. What a component watches decides
/// the RBAC it needs, so the node agent does not ask for what only ztunnel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Namespaces and Pods: enough to decide which pods to capture (the istio-cni agent).
    Capture,
    /// Everything the proxy needs: also Services, EndpointSlices, ServiceAccounts, Nodes
    /// and the Istio security kinds (ztunnel).
    Proxy,
}

/// Why a configuration source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory could not be watched.
    #[error("watching {path}: {source}")]
    Files {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The Kubernetes client could not be made.
    #[error(transparent)]
    Kubernetes(#[from] kube_source::KubeSourceError),
}

/// Starts `source` and returns its snapshots (a new one after every change, coalesced over
/// `settle`). Both sources publish the same [`file_source::Snapshot`].
pub async fn watch(
    source: &Source,
    interest: Interest,
    settle: std::time::Duration,
) -> Result<tokio::sync::watch::Receiver<std::sync::Arc<file_source::Snapshot>>, SourceError> {
    match source {
        Source::Files(dir) => file_source::FileSource::new(dir)
            .watch(settle)
            .map_err(|source| SourceError::Files {
                path: dir.clone(),
                source,
            }),
        Source::Kubernetes(kubeconfig) => {
            let client = kube_source::client(kubeconfig.as_deref()).await?;
            Ok(kube_source::watch(client, interest, settle))
        }
    }
}

/// A configuration object the mesh understands.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
// Objects are parsed once and then live in the store's map; boxing would only add
// indirection to every read.
#[allow(clippy::large_enum_variant)]
pub enum ConfigObject {
    Namespace(core::Namespace),
    Node(core::Node),
    Pod(core::Pod),
    Service(core::Service),
    EndpointSlice(discovery::EndpointSlice),
    ServiceAccount(core::ServiceAccount),
    AuthorizationPolicy(istio::AuthorizationPolicy),
    PeerAuthentication(istio::PeerAuthentication),
}

/// Identifies an object: kind, namespace (empty for cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `Pod`, `Service`, ...
    pub kind: &'static str,
    /// Namespace; empty for Namespaces and Nodes.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl ConfigObject {
    /// Its kind, as in `kind:`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigObject::Namespace(_) => "Namespace",
            ConfigObject::Node(_) => "Node",
            ConfigObject::Pod(_) => "Pod",
            ConfigObject::Service(_) => "Service",
            ConfigObject::EndpointSlice(_) => "EndpointSlice",
            ConfigObject::ServiceAccount(_) => "ServiceAccount",
            ConfigObject::AuthorizationPolicy(_) => "AuthorizationPolicy",
            ConfigObject::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            ConfigObject::Namespace(o) => &o.metadata,
            ConfigObject::Node(o) => &o.metadata,
            ConfigObject::Pod(o) => &o.metadata,
            ConfigObject::Service(o) => &o.metadata,
            ConfigObject::EndpointSlice(o) => &o.metadata,
            ConfigObject::ServiceAccount(o) => &o.metadata,
            ConfigObject::AuthorizationPolicy(o) => &o.metadata,
            ConfigObject::PeerAuthentication(o) => &o.metadata,
        }
    }

    /// Its key.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Why a configuration document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} (document {document}): {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based position of the YAML document in the file.
    pub document: usize,
    /// What is wrong, naming the field where the parser could.
    pub reason: String,
}

/// All configuration objects, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigStore {
    objects: BTreeMap<ObjectKey, ConfigObject>,
}

impl ConfigStore {
    /// Adds or replaces an object.
    pub fn insert(&mut self, object: ConfigObject) {
        self.objects.insert(object.key(), object);
    }

    /// Removes an object.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<ConfigObject> {
        self.objects.remove(key)
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = &ConfigObject> {
        self.objects.values()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The Namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&core::Namespace> {
        let key = ObjectKey {
            kind: "Namespace",
            namespace: String::new(),
            name: name.to_string(),
        };
        match self.objects.get(&key) {
            Some(ConfigObject::Namespace(ns)) => Some(ns),
            _ => None,
        }
    }

    /// All Pods.
    pub fn pods(&self) -> impl Iterator<Item = &core::Pod> {
        self.objects.values().filter_map(|o| match o {
            ConfigObject::Pod(p) => Some(p),
            _ => None,
        })
    }

    /// All Services.
    pub fn services(&self) -> impl Iterator<Item = &core::Service> {
        self.objects.values().filter_map(|o| match o {
            ConfigObject::Service(s) => Some(s),
            _ => None,
        })
    }

    /// All EndpointSlices (the endpoints of Services without a selector).
    pub fn endpoint_slices(&self) -> impl Iterator<Item = &discovery::EndpointSlice> {
        self.objects.values().filter_map(|o| match o {
            ConfigObject::EndpointSlice(s) => Some(s),
            _ => None,
        })
    }

    /// All AuthorizationPolicies.
    pub fn authorization_policies(&self) -> impl Iterator<Item = &istio::AuthorizationPolicy> {
        self.objects.values().filter_map(|o| match o {
            ConfigObject::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
    }

    /// All PeerAuthentications.
    pub fn peer_authentications(&self) -> impl Iterator<Item = &istio::PeerAuthentication> {
        self.objects.values().filter_map(|o| match o {
            ConfigObject::PeerAuthentication(p) => Some(p),
            _ => None,
        })
    }
}

/// The two fields every Kubernetes document starts with.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// What parsing a file produced.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects the mesh understands.
    pub objects: Vec<ConfigObject>,
    /// `apiVersion kind` of documents it does not use (Deployments, VirtualServices, ...).
    pub skipped: Vec<String>,
}

/// Parses every YAML document of one file.
///
/// Documents of kinds the mesh does not use are skipped, not errors, so a directory can
/// hold whole application manifests. A document the mesh does use must be valid.
pub fn parse_documents(file: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let mut parsed = Parsed::default();
    for (index, document) in split_documents(text).into_iter().enumerate() {
        let fail = |reason: String| ConfigError {
            file: file.to_path_buf(),
            document: index + 1,
            reason,
        };
        if document
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let meta: TypeMeta = serde_saphyr::from_str(document).map_err(|e| fail(e.to_string()))?;
        let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
            return Err(fail("apiVersion and kind are required".into()));
        };
        let typed = |e: serde_saphyr::Error| fail(format!("{kind}: {e}"));
        let object = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                ConfigObject::Namespace(serde_saphyr::from_str(document).map_err(typed)?)
            }
            ("v1", "Node") => ConfigObject::Node(serde_saphyr::from_str(document).map_err(typed)?),
            ("v1", "Pod") => ConfigObject::Pod(serde_saphyr::from_str(document).map_err(typed)?),
            ("v1", "Service") => {
                ConfigObject::Service(serde_saphyr::from_str(document).map_err(typed)?)
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                ConfigObject::EndpointSlice(serde_saphyr::from_str(document).map_err(typed)?)
            }
            ("v1", "ServiceAccount") => {
                ConfigObject::ServiceAccount(serde_saphyr::from_str(document).map_err(typed)?)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                ConfigObject::AuthorizationPolicy(serde_saphyr::from_str(document).map_err(typed)?)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                ConfigObject::PeerAuthentication(serde_saphyr::from_str(document).map_err(typed)?)
            }
            _ => {
                parsed.skipped.push(format!("{api_version} {kind}"));
                continue;
            }
        };
        let object = with_default_namespace(object);
        if object.metadata().name.as_deref().is_none_or(str::is_empty) {
            return Err(fail(format!("{kind}: metadata.name is required")));
        }
        parsed.objects.push(object);
    }
    Ok(parsed)
}

/// Namespaced objects written without `metadata.namespace` belong to `default`, as with
/// `kubectl apply`.
pub(crate) fn with_default_namespace(mut object: ConfigObject) -> ConfigObject {
    let meta = match &mut object {
        ConfigObject::Namespace(_) | ConfigObject::Node(_) => return object,
        ConfigObject::Pod(o) => &mut o.metadata,
        ConfigObject::Service(o) => &mut o.metadata,
        ConfigObject::EndpointSlice(o) => &mut o.metadata,
        ConfigObject::ServiceAccount(o) => &mut o.metadata,
        ConfigObject::AuthorizationPolicy(o) => &mut o.metadata,
        ConfigObject::PeerAuthentication(o) => &mut o.metadata,
    };
    meta.namespace.get_or_insert_with(|| "default".to_string());
    object
}

/// Splits a multi-document YAML text on `---` lines.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") {
            documents.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
}

#[cfg(test)]
mod tests;
