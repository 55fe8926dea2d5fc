//! The Kubernetes API config source: reflectors over the kinds the mesh reads, feeding the
//! same [`ConfigStore`] (and the same [`Snapshot`]s) as the file source.
//!
//! Each kind has a watcher (list, then watch; relist with backoff after any error). A
//! relist replaces that kind's objects once complete, so objects deleted while the
//! connection was down disappear, and the last known state keeps serving meanwhile. The
//! custom resource kinds (Istio's, the Gateway API's) are read as dynamic objects and parsed
//! into the same strict types as files; one that does not parse is reported and left out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::file_source::Snapshot;
use super::rejection::Outline;
use super::{ConfigError, ConfigObject, ConfigStore, Interest, KindInfo, ObjectKey, Rejected};

/// Why a Kubernetes client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// No in-cluster or default configuration was found.
    #[error("no Kubernetes configuration: {0}")]
    Infer(String),
    /// The client could not be built.
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client from `kubeconfig`, or in-cluster / `$KUBECONFIG` / `~/.kube/config` if `None`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let fail = |reason: String| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                reason,
            };
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeSourceError::Infer(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

/// Shared state of the watchers: the store, and per-kind relists in progress.
#[derive(Default)]
struct State {
    store: ConfigStore,
    relisting: BTreeMap<&'static str, BTreeSet<ObjectKey>>,
    errors: BTreeMap<ObjectKey, ConfigError>,
    /// Kinds that have listed at least once.
    listed: BTreeSet<&'static str>,
}

/// What each kind's watcher feeds: the shared state, and a nudge to publish.
#[derive(Clone)]
pub(crate) struct Sink {
    state: Arc<Mutex<State>>,
    changed: tokio::sync::mpsc::UnboundedSender<()>,
}

/// Watches the API server and publishes a new snapshot after every change (coalesced
/// over `settle`). Must run inside a Tokio runtime; watchers stop when every receiver is
/// dropped. Which kinds are watched is the registry's word ([`super::KINDS`]).
pub fn watch(
    client: kube::Client,
    interest: Interest,
    settle: Duration,
) -> watch::Receiver<Arc<Snapshot>> {
    let state = Arc::new(Mutex::new(State::default()));
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let kinds = super::KINDS
        .iter()
        .filter(|k| k.watched_by(interest))
        .count();
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let sink = Sink {
        state: state.clone(),
        changed,
    };
    super::kinds::spawn_watchers(&client, interest, &sink);
    drop(sink);

    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            tokio::time::sleep(settle).await;
            while changes.try_recv().is_ok() {}
            let snapshot = {
                let state = state.lock().unwrap_or_else(|p| p.into_inner());
                Snapshot {
                    store: state.store.clone(),
                    errors: state.errors.values().cloned().collect(),
                    synced: state.listed.len() >= kinds,
                }
            };
            if publish.send(Arc::new(snapshot)).is_err() {
                return;
            }
        }
    });
    snapshots
}

/// Applies one watcher event of `kind` to the state. A rejected object is reported and
/// its stand-in (if it has one) takes its place in the store.
fn apply(
    state: &Mutex<State>,
    kind: &'static str,
    event: Event<Result<ConfigObject, Box<Rejected>>>,
) {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let put = |state: &mut State, object: Result<ConfigObject, Box<Rejected>>| {
        let (key, object) = match object {
            Ok(object) => {
                let key = object.key();
                state.errors.remove(&key);
                (key, Some(object))
            }
            Err(rejected) => {
                tracing::warn!(error = %rejected.error, "Kubernetes object rejected");
                let key = rejected.key.clone().unwrap_or_else(|| ObjectKey {
                    kind,
                    namespace: "".into(),
                    name: rejected.error.file.display().to_string().into(),
                });
                let Rejected {
                    error, stand_in, ..
                } = *rejected;
                state.errors.insert(key.clone(), error);
                (key, stand_in)
            }
        };
        if let Some(seen) = state.relisting.get_mut(kind) {
            seen.insert(key.clone());
        }
        match object {
            Some(object) => state.store.insert(object),
            None => {
                state.store.remove(&key);
            }
        }
    };
    match event {
        Event::Apply(object) | Event::InitApply(object) => put(&mut state, object),
        Event::Delete(object) => {
            let key = match object {
                Ok(object) => Some(object.key()),
                Err(rejected) => rejected.key,
            };
            if let Some(key) = key {
                state.store.remove(&key);
                state.errors.remove(&key);
            }
        }
        Event::Init => {
            state.relisting.insert(kind, BTreeSet::new());
        }
        Event::InitDone => {
            state.listed.insert(kind);
            let seen = state.relisting.remove(kind).unwrap_or_default();
            let stale: Vec<ObjectKey> = state
                .store
                .objects()
                .map(ConfigObject::key)
                .filter(|k| k.kind == kind && !seen.contains(k))
                .collect();
            for key in stale {
                state.store.remove(&key);
            }
            state
                .errors
                .retain(|k, _| k.kind != kind || seen.contains(k));
        }
    }
}

/// Watches a kind through its `k8s-openapi` type.
pub(crate) fn spawn_typed<K>(client: &kube::Client, info: &'static KindInfo, sink: Sink)
where
    K: kube::Resource<DynamicType = ()>
        + super::Kind
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync,
{
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    apply(
                        &sink.state,
                        info.name,
                        map_event(event, |object| {
                            Ok(K::wrap(Arc::new(object)).with_default_namespace())
                        }),
                    );
                    if sink.changed.send(()).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(kind = info.name, error = %err, "Kubernetes watch failed; retrying")
                }
            }
        }
    });
}

/// Watches a custom resource kind as dynamic objects, each parsed through the mesh's strict
/// type: a bad object is rejected (reported as an Event on it, its stand-in enforced), the
/// others keep applying.
pub(crate) fn spawn_dynamic(client: &kube::Client, info: &'static KindInfo, sink: Sink) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        info.group,
        info.versions[0],
        info.kind,
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let recorder = Recorder::new(client.clone(), Reporter::from("ztunnel"));
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let added = matches!(event, Event::Apply(_) | Event::InitApply(_));
                    let event = map_event(event, |object| {
                        let reference = object.object_ref(&resource);
                        let parsed = parse_dynamic(info, object);
                        if let (true, Err(rejected)) = (added, &parsed) {
                            report_rejection(&recorder, reference, &rejected.error.reason);
                        }
                        parsed
                    });
                    apply(&sink.state, info.name, event);
                    if sink.changed.send(()).is_err() {
                        return;
                    }
                }
                // Until the CRD is installed this fails; that is not worth more than debug.
                // A kind the API server does not serve has nothing to list: it counts as
                // listed (empty), so readiness does not wait for CRDs that never come.
                Err(err) => {
                    if let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &err
                        && status.is_not_found()
                    {
                        let mut state = sink.state.lock().unwrap_or_else(|p| p.into_inner());
                        if state.listed.insert(info.name) && sink.changed.send(()).is_err() {
                            return;
                        }
                    }
                    tracing::debug!(kind = info.name, error = %err, "custom resource watch failed; retrying")
                }
            }
        }
    });
}

/// Tells the object's owner, where `kubectl describe` shows it: a Warning Event
/// `Rejected` on the object. Best effort: the rejection is logged and counted anyway.
fn report_rejection(recorder: &Recorder, reference: ObjectReference, reason: &str) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "Rejected".into(),
        note: Some(reason.chars().take(1000).collect()),
        action: "Enforce".into(),
        secondary: None,
    };
    let recorder = recorder.clone();
    tokio::spawn(async move {
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %err, "publishing a Rejected event failed");
        }
    });
}

fn map_event<K, T>(event: Event<K>, convert: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(object) => Event::Apply(convert(object)),
        Event::Delete(object) => Event::Delete(convert(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(convert(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// A dynamic object through the same strict type as files. One that does not fit it, or
/// cannot be enforced as written, is rejected with its fail-closed stand-in.
fn parse_dynamic(
    info: &'static KindInfo,
    object: DynamicObject,
) -> Result<ConfigObject, Box<Rejected>> {
    let kind = info.name;
    let name = format!(
        "{kind} {}/{}",
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or("")
    );
    let mut value = serde_json::to_value(&object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        let api_version = format!("{}/{}", info.group, info.versions[0]);
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), info.kind.into());
    }
    let reject = |reason: String| {
        let outline = Outline::from_json(&value);
        Box::new(Rejected {
            error: ConfigError {
                file: name.clone().into(),
                document: 1,
                object: Some(name.clone()),
                reason,
            },
            key: outline.key(kind),
            stand_in: outline.stand_in(kind),
        })
    };
    let object = ConfigObject::from_json(info, &value)
        .map_err(reject)?
        .with_default_namespace();
    match super::rejection::unenforceable(&object) {
        Some(reason) => Err(reject(reason)),
        None => Ok(object),
    }
}
