//! Prometheus metrics of the webhook and the reconciler (names prefixed `labgate_admission_`).
//!
//! One [`Metrics`] value owns its registry, so several services can run in one process (tests).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reviews answered, by operation, kind and decision.
    pub requests: IntCounterVec,
    /// Time to decide and encode one review.
    pub request_duration: HistogramVec,
    /// Requests answered with an HTTP error, by reason.
    pub invalid_requests: IntCounterVec,
    /// Reconciler actions (created, repaired, unchanged, skipped).
    pub reconcile_actions: IntCounterVec,
    /// Reconciler errors, by kind.
    pub reconcile_errors: IntCounterVec,
    /// Watch stream errors of the cache, by resource.
    pub watch_errors: IntCounterVec,
    /// 1 once the cache has listed namespaces and policies.
    pub cache_ready: IntGauge,
    /// Serving-certificate reload attempts, by result.
    pub tls_reloads: IntCounterVec,
    /// Self-managed certificate actions (ca-created, ca-rotated, leaf-issued, cabundle-patched).
    pub cert_actions: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let requests = counter(
            "labgate_admission_requests_total",
            "Admission reviews answered, by operation, kind and decision.",
            &["operation", "kind", "decision"],
        );
        let invalid_requests = counter(
            "labgate_admission_invalid_requests_total",
            "Webhook requests refused with an HTTP error instead of a review, by reason.",
            &["reason"],
        );
        let reconcile_actions = counter(
            "labgate_admission_reconcile_actions_total",
            "Reconciler outcomes per lab namespace, by action.",
            &["action"],
        );
        let reconcile_errors = counter(
            "labgate_admission_reconcile_errors_total",
            "Reconciler errors, by kind.",
            &["error"],
        );
        let watch_errors = counter(
            "labgate_admission_watch_errors_total",
            "Errors of the watches that feed the decision cache, by resource.",
            &["resource"],
        );
        let tls_reloads = counter(
            "labgate_admission_tls_reloads_total",
            "Serving certificate reloads after a file change, by result.",
            &["result"],
        );
        let cert_actions = counter(
            "labgate_admission_certificate_actions_total",
            "Self-managed certificate actions, by action.",
            &["action"],
        );
        // Decisions take microseconds; the buckets reach up to the webhook timeout.
        let buckets =
            prometheus::exponential_buckets(0.000_005, 4.0, 12).expect("static buckets are valid");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "labgate_admission_request_duration_seconds",
                "Time from receiving a complete review body to the encoded response.",
            )
            .buckets(buckets),
            &["decision"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("metric names are unique");
        let cache_ready = IntGauge::new(
            "labgate_admission_cache_ready",
            "1 once the namespace and policy caches have synced.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(cache_ready.clone()))
            .expect("metric names are unique");
        Metrics {
            registry,
            requests,
            request_duration,
            invalid_requests,
            reconcile_actions,
            reconcile_errors,
            watch_errors,
            cache_ready,
            tls_reloads,
            cert_actions,
        }
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters_with_labels() {
        let m = super::Metrics::new();
        m.requests
            .with_label_values(&["CREATE", "Pod", "denied"])
            .inc();
        m.request_duration
            .with_label_values(&["denied"])
            .observe(0.00002);
        let text = m.render();
        assert!(text.contains(
            "labgate_admission_requests_total{decision=\"denied\",kind=\"Pod\",operation=\"CREATE\"} 1"
        ));
        assert!(text.contains("# TYPE labgate_admission_request_duration_seconds histogram"));
    }
}
