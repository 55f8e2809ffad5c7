//! The lab-ownership index: namespace → owner and members, in memory.
//!
//! Fed by the namespace watch ([`crate::namespace_watch`]) over namespaces
//! labelled `labgate.io/lab=true` (or by a static labs file for VMs outside
//! Kubernetes and for the demo). Exempt namespaces (Kubernetes' own, the
//! gateway's, `--exempt-namespaces`) are never labs, whatever their labels.
//! Lookups never call the API server. Every change to a lab is broadcast so
//! that live sessions into it can re-check their grant and close at once when
//! the lab is deleted, un-labelled or given to someone else.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use labgate_policies::{Lab, LabError};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::reload::FileStamps;

pub use crate::namespace_watch::watch_namespaces;

/// What the index knows about a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabEntry {
    /// A well-formed lab.
    Lab(Lab),
    /// Marked as a lab but its owner record is broken: nobody is admitted.
    Malformed(LabError),
}

/// Which namespaces may be labs, and how old the index may grow.
#[derive(Debug, Clone, Default)]
pub struct IndexPolicy {
    /// Namespaces never indexed as labs whatever their labels (the gateway's
    /// own, and any configured); Kubernetes' own namespaces always are too.
    pub exempt: HashSet<String>,
    /// `/readyz` fails once the watch has been unhealthy this long.
    pub unready_after: Option<Duration>,
    /// New sessions are refused (4015) once the watch has been unhealthy this long.
    pub refuse_after: Option<Duration>,
}

/// Whether the source feeding the index is healthy, for the staleness bounds.
struct Health {
    /// Set by [`LabIndex::watch_opened`]: a source that can go stale feeds the index.
    tracked: bool,
    /// A watch stream is open: the index is current.
    open: bool,
    /// When the index was last known current (list done, or watch closed).
    last_healthy: Instant,
}

/// The in-memory index. Share it as `Arc<LabIndex>`.
pub struct LabIndex {
    // A std lock: lookups are a hash probe and never held across an await.
    labs: RwLock<HashMap<String, Arc<LabEntry>>>,
    /// Namespaces marked as labs that admit nobody, and why (metric label).
    problems: Mutex<HashMap<String, &'static str>>,
    health: Mutex<Health>,
    policy: IndexPolicy,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
}

/// The `reason` label of a namespace that is marked as a lab but admits nobody.
fn problem_label(error: &LabError) -> &'static str {
    match error {
        LabError::NotALab => "not_a_lab",
        LabError::MissingOwner => "missing_owner",
        LabError::OwnerHashMismatch => "owner_hash_mismatch",
        LabError::BadMembers => "bad_members",
        LabError::SystemNamespace => "exempt",
    }
}

impl LabIndex {
    /// An empty, not-yet-ready index with no exemptions and no staleness bounds.
    pub fn new(metrics: Arc<Metrics>) -> Arc<LabIndex> {
        LabIndex::with_policy(metrics, IndexPolicy::default())
    }

    /// An empty, not-yet-ready index with `policy`.
    pub fn with_policy(metrics: Arc<Metrics>, policy: IndexPolicy) -> Arc<LabIndex> {
        Arc::new(LabIndex {
            labs: RwLock::new(HashMap::new()),
            problems: Mutex::new(HashMap::new()),
            health: Mutex::new(Health {
                tracked: false,
                open: false,
                last_healthy: Instant::now(),
            }),
            policy,
            ready: watch::channel(false).0,
            changes: broadcast::channel(1024).0,
            metrics,
        })
    }

    /// The entry for a namespace, if it is a lab.
    pub fn get(&self, namespace: &str) -> Option<Arc<LabEntry>> {
        self.labs.read().ok()?.get(namespace).cloned()
    }

    /// The well-formed labs' namespaces.
    pub fn lab_namespaces(&self) -> Vec<String> {
        self.labs
            .read()
            .map(|labs| {
                labs.iter()
                    .filter(|(_, e)| matches!(e.as_ref(), LabEntry::Lab(_)))
                    .map(|(ns, _)| ns.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of namespaces in the index.
    pub fn len(&self) -> usize {
        self.labs.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether grants may be decided from the index: the first full list
    /// has been loaded and the watch has not been failing for longer than
    /// the refuse bound.
    pub fn is_ready(&self) -> bool {
        self.is_synced()
            && self
                .policy
                .refuse_after
                .is_none_or(|bound| self.staleness() < bound)
    }

    /// Whether the first full list has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.ready.borrow()
    }

    /// What `/readyz` reports: `Err(why)` before the first list or once the
    /// watch has been failing for longer than the unready bound.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_synced() {
            return Err("lab index not synced yet".into());
        }
        let stale = self.staleness();
        match self.policy.unready_after {
            Some(bound) if stale >= bound => Err(format!(
                "lab index stale: the namespace watch has been failing for {}s",
                stale.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// How long the watch has been unhealthy: zero while a watch stream is
    /// open (quiet or not) or for a source that cannot go stale.
    pub fn staleness(&self) -> Duration {
        match self.health.lock() {
            Ok(h) if h.tracked && !h.open => h.last_healthy.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// A watch stream is open: the index is current until it closes.
    pub fn watch_opened(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.tracked = true;
            h.open = true;
            h.last_healthy = Instant::now();
        }
    }

    /// The watch stream closed (or a request failed): staleness runs from
    /// the last moment the index was current.
    pub fn watch_closed(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.tracked = true;
            if h.open {
                h.open = false;
                h.last_healthy = Instant::now();
            }
        }
    }

    /// A full list was loaded: the index is current now.
    pub fn listed(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.last_healthy = Instant::now();
        }
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

    /// Whether `namespace` may never be a lab here.
    pub fn is_exempt(&self, namespace: &str) -> bool {
        labgate_policies::is_system_namespace(namespace) || self.policy.exempt.contains(namespace)
    }

    /// Filters an entry through the exemptions and records why a namespace
    /// marked as a lab admits nobody (logged once per namespace and reason).
    fn screen(&self, namespace: &str, entry: Option<LabEntry>) -> Option<LabEntry> {
        let (entry, problem) = match entry {
            Some(_) if self.is_exempt(namespace) => (None, Some("exempt")),
            Some(LabEntry::Malformed(e)) => {
                let label = problem_label(&e);
                (Some(LabEntry::Malformed(e)), Some(label))
            }
            other => (other, None),
        };
        if let Ok(mut problems) = self.problems.lock() {
            let before = problems.get(namespace).copied();
            match problem {
                Some(label) => {
                    problems.insert(namespace.to_string(), label);
                }
                None => {
                    problems.remove(namespace);
                }
            }
            if before != problem {
                if let Some(label) = problem {
                    let why = match &entry {
                        Some(LabEntry::Malformed(e)) => e.to_string(),
                        _ => "the namespace is exempt (Kubernetes' own, the gateway's, or --exempt-namespaces)".into(),
                    };
                    tracing::warn!(
                        namespace,
                        reason = label,
                        "namespace marked as a lab admits nobody: {why}"
                    );
                }
                self.count_problems(&problems);
            }
        }
        entry
    }

    fn count_problems(&self, problems: &HashMap<String, &'static str>) {
        for label in [
            "missing_owner",
            "owner_hash_mismatch",
            "bad_members",
            "exempt",
        ] {
            let n = problems.values().filter(|l| **l == label).count();
            self.metrics
                .index_malformed_labs
                .with_label_values(&[label])
                .set(n as i64);
        }
    }

    /// Replaces the whole index (after a full list) and marks it ready.
    pub fn replace_all(&self, fresh: HashMap<String, LabEntry>) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.retain(|ns, _| fresh.contains_key(ns));
            self.count_problems(&problems);
        }
        let fresh: HashMap<String, LabEntry> = fresh
            .into_iter()
            .filter_map(|(ns, entry)| {
                let entry = self.screen(&ns, Some(entry))?;
                Some((ns, entry))
            })
            .collect();
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
        let Some(entry) = self.screen(namespace, Some(entry)) else {
            self.remove_entry(namespace);
            return;
        };
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
        self.screen(namespace, None);
        self.remove_entry(namespace);
    }

    fn remove_entry(&self, namespace: &str) {
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

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
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

/// The gateway's own namespace when it runs in a pod: `POD_NAMESPACE` (set
/// from the downward API) or the service-account mount's namespace file.
pub fn own_namespace() -> Option<String> {
    const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok())
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
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
    fn exempt_namespaces_are_never_indexed_and_problems_are_counted_once() {
        let metrics = Arc::new(Metrics::new());
        let index = LabIndex::with_policy(
            metrics.clone(),
            IndexPolicy {
                exempt: HashSet::from(["labgate".to_string()]),
                ..IndexPolicy::default()
            },
        );
        let gauge = |reason: &str| {
            metrics
                .index_malformed_labs
                .with_label_values(&[reason])
                .get()
        };
        index.replace_all(HashMap::from([
            ("kube-system".to_string(), lab("kube-system", "alice")),
            ("labgate".to_string(), lab("labgate", "alice")),
            ("lab-a".to_string(), lab("lab-a", "alice")),
        ]));
        assert!(index.get("kube-system").is_none() && index.get("labgate").is_none());
        assert!(index.get("lab-a").is_some());
        assert_eq!(gauge("exempt"), 2);
        // The same problem again (a relist, a re-sent event) is not counted twice.
        index.upsert("labgate", lab("labgate", "bob"));
        index.upsert("lab-b", LabEntry::Malformed(LabError::BadMembers));
        index.upsert("lab-b", LabEntry::Malformed(LabError::BadMembers));
        assert_eq!((gauge("exempt"), gauge("bad_members")), (2, 1));
        // Repaired or gone: no longer counted.
        index.upsert("lab-b", lab("lab-b", "alice"));
        index.remove("kube-system");
        assert_eq!((gauge("exempt"), gauge("bad_members")), (1, 0));
    }

    #[test]
    fn staleness_counts_only_while_no_watch_is_open() {
        let index = LabIndex::with_policy(
            Arc::new(Metrics::new()),
            IndexPolicy {
                unready_after: Some(Duration::from_millis(20)),
                refuse_after: Some(Duration::from_millis(40)),
                ..IndexPolicy::default()
            },
        );
        index.replace_all(HashMap::new());
        index.watch_opened();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            index.staleness(),
            Duration::ZERO,
            "an open watch is current"
        );
        assert!(index.readiness().is_ok() && index.is_ready());
        index.watch_closed();
        std::thread::sleep(Duration::from_millis(25));
        assert!(index.readiness().unwrap_err().contains("stale"));
        assert!(index.is_ready(), "still granting below the refuse bound");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!index.is_ready());
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
