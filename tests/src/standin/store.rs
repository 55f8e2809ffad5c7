//! The object store: every object as JSON, one global resourceVersion counter, and the bounded
//! change history that watches resume from.
//!
//! Writes go through [`Store::commit`], which stamps `resourceVersion` (and `uid`/`creationTimestamp`
//! on creation), appends to the history and wakes live watches, all under the caller's lock.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How many changes a watch can resume across before it gets `410 Expired`.
const HISTORY_LIMIT: usize = 10_000;

/// Where an object lives. The version is not part of the key: `v1` and `v1alpha3` share objects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub resource: String,
    /// `""` for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

/// One committed write: `old` is `None` for creations, `new` is `None` for deletions.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub key: ObjectKey,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

pub struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    /// The global resourceVersion: the RV of the last write or compaction.
    rv: u64,
    history: VecDeque<Arc<Change>>,
    /// Watches and continue tokens from an RV below this are too old.
    oldest_resumable: u64,
    live: broadcast::Sender<Arc<Change>>,
}

/// Where a watch starts: everything it must replay plus the receiver for what follows.
pub struct Subscription {
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
}

impl Store {
    pub fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            oldest_resumable: 1,
            live: broadcast::channel(4096).0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn oldest_resumable(&self) -> u64 {
        self.oldest_resumable
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource, in key order, optionally within one namespace and after a key.
    ///
    /// A range of the ordered map, not a scan of every object: a page of a list (`continue`)
    /// starts right after its last key, as the API server's watch cache and etcd serve it, so
    /// listing 100,000 namespaces in pages costs what the pages hold.
    pub fn list<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        after: Option<&'a ObjectKey>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Value)> + 'a {
        let first = ObjectKey {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        let start = match after {
            Some(key) if *key >= first => Bound::Excluded(key.clone()),
            _ => Bound::Included(first),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| {
                k.group == group
                    && k.resource == resource
                    && namespace.is_none_or(|ns| k.namespace == ns)
            })
    }

    /// Every object in a namespace, whatever its resource.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(ObjectKey, Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.namespace == namespace)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes (`Some`) or deletes (`None`) an object; returns the stored object with its new RV
    /// (for deletions: the last state, stamped with the deletion's RV, as watches see it).
    pub fn commit(&mut self, key: ObjectKey, new: Option<Value>) -> Option<Value> {
        self.rv += 1;
        let rv = self.rv;
        let old = self.objects.get(&key).cloned();
        let stored = match new {
            Some(mut obj) => {
                stamp(&mut obj, old.as_ref(), rv);
                self.objects.insert(key.clone(), obj.clone());
                Some(obj)
            }
            None => {
                self.objects.remove(&key);
                None
            }
        };
        let change = Arc::new(Change {
            rv,
            key,
            old: old.clone(),
            new: stored.clone(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_resumable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(change);
        stored.or_else(|| {
            old.map(|mut o| {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                o
            })
        })
    }

    /// Forgets the history. The RV moves on (as it would on a busy cluster) so that every RV a
    /// client has seen so far is now too old to resume from.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.oldest_resumable = self.rv;
    }

    /// Changes after `rv` plus a receiver for later ones, or `Err(oldest)` if `rv` is too old.
    pub fn subscribe_from(&self, rv: u64) -> Result<Subscription, u64> {
        if rv < self.oldest_resumable {
            return Err(self.oldest_resumable);
        }
        Ok(Subscription {
            replay: self.history.iter().filter(|c| c.rv > rv).cloned().collect(),
            live: self.live.subscribe(),
        })
    }

    /// A receiver for changes after the current RV.
    pub fn subscribe_now(&self) -> broadcast::Receiver<Arc<Change>> {
        self.live.subscribe()
    }
}

/// Sets the server-owned metadata: RV always; uid/creationTimestamp/generation on create; keeps
/// the immutable fields of the previous version on update.
fn stamp(obj: &mut Value, old: Option<&Value>, rv: u64) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    match old {
        Some(old) => {
            for field in ["uid", "creationTimestamp"] {
                if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                    meta[field] = v.clone();
                }
            }
            if let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64) {
                let spec_changed = old.get("spec") != obj.get("spec");
                obj["metadata"]["generation"] = json!(if spec_changed { g + 1 } else { g });
            }
        }
        None => {
            if meta
                .get("uid")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                meta["uid"] = json!(new_uid());
            }
            if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                meta["creationTimestamp"] = json!(now_rfc3339());
            }
            let is_namespace = obj.get("kind").and_then(Value::as_str) == Some("Namespace");
            if !is_namespace
                && obj.get("spec").is_some()
                && obj["metadata"].get("generation").is_none()
            {
                obj["metadata"]["generation"] = json!(1);
            }
        }
    }
}

/// A random RFC 4122 version-4 UID.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// Now, in the seconds-precision RFC 3339 form the API server uses.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: name.into(),
        }
    }

    #[test]
    fn commit_stamps_and_records_history() {
        let mut store = Store::new();
        let a = store
            .commit(key("a"), Some(json!({"metadata": {"name": "a"}})))
            .unwrap();
        let rv_a: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let uid = a["metadata"]["uid"].clone();
        let a2 = store
            .commit(
                key("a"),
                Some(json!({"metadata": {"name": "a", "uid": "forged"}})),
            )
            .unwrap();
        assert_eq!(a2["metadata"]["uid"], uid, "uid is immutable");
        let deleted = store.commit(key("a"), None).unwrap();
        assert_eq!(
            deleted["metadata"]["resourceVersion"],
            json!(store.resource_version().to_string())
        );
        let sub = store.subscribe_from(rv_a).unwrap();
        assert_eq!(sub.replay.len(), 2);
        store.compact();
        assert_eq!(
            store.subscribe_from(rv_a).err(),
            Some(store.resource_version())
        );
    }

    #[test]
    fn list_is_the_resource_range_after_a_key() {
        let mut store = Store::new();
        let pod = |ns: &str, name: &str| ObjectKey {
            group: String::new(),
            resource: "pods".into(),
            namespace: ns.into(),
            name: name.into(),
        };
        for k in [key("a"), key("b"), key("c")] {
            store.commit(k, Some(json!({})));
        }
        for k in [
            pod("x", "p1"),
            pod("y", "p2"),
            pod("y", "p3"),
            pod("z", "p4"),
        ] {
            store.commit(k, Some(json!({})));
        }
        let names = |it: &mut dyn Iterator<Item = (&ObjectKey, &Value)>| {
            it.map(|(k, _)| k.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            names(&mut store.list("", "namespaces", None, None)),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(&mut store.list("", "namespaces", None, Some(&key("a")))),
            ["b", "c"]
        );
        assert_eq!(
            names(&mut store.list("", "pods", Some("y"), None)),
            ["p2", "p3"]
        );
        assert_eq!(
            names(&mut store.list("", "pods", Some("y"), Some(&pod("y", "p2")))),
            ["p3"]
        );
        // A position before the namespace starts at the namespace's first object.
        assert_eq!(
            names(&mut store.list("", "pods", Some("y"), Some(&pod("x", "p1")))),
            ["p2", "p3"]
        );
        assert_eq!(names(&mut store.list("", "pods", None, None)).len(), 4);
        assert!(names(&mut store.list("apps", "pods", None, None)).is_empty());
    }

    #[test]
    fn uid_looks_like_a_uuid() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }
}
