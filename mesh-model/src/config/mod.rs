//! The configuration the mesh reads: Kubernetes objects, as users write them.
//!
//! Both sources, a directory of YAML ([`file_source`]) and the Kubernetes API (later),
//! produce the same [`ConfigStore`]; [`crate::model`] turns it into what the data plane
//! needs. Objects are parsed into their real types: core objects with `k8s-openapi`,
//! Istio's security resources with strict types ([`istio`]).

pub mod file_source;
pub mod gateway_api;
pub mod gateway_routes;
pub mod istio;
pub mod istio_networking;
pub mod kinds;
pub mod kube_source;
pub mod rejection;

pub use kinds::{ConfigObject, KINDS, Kind, KindInfo};
pub use rejection::Rejected;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;

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
    /// Everything the L4 proxy needs: also Services, EndpointSlices, ServiceAccounts,
    /// Nodes, the Istio security kinds and Gateways (ztunnel).
    Proxy,
    /// Also the L7 kinds: routes, destination rules, request authentication (the
    /// waypoint). ztunnel does not watch them, nor need RBAC for them.
    Waypoint,
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

/// Identifies an object: kind, namespace (empty for cluster-scoped), name. The strings are
/// shared, so copying a store (a snapshot, the translator's last one) allocates no keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `Pod`, `Service`, ...
    pub kind: &'static str,
    /// Namespace; empty for Namespaces and Nodes.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
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

    /// The object of kind `K` called `namespace/name` (`namespace` empty for
    /// cluster-scoped kinds).
    pub fn get<K: Kind>(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        let key = ObjectKey {
            kind: K::info().name,
            namespace: namespace.into(),
            name: name.into(),
        };
        self.objects.get(&key).and_then(K::get)
    }

    /// Every object of kind `K`, in key order (a range of the map, not a scan of it).
    pub fn all<K: Kind>(&self) -> impl Iterator<Item = &Arc<K>> {
        let kind = K::info().name;
        let start = ObjectKey {
            kind,
            namespace: "".into(),
            name: "".into(),
        };
        self.objects
            .range(start..)
            .take_while(move |(key, _)| key.kind == kind)
            .filter_map(|(_, object)| K::get(object))
    }

    /// The keys of objects added, removed or changed from `self` to `newer`. Objects are
    /// shared, so an object both hold is compared by pointer first.
    pub fn changed_keys(&self, newer: &ConfigStore) -> Vec<ObjectKey> {
        let mut changed = Vec::new();
        let (mut old, mut new) = (
            self.objects.iter().peekable(),
            newer.objects.iter().peekable(),
        );
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => return changed,
                (Some((key, _)), None) => {
                    changed.push((*key).clone());
                    old.next();
                }
                (None, Some((key, _))) => {
                    changed.push((*key).clone());
                    new.next();
                }
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => {
                        changed.push((*a).clone());
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed.push((*b).clone());
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !x.same_as(y) {
                            changed.push((*a).clone());
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
    }

    /// The Namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&Arc<core::Namespace>> {
        self.get("", name)
    }
}

/// A store holding `objects` (later ones replace earlier ones of the same key).
impl FromIterator<ConfigObject> for ConfigStore {
    fn from_iter<I: IntoIterator<Item = ConfigObject>>(objects: I) -> Self {
        let mut store = ConfigStore::default();
        for object in objects {
            store.insert(object);
        }
        store
    }
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
        // A YAML document becomes JSON first, as `kubectl apply` sends it, and is then
        // decoded as the API source decodes what the server holds.
        let written: serde_json::Value = match serde_saphyr::from_str(document) {
            Ok(written) => written,
            Err(e) => {
                parsed.rejected.push(Rejected {
                    error: error(None, e.to_string()),
                    key: None,
                    stand_in: None,
                });
                continue;
            }
        };
        let text_field = |name: &str| written.get(name).and_then(serde_json::Value::as_str);
        let (Some(api_version), Some(kind)) = (text_field("apiVersion"), text_field("kind")) else {
            parsed.rejected.push(Rejected {
                error: error(None, "apiVersion and kind are required".into()),
                key: None,
                stand_in: None,
            });
            continue;
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let Some(info) = KindInfo::find(group, kind) else {
            parsed.skipped.push(format!("{api_version} {kind}"));
            continue;
        };
        let known_kind = info.name;
        match parse_known(info, version, &written) {
            Ok(object) => {
                let object = object.with_default_namespace();
                let described = object.key().to_string();
                if object.metadata().name.as_deref().is_none_or(str::is_empty) {
                    parsed.rejected.push(Rejected {
                        error: error(None, format!("{kind}: metadata.name is required")),
                        key: None,
                        stand_in: None,
                    });
                } else if let Some(reason) = rejection::unenforceable(&object) {
                    let outline = rejection::Outline::from_json(&written);
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
                let outline = rejection::Outline::from_json(&written);
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
        parsed.objects.extend(rejected.stand_in.clone());
    }
    parsed
}

/// One document (as JSON) of a kind the mesh reads, in one of the versions it reads.
fn parse_known(
    info: &KindInfo,
    version: &str,
    written: &serde_json::Value,
) -> Result<ConfigObject, String> {
    if !info.versions.contains(&version) {
        return Err(format!(
            "{}: unsupported apiVersion version {version:?} (this mesh reads {})",
            info.kind,
            info.versions.join(", ")
        ));
    }
    let object =
        ConfigObject::from_json(info, written).map_err(|e| format!("{}: {e}", info.kind))?;
    if info.read_as == kinds::ReadAs::Typed {
        // The k8s-openapi types ignore fields they do not know; the mesh's own types refuse
        // them. Compare what was written with what was understood, so a typo in a core kind
        // (`selctor:`) is reported too, as `kubectl apply` (strict field validation) does.
        if let Some(path) = first_unknown_field(written, &object.to_json(), "") {
            return Err(format!("{}: unknown field `{path}`", info.kind));
        }
    }
    Ok(object)
}

/// The first field (as a dotted path) present in `written` but not in `understood`.
/// Fields written as `null` count as absent.
fn first_unknown_field(
    written: &serde_json::Value,
    understood: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (written, understood) {
        (Value::Object(written), Value::Object(understood)) => {
            written.iter().find_map(|(key, value)| {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match understood.get(key) {
                    None if !value.is_null() => Some(path),
                    None => None,
                    Some(known) => first_unknown_field(value, known, &path),
                }
            })
        }
        (Value::Array(written), Value::Array(understood)) => written
            .iter()
            .zip(understood)
            .enumerate()
            .find_map(|(i, (w, u))| first_unknown_field(w, u, &format!("{at}[{i}]"))),
        _ => None,
    }
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
