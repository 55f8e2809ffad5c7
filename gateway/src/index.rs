//! The lab-ownership index: namespace → owner and members, in memory.
//!
//! Fed by a kube-runtime watcher over namespaces labelled `labgate.io/lab=true`
//! (or by a static labs file for VMs outside Kubernetes and for the demo).
//! Lookups never call the API server. Every change to a lab is broadcast so
//! that live sessions into it can re-check their grant and close at once when
//! the lab is deleted, un-labelled or given to someone else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{WatchStreamExt, watcher};
use labgate_policies::{LAB_SELECTOR, Lab, LabError};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::reload::FileStamps;

/// What the index knows about a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabEntry {
    /// A well-formed lab.
    Lab(Lab),
    /// Marked as a lab but its owner record is broken: nobody is admitted.
    Malformed(LabError),
}

/// The in-memory index. Share it as `Arc<LabIndex>`.
pub struct LabIndex {
    // A std lock: lookups are a hash probe and never held across an await.
    labs: RwLock<HashMap<String, Arc<LabEntry>>>,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
}

impl LabIndex {
    /// An empty, not-yet-ready index.
    pub fn new(metrics: Arc<Metrics>) -> Arc<LabIndex> {
        Arc::new(LabIndex {
            labs: RwLock::new(HashMap::new()),
            ready: watch::channel(false).0,
            changes: broadcast::channel(1024).0,
            metrics,
        })
    }

    /// The entry for a namespace, if it is a lab.
    pub fn get(&self, namespace: &str) -> Option<Arc<LabEntry>> {
        self.labs.read().ok()?.get(namespace).cloned()
    }

    /// Number of namespaces in the index.
    pub fn len(&self) -> usize {
        self.labs.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first full list has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the first full list has been loaded.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Names of namespaces whose entry changed or disappeared. A lagging
    /// receiver must re-check every session it guards.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// Replaces the whole index (after a full list) and marks it ready.
    pub fn replace_all(&self, fresh: HashMap<String, LabEntry>) {
        let mut changed = Vec::new();
        if let Ok(mut labs) = self.labs.write() {
            for (ns, old) in labs.iter() {
                if fresh.get(ns) != Some(old.as_ref()) {
                    changed.push(ns.clone());
                }
            }
            for ns in fresh.keys() {
                if !labs.contains_key(ns) {
                    changed.push(ns.clone());
                }
            }
            *labs = fresh.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
            self.metrics.index_labs.set(labs.len() as i64);
        }
        for ns in changed {
            let _ = self.changes.send(ns.into());
        }
        self.ready.send_replace(true);
    }

    /// Inserts or updates one namespace.
    pub fn upsert(&self, namespace: &str, entry: LabEntry) {
        let changed = match self.labs.write() {
            Ok(mut labs) => {
                let changed = labs.get(namespace).map(|e| e.as_ref()) != Some(&entry);
                labs.insert(namespace.to_string(), Arc::new(entry));
                self.metrics.index_labs.set(labs.len() as i64);
                changed
            }
            Err(_) => false,
        };
        if changed {
            let _ = self.changes.send(namespace.into());
        }
    }

    /// Removes one namespace.
    pub fn remove(&self, namespace: &str) {
        let removed = match self.labs.write() {
            Ok(mut labs) => {
                let removed = labs.remove(namespace).is_some();
                self.metrics.index_labs.set(labs.len() as i64);
                removed
            }
            Err(_) => false,
        };
        if removed {
            let _ = self.changes.send(namespace.into());
        }
    }
}

/// The index entry for a namespace object, or `None` when it is not (or no
/// longer) a lab. A namespace being deleted no longer grants access.
pub fn entry_for(ns: &Namespace) -> Option<LabEntry> {
    if ns.metadata.deletion_timestamp.is_some() {
        return None;
    }
    match Lab::from_namespace(ns) {
        Ok(lab) => Some(LabEntry::Lab(lab)),
        Err(LabError::NotALab) => None,
        Err(e) => Some(LabEntry::Malformed(e)),
    }
}

fn apply(index: &LabIndex, ns: &Namespace) {
    let Some(name) = ns.metadata.name.as_deref() else {
        return;
    };
    match entry_for(ns) {
        Some(entry) => index.upsert(name, entry),
        None => index.remove(name),
    }
}

/// Keeps `index` in sync with lab namespaces until the task is dropped.
///
/// `watch_timeout` is the server-side watch timeout; the watcher re-watches
/// from the last resourceVersion when it ends and relists after 410 Gone.
pub async fn watch_namespaces(client: kube::Client, index: Arc<LabIndex>, watch_timeout: Duration) {
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let config = watcher::Config::default()
        .labels(LAB_SELECTOR)
        .timeout(watch_timeout.as_secs().clamp(1, 290) as u32);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut initial: HashMap<String, LabEntry> = HashMap::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => initial.clear(),
            Ok(watcher::Event::InitApply(ns)) => {
                if let (Some(name), Some(entry)) = (ns.metadata.name.clone(), entry_for(&ns)) {
                    initial.insert(name, entry);
                }
            }
            Ok(watcher::Event::InitDone) => {
                index.replace_all(std::mem::take(&mut initial));
                tracing::info!(labs = index.len(), "lab index synced");
            }
            Ok(watcher::Event::Apply(ns)) => apply(&index, &ns),
            Ok(watcher::Event::Delete(ns)) => {
                if let Some(name) = ns.metadata.name.as_deref() {
                    index.remove(name);
                }
            }
            Err(e) => {
                index.metrics.index_watch_restarts.inc();
                tracing::warn!(error = %e, "lab namespace watch failed; retrying");
            }
        }
    }
}

/// A static labs file, for VMs outside Kubernetes and the demo:
///
/// ```yaml
/// labs:
///   - namespace: lab-1
///     owner: alice@example.com
///     members: [bob@example.com]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabsFile {
    /// The labs.
    pub labs: Vec<LabsFileEntry>,
}

/// One lab of a [`LabsFile`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabsFileEntry {
    /// Namespace (lab) name.
    pub namespace: String,
    /// Owner user id.
    pub owner: String,
    /// Other users admitted.
    #[serde(default)]
    pub members: Vec<String>,
}

/// Errors reading a labs file.
#[derive(Debug, thiserror::Error)]
pub enum LabsFileError {
    #[error("reading labs file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing labs file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
}

/// Reads a labs file into index entries.
///
/// # Errors
/// [`LabsFileError`] when the file cannot be read or parsed.
pub fn load_labs_file(path: &Path) -> Result<HashMap<String, LabEntry>, LabsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabsFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: LabsFile = serde_yaml::from_str(&text).map_err(|source| LabsFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file
        .labs
        .into_iter()
        .map(|l| {
            let lab = Lab {
                namespace: l.namespace.clone(),
                owner: l.owner,
                members: l.members,
            };
            (l.namespace, LabEntry::Lab(lab))
        })
        .collect())
}

/// Keeps `index` equal to a labs file, reloading it when it changes. A file
/// that fails to parse leaves the previous contents in place.
pub async fn watch_labs_file(path: PathBuf, index: Arc<LabIndex>, interval: Duration) {
    let mut stamps = FileStamps::new([&path]);
    match load_labs_file(&path) {
        Ok(labs) => index.replace_all(labs),
        Err(e) => tracing::error!(error = %e, "labs file not loaded"),
    }
    loop {
        tokio::time::sleep(interval).await;
        if stamps.changed() {
            match load_labs_file(&path) {
                Ok(labs) => {
                    index.replace_all(labs);
                    tracing::info!(labs = index.len(), "labs file reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "labs file reload failed; keeping the previous labs")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(ns: &str, owner: &str) -> LabEntry {
        LabEntry::Lab(Lab {
            namespace: ns.into(),
            owner: owner.into(),
            members: vec![],
        })
    }

    #[tokio::test]
    async fn changes_are_broadcast_and_ready_latches() {
        let index = LabIndex::new(Arc::new(Metrics::new()));
        let mut rx = index.subscribe();
        assert!(!index.is_ready());
        index.replace_all(HashMap::from([("a".to_string(), lab("a", "alice"))]));
        assert!(index.is_ready());
        assert_eq!(&*rx.recv().await.unwrap(), "a");
        // Same content: no notification.
        index.upsert("a", lab("a", "alice"));
        index.upsert("a", lab("a", "bob"));
        assert_eq!(&*rx.recv().await.unwrap(), "a");
        index.remove("a");
        assert_eq!(&*rx.recv().await.unwrap(), "a");
        assert!(index.get("a").is_none());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn labs_file_parses_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labs.yaml");
        std::fs::write(
            &p,
            "labs:\n  - namespace: lab-1\n    owner: a@x\n    members: [b@x]\n",
        )
        .unwrap();
        let labs = load_labs_file(&p).unwrap();
        match labs["lab-1"].clone() {
            LabEntry::Lab(l) => assert!(l.admits("b@x") && l.admits("a@x") && !l.admits("c@x")),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, "labs:\n  - namespace: lab-1\n    ownr: a@x\n").unwrap();
        assert!(matches!(
            load_labs_file(&p),
            Err(LabsFileError::Parse { .. })
        ));
    }
}
