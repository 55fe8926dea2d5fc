//! The file config source: a directory of Kubernetes YAML, watched for changes.
//!
//! This is the embedded default and what tests use: the same YAML a user would apply,
//! with Pods carrying `spec.nodeName` and `status.podIP`. Every `*.yaml`/`*.yml` file
//! directly in the directory is read. A document that fails to parse is reported (file,
//! document, object, field) on its own: the file's other documents apply; a rejected
//! security policy is replaced by its fail-closed stand-in (`super::rejection`); another
//! rejected object keeps its last good version, so one bad edit never takes the other
//! tenants' configuration away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::watch;

use super::{ConfigError, ConfigObject, ConfigStore, parse_documents};

/// What one load of the directory produced.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every object from every file (a failing file contributes its last good objects).
    pub store: ConfigStore,
    /// Every document or object refused, with the reason.
    pub errors: Vec<ConfigError>,
    /// Whether the source has read everything once (a directory: at once; the API: every
    /// watched kind has listed), so the data plane may serve from it.
    pub synced: bool,
}

/// What is remembered of one file between loads.
#[derive(Debug, Clone)]
struct FileState {
    /// Modification time and length when last read.
    fingerprint: (SystemTime, u64),
    /// Its objects as of the last read (stand-ins and last good versions included).
    objects: Vec<ConfigObject>,
    /// What the last read refused.
    errors: Vec<ConfigError>,
}

/// Reads a config directory, re-reading only files that changed.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl FileSource {
    /// A source for `dir` (read on the first [`FileSource::load`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSource {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads what changed since the last load and returns the whole configuration.
    ///
    /// A missing or unreadable directory is an error in the snapshot, with the last good
    /// objects kept.
    pub fn load(&mut self) -> Snapshot {
        let mut errors = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                let mut present = Vec::new();
                for entry in entries.flatten() {
                    let path = entry.path();
                    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
                    if is_yaml && path.is_file() {
                        self.refresh(&path);
                        present.push(path);
                    }
                }
                self.files.retain(|path, _| present.contains(path));
            }
            Err(err) => errors.push(ConfigError {
                file: self.dir.clone(),
                document: 0,
                object: None,
                reason: format!("cannot read the config directory: {err}"),
            }),
        }
        let mut store = ConfigStore::default();
        for state in self.files.values() {
            errors.extend(state.errors.iter().cloned());
            for object in &state.objects {
                store.insert(object.clone());
            }
        }
        Snapshot {
            store,
            errors,
            synced: true,
        }
    }

    fn refresh(&mut self, path: &Path) {
        let fingerprint = std::fs::metadata(path)
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            .unwrap_or((SystemTime::UNIX_EPOCH, 0));
        if self
            .files
            .get(path)
            .is_some_and(|state| state.fingerprint == fingerprint)
        {
            return;
        }
        let previous = self
            .files
            .remove(path)
            .map(|state| state.objects)
            .unwrap_or_default();
        let state = match std::fs::read_to_string(path) {
            Ok(text) => {
                let parsed = parse_documents(path, &text);
                let mut objects = parsed.objects;
                let mut errors = Vec::new();
                for rejected in parsed.rejected {
                    tracing::warn!(error = %rejected.error, "config rejected");
                    // Not a security policy (those have their stand-in): keep the last
                    // good version of the object.
                    if rejected.stand_in.is_none()
                        && let Some(key) = &rejected.key
                        && let Some(last) = previous.iter().find(|o| &o.key() == key)
                    {
                        objects.push(last.clone());
                    }
                    errors.push(rejected.error);
                }
                FileState {
                    fingerprint,
                    objects,
                    errors,
                }
            }
            Err(err) => {
                let error = ConfigError {
                    file: path.to_path_buf(),
                    document: 0,
                    object: None,
                    reason: err.to_string(),
                };
                tracing::warn!(%error, "config file unreadable; keeping its last good objects");
                FileState {
                    fingerprint,
                    objects: previous,
                    errors: vec![error],
                }
            }
        };
        self.files.insert(path.to_path_buf(), state);
    }

    /// Loads now, then watches the directory and publishes a new snapshot after every
    /// change (coalesced over `settle`). Must run inside a Tokio runtime; the watch stops
    /// when every receiver is dropped.
    pub fn watch(
        mut self,
        settle: Duration,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, notify::Error> {
        let (publish, snapshots) = watch::channel(Arc::new(self.load()));
        let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| may_change_contents(&event.kind)) {
                    let _ = changed.send(());
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        tokio::spawn(async move {
            let _watcher = watcher;
            while changes.recv().await.is_some() {
                tokio::time::sleep(settle).await;
                while changes.try_recv().is_ok() {}
                let snapshot = self.load();
                for error in &snapshot.errors {
                    tracing::warn!(%error, "config error");
                }
                if publish.send(Arc::new(snapshot)).is_err() {
                    return;
                }
            }
        });
        Ok(snapshots)
    }
}

/// Whether an event can change what a load reads. Reading is an event too (inotify reports
/// opening the directory and each file): counted as a change, every load would schedule the
/// next one, and every source watching the directory (both ztunnels and agents of a node
/// sharing it) would keep the others scanning it ten times a second.
fn may_change_contents(kind: &notify::EventKind) -> bool {
    !matches!(
        kind,
        notify::EventKind::Access(
            notify::event::AccessKind::Open(_)
                | notify::event::AccessKind::Read
                | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n";
    const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-all\n  namespace: shop\nspec: {}\n";

    #[test]
    fn a_bad_edit_is_reported_a_policy_fails_closed_and_other_objects_stay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns.yaml"), NAMESPACE).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not config").unwrap();
        let mut source = FileSource::new(dir.path());
        let first = source.load();
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.store.len(), 2);

        // A typo in the policy: reported, and the policy becomes a deny-all stand-in.
        std::fs::write(
            dir.path().join("policy.yaml"),
            POLICY.replace("spec: {}", "spec:\n  acton: DENY"),
        )
        .unwrap();
        let second = source.load();
        assert_eq!(second.errors.len(), 1);
        assert!(
            second.errors[0].to_string().contains("policy.yaml")
                && second.errors[0].reason.contains("acton")
        );
        let policy = second
            .store
            .all::<crate::config::istio::AuthorizationPolicy>()
            .next()
            .unwrap();
        assert_eq!(policy.spec.action, super::super::istio::Action::Deny);
        assert_eq!(policy.spec.rules.len(), 1, "one rule matching everything");

        // A typo in the namespace: reported, and its last good version stays.
        std::fs::write(
            dir.path().join("ns.yaml"),
            NAMESPACE.replace("istio.io/dataplane-mode: ambient", "- ambient"),
        )
        .unwrap();
        let third = source.load();
        assert_eq!(third.errors.len(), 2);
        assert_eq!(
            third.store.namespace("shop"),
            first.store.namespace("shop"),
            "the last good namespace is kept"
        );

        std::fs::remove_file(dir.path().join("policy.yaml")).unwrap();
        std::fs::write(dir.path().join("ns.yaml"), NAMESPACE).unwrap();
        let fourth = source.load();
        assert!(fourth.errors.is_empty());
        assert_eq!(fourth.store.len(), 1, "a deleted file's objects go");
    }

    #[tokio::test]
    async fn watching_publishes_changes_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns.yaml"), NAMESPACE).unwrap();
        let mut snapshots = FileSource::new(dir.path())
            .watch(Duration::from_millis(50))
            .unwrap();
        assert_eq!(snapshots.borrow_and_update().store.len(), 1);
        std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        tokio::time::timeout(Duration::from_secs(1), async {
            while snapshots.borrow_and_update().store.len() != 2 {
                snapshots.changed().await.unwrap();
            }
        })
        .await
        .expect("the new policy file was not picked up within a second");
    }

    #[tokio::test]
    async fn reading_the_directory_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns.yaml"), NAMESPACE).unwrap();
        let mut snapshots = FileSource::new(dir.path())
            .watch(Duration::from_millis(50))
            .unwrap();
        snapshots.borrow_and_update();
        // What another source watching the same directory does on every load.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::read(entry.unwrap().path()).unwrap();
        }
        let republished = tokio::time::timeout(Duration::from_millis(600), snapshots.changed());
        assert!(
            republished.await.is_err(),
            "reading the files published a new snapshot (each load would schedule the next)"
        );
    }
}
