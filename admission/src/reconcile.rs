//! Reconciler: server-side applies the canonical isolation policy in every lab namespace.
//!
//! A kube-runtime Controller over lab namespaces also watches the isolation
//! policies and maps each to its namespace *by name*, so stripping owner
//! references cannot hide a deletion or an edit from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use labgate_policies::lab::is_lab;
use labgate_policies::{EgressMode, ISOLATION_POLICY_NAME, LAB_SELECTOR};
use tokio_util::sync::CancellationToken;

use crate::cache::{namespace_state, policy_field_selector};
use crate::decide::NamespaceState;
use crate::metrics::Metrics;

/// Field manager of every write the reconciler makes.
pub const FIELD_MANAGER: &str = "labgate-admission";

/// Periodic re-check of every lab even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// First retry delay after an error; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// An API error the reconciler will retry.
#[derive(Debug, thiserror::Error)]
#[error("{action} NetworkPolicy {ISOLATION_POLICY_NAME} in {namespace:?}: {source}")]
pub struct ReconcileError {
    namespace: String,
    action: &'static str,
    #[source]
    source: kube::Error,
}

impl ReconcileError {
    fn kind(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(s) if s.is_forbidden() => "forbidden",
            kube::Error::Api(s) if s.is_conflict() => "conflict",
            kube::Error::Api(s) if s.code == 422 => "invalid",
            kube::Error::Api(s) if s.code >= 500 => "server",
            kube::Error::Api(_) => "api",
            _ => "transport",
        }
    }
}

/// Shared state of the reconcile loop.
pub struct Context {
    client: Client,
    egress: EgressMode,
    metrics: Metrics,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// `--service-namespace` and `--exempt-namespace` (besides `default`, `kube-*`).
    exempt: Vec<String>,
}

impl Context {
    /// Builds the context; events are reported as controller `labgate-admission`
    /// with instance `$POD_NAME` when set.
    pub fn new(
        client: Client,
        egress: EgressMode,
        metrics: Metrics,
        exempt: Vec<String>,
    ) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            egress,
            metrics,
            failures: Mutex::new(HashMap::new()),
            exempt,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn event(&self, namespace: &str, type_: EventType, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            name: Some(ISOLATION_POLICY_NAME.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "ApplyIsolationPolicy".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(namespace, error = %e, "could not publish event");
        }
    }
}

/// What the reconciler wants the policy to look like.
pub fn desired_policy(egress: EgressMode, namespace: &str) -> NetworkPolicy {
    egress.policy(namespace)
}

/// Whether `current` already is the desired object (spec and our labels).
fn up_to_date(current: &NetworkPolicy, desired: &NetworkPolicy, egress: EgressMode) -> bool {
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| current.labels().get(k) == Some(v));
    labels_ok && egress.is_canonical(current.spec.as_ref())
}

/// "unable to create new content in namespace X because it is being terminated"
fn is_terminating_error(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_forbidden() && s.message.contains("being terminated"))
}

/// Brings one namespace's isolation policy to the canonical state.
///
/// # Errors
/// [`ReconcileError`] on API errors worth a retry.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = ns.name_any();
    let action = |a: &str| ctx.metrics.reconcile_actions.with_label_values(&[a]).inc();
    if !is_lab(ns.labels()) {
        action("skipped-not-lab");
        return Ok(Action::await_change());
    }
    // A marking forced onto a system or exempt namespace is never acted on:
    // isolating kube-system cuts cluster DNS, the service's own namespace the webhook.
    if labgate_policies::lab::is_system_namespace(&name) || ctx.exempt.contains(&name) {
        action("skipped-exempt");
        return Ok(Action::await_change());
    }
    if matches!(
        namespace_state(&ns),
        NamespaceState::Lab { terminating: true }
    ) {
        action("skipped-terminating");
        return Ok(Action::await_change());
    }
    let api = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &name);
    let desired = desired_policy(ctx.egress, &name);
    let current = api
        .get_opt(ISOLATION_POLICY_NAME)
        .await
        .map_err(|source| ReconcileError {
            namespace: name.clone(),
            action: "read",
            source,
        })?;
    if current
        .as_ref()
        .is_some_and(|c| up_to_date(c, &desired, ctx.egress))
    {
        ctx.failures().remove(&name);
        action("unchanged");
        return Ok(Action::requeue(RESYNC));
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch(ISOLATION_POLICY_NAME, &params, &Patch::Apply(&desired))
        .await
    {
        Ok(_) => {}
        Err(e) if is_terminating_error(&e) => {
            action("skipped-terminating");
            return Ok(Action::await_change());
        }
        Err(source) => {
            let err = ReconcileError {
                namespace: name.clone(),
                action: "apply",
                source,
            };
            ctx.event(
                &name,
                EventType::Warning,
                "IsolationPolicyApplyFailed",
                err.to_string(),
            )
            .await;
            return Err(err);
        }
    }
    ctx.failures().remove(&name);
    let (verb, reason, note) = if current.is_none() {
        (
            "created",
            "IsolationPolicyCreated",
            "created the canonical isolation NetworkPolicy",
        )
    } else {
        (
            "repaired",
            "IsolationPolicyRepaired",
            "restored the canonical spec of the isolation NetworkPolicy",
        )
    };
    action(verb);
    tracing::info!(namespace = %name, action = verb, "isolation policy applied");
    ctx.event(
        &name,
        EventType::Normal,
        reason,
        format!("{note} {ISOLATION_POLICY_NAME}"),
    )
    .await;
    Ok(Action::requeue(RESYNC))
}

/// Exponential backoff per namespace after an error.
pub fn error_policy(ns: Arc<Namespace>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[err.kind()])
        .inc();
    let attempts = {
        let mut failures = ctx.failures();
        let n = failures.entry(ns.name_any()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << attempts.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::warn!(error = %err, attempts, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    egress: EgressMode,
    metrics: Metrics,
    exempt: Vec<String>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Context::new(client.clone(), egress, metrics, exempt));
    let namespaces = Api::<Namespace>::all(client.clone());
    let policies = Api::<NetworkPolicy>::all(client);
    Controller::new(namespaces, watcher::Config::default().labels(LAB_SELECTOR))
        .watches(
            policies,
            watcher::Config::default().fields(&policy_field_selector()),
            |np: NetworkPolicy| np.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        // Relist at once after a 410 or a failed re-watch (see watch_backoff).
        .trigger_backoff(crate::watch_backoff::RelistBackoff::new())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_namespace_errors_are_terminal_others_retried() {
        let status = |code, reason: &str, message: &str| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure(message, reason).with_code(code),
            ))
        };
        let terminating = status(
            403,
            "Forbidden",
            "networkpolicies \"labgate-isolation\" is forbidden: unable to create new content in \
             namespace lab-1 because it is being terminated",
        );
        assert!(is_terminating_error(&terminating));
        assert!(!is_terminating_error(&status(
            403,
            "Forbidden",
            "RBAC: access denied"
        )));
        assert!(!is_terminating_error(&status(
            500,
            "InternalError",
            "being terminated"
        )));
        let err = ReconcileError {
            namespace: "lab-1".into(),
            action: "apply",
            source: status(500, "InternalError", "x"),
        };
        assert_eq!(err.kind(), "server");
    }

    #[test]
    fn up_to_date_needs_spec_and_labels() {
        let desired = desired_policy(EgressMode::Standard, "lab-1");
        assert!(up_to_date(&desired, &desired, EgressMode::Standard));
        let mut unlabelled = desired.clone();
        unlabelled.metadata.labels = None;
        assert!(!up_to_date(&unlabelled, &desired, EgressMode::Standard));
        assert!(!up_to_date(
            &desired,
            &desired_policy(EgressMode::Strict, "lab-1"),
            EgressMode::Strict
        ));
    }
}
