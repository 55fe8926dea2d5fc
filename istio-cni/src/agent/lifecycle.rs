//! Telling a restart from an uninstall when the agent is asked to stop.
//!
//! A DaemonSet's pod gets SIGTERM both when it is replaced (a rolling update, `kubectl
//! rollout restart`) and when the DaemonSet is deleted (`helm uninstall`). Only the second
//! should release the node's pods: during a replacement the pods must stay captured for
//! the next agent to adopt. The API tells them apart: the agent's own pod names the
//! DaemonSet that owns it, which is gone (or being deleted) only in the second case.
//!
//! The agent watches that DaemonSet from the start rather than asking at SIGTERM: an
//! uninstall deletes the agent's ServiceAccount and RBAC right after the DaemonSet, so by
//! the time the pod is told to stop, asking may no longer be allowed; the watch has seen
//! the deletion by then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::Stop;

/// How long to wait between attempts to read this agent's pod at start-up.
const RETRY: Duration = Duration::from_secs(2);

/// Which pod this agent runs as (from the downward API).
#[derive(Debug, Clone)]
pub struct OwnPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the agent knows of its DaemonSet; `decide` reads it at SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    gone: Arc<AtomicBool>,
}

impl Owner {
    /// Starts watching the DaemonSet that owns `pod`; stops with the runtime.
    pub fn watch(client: kube::Client, pod: OwnPod) -> Self {
        let owner = Owner::default();
        let gone = owner.gone.clone();
        tokio::spawn(async move {
            let name = loop {
                match owning_daemonset(&client, &pod).await {
                    Ok(Some(name)) => break name,
                    Ok(None) => {
                        tracing::info!("not run by a DaemonSet: stopping will release the pods");
                        gone.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "reading this agent's pod failed; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
            let api = Api::<DaemonSet>::namespaced(client, &pod.namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            let mut listed = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Delete(_)) => gone.store(true, Ordering::SeqCst),
                    Ok(Event::Apply(daemonset) | Event::InitApply(daemonset)) => {
                        listed = true;
                        gone.store(
                            daemonset.metadata.deletion_timestamp.is_some(),
                            Ordering::SeqCst,
                        );
                    }
                    Ok(Event::Init) => listed = false,
                    Ok(Event::InitDone) => {
                        if !listed {
                            gone.store(true, Ordering::SeqCst);
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "watching this agent's DaemonSet"),
                }
            }
        });
        owner
    }

    /// How to stop: `Uninstall` once the DaemonSet was seen gone or being deleted,
    /// `Handover` otherwise (including when it could not be watched: keeping pods captured
    /// is the safe side, releasing them drops their traffic out of the mesh's policy).
    pub fn decide(&self) -> Stop {
        if self.gone.load(Ordering::SeqCst) {
            Stop::Uninstall
        } else {
            Stop::Handover
        }
    }
}

/// The name of the DaemonSet that owns `pod`, if one does.
async fn owning_daemonset(
    client: &kube::Client,
    pod: &OwnPod,
) -> Result<Option<String>, kube::Error> {
    let own = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await?;
    Ok(own
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|owner| owner.kind == "DaemonSet")
        .map(|owner| owner.name))
}
