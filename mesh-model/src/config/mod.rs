//! The configuration the mesh reads: Kubernetes objects, as users write them.
//!
//! Both sources, a directory of YAML ([`file_source`]) and the Kubernetes API (later),
//! produce the same [`ConfigStore`]; [`crate::model`] turns it into what the data plane
//! needs. Objects are parsed into their real types: core objects with `k8s-openapi`,
//! Istio's security resources with strict types ([`istio`]).

pub mod file_source;
pub mod istio;
pub mod kube_source;
pub mod rejection;

pub use rejection::Rejected;

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

/// Why a configuration document or object was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} (document {document}{}): {reason}", object.as_ref().map(|o| format!(", {o}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (for the API source: the object).
    pub file: PathBuf,
    /// 1-based position of the YAML document in the file.
    pub document: usize,
    /// The object, `Kind namespace/name`, when that much could be read.
    pub object: Option<String>,
    /// What is wrong, naming the field or value where the parser could.
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
    /// Objects the mesh understands, including the stand-ins of rejected policies.
    pub objects: Vec<ConfigObject>,
    /// `apiVersion kind` of documents it does not use (Deployments, VirtualServices, ...).
    pub skipped: Vec<String>,
    /// Documents it refused, each reported, with what stands in for it.
    pub rejected: Vec<Rejected>,
}

impl Parsed {
    /// The objects, failing if any document was refused (for tests and fixtures that
    /// must be valid).
    pub fn valid(self) -> Result<Vec<ConfigObject>, ConfigError> {
        match self.rejected.into_iter().next() {
            Some(rejected) => Err(rejected.error),
            None => Ok(self.objects),
        }
    }
}

/// The API groups of the kinds the mesh reads, and the versions it reads them in: a
/// known kind of a known group in another version is refused, not skipped.
const KNOWN: [(&str, &str, &[&str]); 8] = [
    ("", "Namespace", &["v1"]),
    ("", "Node", &["v1"]),
    ("", "Pod", &["v1"]),
    ("", "Service", &["v1"]),
    ("", "ServiceAccount", &["v1"]),
    ("discovery.k8s.io", "EndpointSlice", &["v1"]),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        &["v1", "v1beta1"],
    ),
    (
        "security.istio.io",
        "PeerAuthentication",
        &["v1", "v1beta1"],
    ),
];

/// Parses every YAML document of one file.
///
/// Documents of kinds the mesh does not use are skipped, not errors, so a directory can
/// hold whole application manifests. A document of a kind the mesh uses must be valid: one
/// that is not is rejected on its own (the file's other documents still apply), reported
/// by file, document, object and field, and, for the security kinds, replaced by a
/// fail-closed stand-in ([`rejection`]).
pub fn parse_documents(file: &Path, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, document) in split_documents(text).into_iter().enumerate() {
        if document
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let error = |object: Option<String>, reason: String| ConfigError {
            file: file.to_path_buf(),
            document: index + 1,
            object,
            reason,
        };
        let meta: TypeMeta = match serde_saphyr::from_str(document) {
            Ok(meta) => meta,
            Err(e) => {
                parsed.rejected.push(Rejected {
                    error: error(None, e.to_string()),
                    key: None,
                    stand_in: None,
                });
                continue;
            }
        };
        let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
            parsed.rejected.push(Rejected {
                error: error(None, "apiVersion and kind are required".into()),
                key: None,
                stand_in: None,
            });
            continue;
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let Some((_, known_kind, versions)) =
            KNOWN.iter().find(|(g, k, _)| *g == group && *k == kind)
        else {
            parsed.skipped.push(format!("{api_version} {kind}"));
            continue;
        };
        match parse_known(known_kind, versions, version, document) {
            Ok(object) => {
                let object = with_default_namespace(object);
                let described = object.key().to_string();
                if object.metadata().name.as_deref().is_none_or(str::is_empty) {
                    parsed.rejected.push(Rejected {
                        error: error(None, format!("{kind}: metadata.name is required")),
                        key: None,
                        stand_in: None,
                    });
                } else if let Some(reason) = rejection::unenforceable(&object) {
                    let outline = rejection::Outline::from_yaml(document);
                    parsed.rejected.push(Rejected {
                        error: error(Some(described), reason),
                        key: Some(object.key()),
                        stand_in: outline.stand_in(known_kind),
                    });
                } else {
                    parsed.objects.push(object);
                }
            }
            Err(reason) => {
                let outline = rejection::Outline::from_yaml(document);
                let key = outline.key(known_kind);
                parsed.rejected.push(Rejected {
                    error: error(key.as_ref().map(ToString::to_string), reason),
                    key,
                    stand_in: outline.stand_in(known_kind),
                });
            }
        }
    }
    for rejected in &parsed.rejected {
        parsed.objects.extend(rejected.stand_in.as_deref().cloned());
    }
    parsed
}

/// One document of a kind the mesh reads, in one of the versions it reads.
fn parse_known(
    kind: &'static str,
    versions: &[&str],
    version: &str,
    document: &str,
) -> Result<ConfigObject, String> {
    if !versions.contains(&version) {
        return Err(format!(
            "{kind}: unsupported apiVersion version {version:?} (this mesh reads {})",
            versions.join(", ")
        ));
    }
    let typed = |e: serde_saphyr::Error| format!("{kind}: {e}");
    Ok(match kind {
        "Namespace" => ConfigObject::Namespace(serde_saphyr::from_str(document).map_err(typed)?),
        "Node" => ConfigObject::Node(serde_saphyr::from_str(document).map_err(typed)?),
        "Pod" => ConfigObject::Pod(serde_saphyr::from_str(document).map_err(typed)?),
        "Service" => ConfigObject::Service(serde_saphyr::from_str(document).map_err(typed)?),
        "EndpointSlice" => {
            ConfigObject::EndpointSlice(serde_saphyr::from_str(document).map_err(typed)?)
        }
        "ServiceAccount" => {
            ConfigObject::ServiceAccount(serde_saphyr::from_str(document).map_err(typed)?)
        }
        "AuthorizationPolicy" => {
            ConfigObject::AuthorizationPolicy(serde_saphyr::from_str(document).map_err(typed)?)
        }
        _ => ConfigObject::PeerAuthentication(serde_saphyr::from_str(document).map_err(typed)?),
    })
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
