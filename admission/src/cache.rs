//! Watch-fed cache of namespaces and isolation policies: the decision's only input from the cluster.
//!
//! Two reflectors keep local copies, so admission never calls the API server on
//! the request path. The cache is ready after both have listed once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use labgate_policies::lab::is_lab;
use labgate_policies::{EgressMode, ISOLATION_POLICY_NAME};
use tokio_util::sync::CancellationToken;

use crate::decide::{ClusterView, NamespaceState, PolicyState};
use crate::metrics::Metrics;

/// Field selector for the isolation policies across all namespaces.
pub fn policy_field_selector() -> String {
    format!("metadata.name={ISOLATION_POLICY_NAME}")
}

/// The cluster view used by the webhook.
#[derive(Clone)]
pub struct Cache {
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    egress: EgressMode,
    ready: Arc<AtomicBool>,
}

impl Cache {
    /// Starts the watches (they retry with backoff until `shutdown`).
    pub fn start(
        client: Client,
        egress: EgressMode,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Cache {
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let (policies, np_writer) = reflector::store::<NetworkPolicy>();
        // All namespaces, not only labs: a namespace that stops being a lab must
        // read as "not a lab", and one never seen reads as "unknown".
        let ns_stream = watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(crate::watch_backoff::RelistBackoff::new())
        .modify(|ns| ns.managed_fields_mut().clear())
        .reflect(ns_writer);
        let np_config = watcher::Config::default().fields(&policy_field_selector());
        let np_stream = watcher(Api::<NetworkPolicy>::all(client), np_config)
            .backoff(crate::watch_backoff::RelistBackoff::new())
            .modify(|np| np.managed_fields_mut().clear())
            .reflect(np_writer);
        spawn_drain(ns_stream, "namespaces", metrics.clone(), shutdown.clone());
        spawn_drain(
            np_stream,
            "networkpolicies",
            metrics.clone(),
            shutdown.clone(),
        );

        let ready = Arc::new(AtomicBool::new(false));
        let cache = Cache {
            namespaces,
            policies,
            egress,
            ready: ready.clone(),
        };
        let (ns_reader, np_reader) = (cache.namespaces.clone(), cache.policies.clone());
        tokio::spawn(async move {
            let synced = async {
                ns_reader.wait_until_ready().await.is_ok()
                    && np_reader.wait_until_ready().await.is_ok()
            };
            tokio::select! {
                ok = synced => if ok {
                    ready.store(true, Ordering::SeqCst);
                    metrics.cache_ready.set(1);
                    tracing::info!("namespace and policy caches synced");
                },
                _ = shutdown.cancelled() => {}
            }
        });
        cache
    }

    /// Whether both caches have completed their first list.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Waits until [`Cache::is_ready`].
    pub async fn wait_ready(&self) {
        while !self.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn spawn_drain<S, T>(
    stream: S,
    resource: &'static str,
    metrics: Metrics,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    None => return,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        metrics.watch_errors.with_label_values(&[resource]).inc();
                        tracing::warn!(resource, error = %e, "watch error; retrying with backoff");
                    }
                },
            }
        }
    });
}

/// Classifies a namespace object.
pub fn namespace_state(ns: &Namespace) -> NamespaceState {
    if !is_lab(ns.labels()) {
        return NamespaceState::NotLab;
    }
    let phase_terminating = ns
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Terminating");
    NamespaceState::Lab {
        terminating: phase_terminating || ns.metadata.deletion_timestamp.is_some(),
    }
}

impl ClusterView for Cache {
    fn namespace(&self, name: &str) -> NamespaceState {
        if !self.is_ready() {
            return NamespaceState::Unknown;
        }
        match self.namespaces.get(&ObjectRef::new(name)) {
            Some(ns) => namespace_state(&ns),
            None => NamespaceState::Unknown,
        }
    }

    fn policy(&self, namespace: &str) -> PolicyState {
        match self
            .policies
            .get(&ObjectRef::new(ISOLATION_POLICY_NAME).within(namespace))
        {
            None => PolicyState::Missing,
            Some(p) if self.egress.is_canonical(p.spec.as_ref()) => PolicyState::Canonical,
            Some(_) => PolicyState::Drifted,
        }
    }

    fn ready(&self) -> bool {
        self.is_ready()
    }
}
