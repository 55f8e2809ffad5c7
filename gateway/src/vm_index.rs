//! The VM index: each lab's VirtualMachines and VirtualMachineInstances, in memory.
//!
//! Fed by [`crate::vm_watch`] (a cluster-wide list+watch of both kinds), read
//! by the lab listing (`GET /labs/{lab}`) and the screenshot pre-check, so
//! neither ever asks the API server: its load depends on how often VMs
//! change, not on how often portals poll.
//!
//! Bounded: only namespaces the [`LabIndex`] knows as well-formed labs are
//! kept, with a cap per lab and in total (`--vm-index-max-per-lab`,
//! `--vm-index-max-total`). A VM beyond a cap is left out, counted in
//! `labgate_gateway_vm_index_dropped_total{cap}` and logged once per lab.
//! Each VM keeps a few bytes (phase, two flags), never the object itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::index::{LabEntry, LabIndex};
use crate::metrics::Metrics;
use crate::upstream::UpstreamError;

/// A VM's state as the lab listing reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum VmPhase {
    /// The VMI runs (KubeVirt phase `Running`, no `Paused` condition).
    Running,
    /// The VMI runs but is paused (condition `Paused` = `True`).
    Paused,
    /// A VirtualMachine with no VMI: not started, or shut down.
    Stopped,
    /// The VMI is accepted but not scheduled yet (or has no phase yet).
    Pending,
    /// The VMI's pod is being scheduled.
    Scheduling,
    /// The VMI's pod is scheduled, the VM is starting.
    Scheduled,
    /// The VMI ended with a failure.
    Failed,
    /// The VMI ended normally (the guest shut down).
    Succeeded,
    /// KubeVirt lost track of the VMI (its node is unreachable), or a phase this gateway does not know.
    Unknown,
}

impl VmPhase {
    /// Maps a VMI's `status.phase` and whether its `Paused` condition is `True`.
    /// KubeVirt leaves the phase empty until the VMI is first handled: Pending.
    pub fn from_vmi(phase: &str, paused: bool) -> VmPhase {
        match phase {
            "Running" if paused => VmPhase::Paused,
            "Running" => VmPhase::Running,
            "" | "Pending" => VmPhase::Pending,
            "Scheduling" => VmPhase::Scheduling,
            "Scheduled" => VmPhase::Scheduled,
            "Failed" => VmPhase::Failed,
            "Succeeded" => VmPhase::Succeeded,
            _ => VmPhase::Unknown,
        }
    }
}

/// One VM of a lab listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmSummary {
    /// The VM (and VMI) name.
    pub name: String,
    /// Its state.
    pub phase: VmPhase,
    /// Whether it has a screen (a graphics device).
    pub screen: bool,
    /// Whether it has a serial console.
    pub console: bool,
}

/// Which of the two KubeVirt kinds an observation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `kubevirt.io/v1` VirtualMachineInstance: a VM that exists (running or not yet).
    Vmi,
    /// `kubevirt.io/v1` VirtualMachine: the VM's definition, present while it is stopped.
    Vm,
}

impl Source {
    /// The plural resource name (API path, metric label).
    pub fn resource(self) -> &'static str {
        match self {
            Source::Vmi => "virtualmachineinstances",
            Source::Vm => "virtualmachines",
        }
    }

    fn index(self) -> usize {
        match self {
            Source::Vmi => 0,
            Source::Vm => 1,
        }
    }
}

/// What the index keeps of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The VMI's phase; `None` for a VirtualMachine.
    pub phase: Option<VmPhase>,
    /// Graphics device attached (`autoattachGraphicsDevice` not `false`).
    pub screen: bool,
    /// Serial console attached (`autoattachSerialConsole` not `false`).
    pub console: bool,
}

impl Observed {
    /// Reads a VMI (`source = Vmi`) or a VM (`Vm`, devices from its template).
    /// KubeVirt attaches a graphics device and a serial console unless the
    /// spec sets the `autoattach…` field to `false` (both default to true).
    pub fn from_object(source: Source, object: &Value) -> Observed {
        let devices = match source {
            Source::Vmi => object.pointer("/spec/domain/devices"),
            Source::Vm => object.pointer("/spec/template/spec/domain/devices"),
        };
        let attached = |field: &str| {
            devices.and_then(|d| d.get(field)).and_then(Value::as_bool) != Some(false)
        };
        let phase = (source == Source::Vmi).then(|| {
            let phase = object
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let paused = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Paused")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                });
            VmPhase::from_vmi(phase, paused)
        });
        Observed {
            phase,
            screen: attached("autoattachGraphicsDevice"),
            console: attached("autoattachSerialConsole"),
        }
    }
}

/// A VM name's VMI and VM, as far as they exist.
#[derive(Debug, Clone, Default)]
struct Entry {
    vmi: Option<Observed>,
    vm: Option<Observed>,
}

impl Entry {
    fn slot(&mut self, source: Source) -> &mut Option<Observed> {
        match source {
            Source::Vmi => &mut self.vmi,
            Source::Vm => &mut self.vm,
        }
    }

    fn summary(&self, name: &str) -> Option<VmSummary> {
        // A VMI is the VM as it is now; a VM alone is a stopped VM.
        let (phase, seen) = match (&self.vmi, &self.vm) {
            (Some(vmi), _) => (vmi.phase.unwrap_or(VmPhase::Unknown), vmi),
            (None, Some(vm)) => (VmPhase::Stopped, vm),
            (None, None) => return None,
        };
        Some(VmSummary {
            name: name.to_string(),
            phase,
            screen: seen.screen,
            console: seen.console,
        })
    }
}

/// The caps of the index.
#[derive(Debug, Clone, Copy)]
pub struct VmIndexLimits {
    /// VM names kept per lab.
    pub per_lab: usize,
    /// VM names kept over all labs.
    pub total: usize,
}

impl Default for VmIndexLimits {
    fn default() -> Self {
        VmIndexLimits {
            per_lab: 500,
            total: 50_000,
        }
    }
}

#[derive(Default)]
struct Inner {
    labs: HashMap<String, BTreeMap<String, Entry>>,
    total: usize,
}

/// The in-memory VM index. Share it as `Arc<VmIndex>`.
pub struct VmIndex {
    labs: Arc<LabIndex>,
    limits: VmIndexLimits,
    // A std lock: never held across an await.
    inner: RwLock<Inner>,
    /// Whether each source has completed its first list.
    synced: [AtomicBool; 2],
    /// Per source, the labs there were when it last listed: a lab missing from
    /// either makes the watches relist ([`VmIndex::follow_labs`]).
    known_labs: [Mutex<HashSet<String>>; 2],
    /// (cap, lab) pairs already logged since the last full list.
    logged_caps: Mutex<HashSet<(&'static str, String)>>,
    /// Bumped when the watches must relist (a namespace became a lab).
    relist: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl VmIndex {
    /// An empty, not yet synced index keeping only labs that `labs` knows.
    pub fn new(labs: Arc<LabIndex>, limits: VmIndexLimits, metrics: Arc<Metrics>) -> Arc<VmIndex> {
        Arc::new(VmIndex {
            labs,
            limits,
            inner: RwLock::new(Inner::default()),
            synced: [AtomicBool::new(false), AtomicBool::new(false)],
            known_labs: [Mutex::new(HashSet::new()), Mutex::new(HashSet::new())],
            logged_caps: Mutex::new(HashSet::new()),
            relist: watch::channel(0).0,
            metrics,
        })
    }

    /// The lab-ownership index this one follows.
    pub fn lab_index(&self) -> &Arc<LabIndex> {
        &self.labs
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether both VMIs and VMs have been listed once.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    fn is_lab(&self, namespace: &str) -> bool {
        matches!(self.labs.get(namespace).as_deref(), Some(LabEntry::Lab(_)))
    }

    /// A lab's VMs, sorted by name; `None` before both kinds were listed once.
    pub fn summaries(&self, namespace: &str) -> Option<Vec<VmSummary>> {
        if !self.is_synced() {
            return None;
        }
        let inner = self.inner.read().ok()?;
        Some(
            inner
                .labs
                .get(namespace)
                .map(|vms| vms.iter().filter_map(|(name, e)| e.summary(name)).collect())
                .unwrap_or_default(),
        )
    }

    /// One VM's summary (`None`: not in the index).
    pub fn get(&self, namespace: &str, name: &str) -> Option<VmSummary> {
        let inner = self.inner.read().ok()?;
        inner.labs.get(namespace)?.get(name)?.summary(name)
    }

    /// Records (`Some`) or forgets (`None`) one object. Objects outside labs are ignored.
    pub fn apply(&self, source: Source, namespace: &str, name: &str, seen: Option<Observed>) {
        if seen.is_some() && !self.is_lab(namespace) {
            return;
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        self.apply_locked(&mut inner, source, namespace, name, seen);
        self.metrics.vm_index_vms.set(inner.total as i64);
    }

    fn apply_locked(
        &self,
        inner: &mut Inner,
        source: Source,
        namespace: &str,
        name: &str,
        seen: Option<Observed>,
    ) {
        let Inner { labs, total } = inner;
        match seen {
            Some(seen) => {
                let lab_len = labs.get(namespace).map_or(0, BTreeMap::len);
                let known = labs.get(namespace).is_some_and(|l| l.contains_key(name));
                if !known {
                    let cap = if lab_len >= self.limits.per_lab {
                        Some("per_lab")
                    } else if *total >= self.limits.total {
                        Some("total")
                    } else {
                        None
                    };
                    if let Some(cap) = cap {
                        self.cap_hit(cap, namespace);
                        return;
                    }
                    *total += 1;
                }
                *labs
                    .entry(namespace.to_string())
                    .or_default()
                    .entry(name.to_string())
                    .or_default()
                    .slot(source) = Some(seen);
            }
            None => {
                let Some(lab) = labs.get_mut(namespace) else {
                    return;
                };
                let Some(entry) = lab.get_mut(name) else {
                    return;
                };
                *entry.slot(source) = None;
                if entry.vmi.is_none() && entry.vm.is_none() {
                    lab.remove(name);
                    *total -= 1;
                    if lab.is_empty() {
                        labs.remove(namespace);
                    }
                }
            }
        }
    }

    fn cap_hit(&self, cap: &'static str, namespace: &str) {
        self.metrics
            .vm_index_dropped
            .with_label_values(&[cap])
            .inc();
        let first = self
            .logged_caps
            .lock()
            .map(|mut logged| logged.insert((cap, namespace.to_string())))
            .unwrap_or(false);
        if first {
            let limit = match cap {
                "per_lab" => self.limits.per_lab,
                _ => self.limits.total,
            };
            tracing::warn!(
                lab = namespace,
                cap,
                limit,
                "VM index full: VMs beyond the cap are left out of lab listings and screenshots \
                 (raise --vm-index-max-per-lab / --vm-index-max-total)"
            );
        }
    }

    /// A full list of `source` is about to be requested: the labs there are now
    /// will be in it; any lab that appears later makes it relist.
    pub fn begin_list(&self, source: Source) {
        let labs: HashSet<String> = self.labs.lab_namespaces().into_iter().collect();
        if let Ok(mut known) = self.known_labs[source.index()].lock() {
            *known = labs;
        }
    }

    fn is_known(&self, namespace: &str) -> bool {
        self.known_labs
            .iter()
            .all(|known| known.lock().is_ok_and(|k| k.contains(namespace)))
    }

    /// Replaces everything `source` said with a fresh full list and marks it synced.
    pub fn replace_all(&self, source: Source, fresh: Vec<(String, String, Observed)>) {
        if let Ok(mut logged) = self.logged_caps.lock() {
            logged.clear();
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        let stale: Vec<(String, String)> = inner
            .labs
            .iter()
            .flat_map(|(ns, vms)| {
                vms.iter().filter_map(move |(name, e)| {
                    let slot = match source {
                        Source::Vmi => &e.vmi,
                        Source::Vm => &e.vm,
                    };
                    slot.is_some().then(|| (ns.clone(), name.clone()))
                })
            })
            .collect();
        for (ns, name) in stale {
            self.apply_locked(&mut inner, source, &ns, &name, None);
        }
        for (ns, name, seen) in fresh {
            if self.is_lab(&ns) {
                self.apply_locked(&mut inner, source, &ns, &name, Some(seen));
            }
        }
        self.metrics.vm_index_vms.set(inner.total as i64);
        self.synced[source.index()].store(true, Ordering::Release);
    }

    /// Drops a namespace's VMs (it is no longer a lab).
    fn forget_lab(&self, namespace: &str) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(vms) = inner.labs.remove(namespace)
        {
            inner.total -= vms.len();
            self.metrics.vm_index_vms.set(inner.total as i64);
        }
    }

    /// Drops every namespace that is no longer a lab.
    fn forget_non_labs(&self) {
        let namespaces: Vec<String> = match self.inner.read() {
            Ok(inner) => inner.labs.keys().cloned().collect(),
            Err(_) => return,
        };
        for ns in namespaces {
            if !self.is_lab(&ns) {
                self.forget_lab(&ns);
            }
        }
    }

    /// Resolves when the watches must relist; the receiver starts "seen".
    pub fn relist_requests(&self) -> watch::Receiver<u64> {
        self.relist.subscribe()
    }

    /// Follows the lab index until dropped: a namespace that stops being a lab
    /// loses its VMs at once; one that becomes a lab makes both watches relist,
    /// since its VMs' events may have arrived (and been ignored) before.
    pub async fn follow_labs(self: Arc<VmIndex>) {
        let mut changes = self.labs.subscribe();
        loop {
            match changes.recv().await {
                Ok(ns) => {
                    if !self.is_lab(&ns) {
                        self.forget_lab(&ns);
                    } else if !self.is_known(&ns) {
                        self.relist.send_modify(|g| *g += 1);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.forget_non_labs();
                    self.relist.send_modify(|g| *g += 1);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// A lab's VMs for the KubeVirt backend's [`list_vms`](crate::upstream::Backend::list_vms).
///
/// # Errors
/// [`UpstreamError::NotReady`] before the first lists, [`UpstreamError::Unsupported`]
/// when the gateway runs without a VM index.
pub fn listing(index: Option<&VmIndex>, namespace: &str) -> Result<Vec<VmSummary>, UpstreamError> {
    index
        .ok_or(UpstreamError::Unsupported)?
        .summaries(namespace)
        .ok_or(UpstreamError::NotReady)
}

#[cfg(test)]
mod tests {
    use super::*;
    use labgate_policies::Lab;
    use serde_json::json;

    fn labs(names: &[&str]) -> Arc<LabIndex> {
        let index = LabIndex::new(Arc::new(Metrics::new()));
        index.replace_all(
            names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        LabEntry::Lab(Lab {
                            namespace: n.to_string(),
                            owner: "alice".into(),
                            members: vec![],
                        }),
                    )
                })
                .collect(),
        );
        index
    }

    fn running() -> Observed {
        Observed {
            phase: Some(VmPhase::Running),
            screen: true,
            console: true,
        }
    }

    #[test]
    fn phases_and_devices_follow_kubevirt_defaults() {
        let vmi = json!({"spec": {"domain": {"devices": {}}}, "status": {"phase": "Running"}});
        let seen = Observed::from_object(Source::Vmi, &vmi);
        assert_eq!(seen, running());
        let paused = json!({
            "spec": {"domain": {"devices": {"autoattachGraphicsDevice": false}}},
            "status": {"phase": "Running", "conditions": [{"type": "Paused", "status": "True"}]}
        });
        let seen = Observed::from_object(Source::Vmi, &paused);
        assert_eq!(seen.phase, Some(VmPhase::Paused));
        assert!(!seen.screen && seen.console);
        // A Paused condition that is not True does not pause.
        let resumed = json!({"status": {"phase": "Running", "conditions": [{"type": "Paused", "status": "False"}]}});
        assert_eq!(
            Observed::from_object(Source::Vmi, &resumed).phase,
            Some(VmPhase::Running)
        );
        assert_eq!(
            Observed::from_object(Source::Vmi, &json!({})).phase,
            Some(VmPhase::Pending)
        );
        assert_eq!(VmPhase::from_vmi("Migrating", false), VmPhase::Unknown);
        let vm = json!({"spec": {"template": {"spec": {"domain": {"devices": {"autoattachSerialConsole": false}}}}}});
        let seen = Observed::from_object(Source::Vm, &vm);
        assert_eq!((seen.phase, seen.screen, seen.console), (None, true, false));
    }

    #[test]
    fn a_vm_without_vmi_is_stopped_and_a_vmi_wins() {
        let index = VmIndex::new(
            labs(&["lab-a"]),
            VmIndexLimits::default(),
            Arc::new(Metrics::new()),
        );
        let vm = Observed {
            phase: None,
            screen: true,
            console: false,
        };
        index.replace_all(Source::Vm, vec![("lab-a".into(), "vm1".into(), vm)]);
        assert_eq!(
            index.summaries("lab-a"),
            None,
            "not synced before VMIs are listed"
        );
        index.replace_all(Source::Vmi, vec![]);
        let listed = index.summaries("lab-a").unwrap();
        assert_eq!(listed[0].phase, VmPhase::Stopped);
        index.apply(Source::Vmi, "lab-a", "vm1", Some(running()));
        assert_eq!(index.get("lab-a", "vm1").unwrap().phase, VmPhase::Running);
        index.apply(Source::Vmi, "lab-a", "vm1", None);
        assert_eq!(index.get("lab-a", "vm1").unwrap().phase, VmPhase::Stopped);
        index.apply(Source::Vm, "lab-a", "vm1", None);
        assert_eq!(index.summaries("lab-a"), Some(vec![]));
    }

    #[test]
    fn only_labs_are_kept_and_caps_hold() {
        let metrics = Arc::new(Metrics::new());
        let limits = VmIndexLimits {
            per_lab: 2,
            total: 3,
        };
        let index = VmIndex::new(labs(&["lab-a", "lab-b"]), limits, metrics.clone());
        index.replace_all(Source::Vm, vec![]);
        index.replace_all(
            Source::Vmi,
            ["x", "y", "z"]
                .iter()
                .map(|n| ("lab-a".to_string(), n.to_string(), running()))
                .chain([("elsewhere".to_string(), "v".to_string(), running())])
                .collect(),
        );
        assert_eq!(index.summaries("lab-a").unwrap().len(), 2);
        assert_eq!(index.summaries("elsewhere"), Some(vec![]));
        index.apply(Source::Vmi, "lab-b", "p", Some(running()));
        index.apply(Source::Vmi, "lab-b", "q", Some(running()));
        assert_eq!(index.summaries("lab-b").unwrap().len(), 1, "total cap");
        // Updating a kept VM is not a new VM.
        index.apply(Source::Vm, "lab-a", "x", Some(running()));
        let dropped = |cap: &str| metrics.vm_index_dropped.with_label_values(&[cap]).get();
        assert_eq!((dropped("per_lab"), dropped("total")), (1, 1));
        assert_eq!(metrics.vm_index_vms.get(), 3);
    }
}
