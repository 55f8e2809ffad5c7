//! Prometheus metrics of the webhook and the reconciler (names prefixed `labgate_admission_`).
//!
//! One [`Metrics`] value owns its registry, so several services can run in one process (tests).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    /// notAfter of the served leaf certificate (Unix seconds).
    pub cert_expiry: IntGauge,
    /// Denials by rule (every denial counts; the log is sampled).
    pub denials: IntCounterVec,
    /// Connections open, by listener (`webhook`, `probes`).
    pub connections: IntGaugeVec,
    /// Connections closed at accept because the listener's cap was reached, by listener.
    pub rejected_connections: IntCounterVec,
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
        let denials = counter(
            "labgate_admission_denials_total",
            "Admission denials, by rule (all of them; logs are sampled).",
            &["rule"],
        );
        let rejected_connections = counter(
            "labgate_admission_connections_rejected_total",
            "Connections closed at accept because the listener held its maximum, by listener.",
            &["listener"],
        );
        let connections = IntGaugeVec::new(
            Opts::new(
                "labgate_admission_connections",
                "Connections open, by listener.",
            ),
            &["listener"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(connections.clone()))
            .expect("metric names are unique");
        for listener in ["webhook", "probes"] {
            connections.with_label_values(&[listener]);
            rejected_connections.with_label_values(&[listener]);
        }
        // Every documented series exists at 0 from the start, so alerts and
        // dashboards see 0 rather than "no data".
        let zero = |c: &IntCounterVec, values: &[&[&str]]| {
            for v in values {
                c.with_label_values(v);
            }
        };
        for op in ["CREATE", "UPDATE", "DELETE", "CONNECT"] {
            for kind in [
                "Namespace",
                "NetworkPolicy",
                "Pod",
                "VirtualMachineInstance",
                "VirtualMachine",
                "OtherWorkload",
                "Other",
            ] {
                zero(&requests, &[&[op, kind, "allowed"], &[op, kind, "denied"]]);
            }
        }
        for r in [
            "bad_json",
            "wrong_type",
            "no_request",
            "too_large",
            "read_error",
        ] {
            zero(&invalid_requests, &[&[r]]);
        }
        for a in [
            "created",
            "repaired",
            "unchanged",
            "skipped-not-lab",
            "skipped-exempt",
            "skipped-terminating",
        ] {
            zero(&reconcile_actions, &[&[a]]);
        }
        for e in [
            "forbidden",
            "conflict",
            "invalid",
            "server",
            "api",
            "transport",
        ] {
            zero(&reconcile_errors, &[&[e]]);
        }
        zero(&watch_errors, &[&["namespaces"], &["networkpolicies"]]);
        zero(&tls_reloads, &[&["success"], &["failure"]]);
        for a in [
            "ca-created",
            "ca-rotated",
            "leaf-issued",
            "cabundle-patched",
            "error",
        ] {
            zero(&cert_actions, &[&[a]]);
        }
        for rule in crate::decide::Rule::ALL {
            zero(&denials, &[&[rule.name()]]);
        }
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
        for d in ["allowed", "denied"] {
            request_duration.with_label_values(&[d]);
        }
        let cache_ready = IntGauge::new(
            "labgate_admission_cache_ready",
            "1 once the namespace and policy caches have synced.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(cache_ready.clone()))
            .expect("metric names are unique");
        let cert_expiry = IntGauge::new(
            "labgate_admission_certificate_expiry_timestamp_seconds",
            "notAfter of the serving leaf certificate, set whenever it is loaded or reloaded.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(cert_expiry.clone()))
            .expect("metric names are unique");
        Metrics {
            cert_expiry,
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
            denials,
            connections,
            rejected_connections,
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
    fn a_fresh_registry_exposes_every_documented_series_at_zero() {
        // Item 15: alerts must see 0, not "no data", before first use.
        let text = super::Metrics::new().render();
        for line in [
            "labgate_admission_tls_reloads_total{result=\"success\"} 0",
            "labgate_admission_tls_reloads_total{result=\"failure\"} 0",
            "labgate_admission_certificate_actions_total{action=\"error\"} 0",
            "labgate_admission_certificate_actions_total{action=\"leaf-issued\"} 0",
            "labgate_admission_reconcile_errors_total{error=\"transport\"} 0",
            "labgate_admission_reconcile_actions_total{action=\"skipped-exempt\"} 0",
            "labgate_admission_watch_errors_total{resource=\"namespaces\"} 0",
            "labgate_admission_watch_errors_total{resource=\"networkpolicies\"} 0",
            "labgate_admission_invalid_requests_total{reason=\"bad_json\"} 0",
            "labgate_admission_requests_total{decision=\"denied\",kind=\"NetworkPolicy\",operation=\"DELETE\"} 0",
            "labgate_admission_request_duration_seconds_count{decision=\"denied\"} 0",
            "labgate_admission_denials_total{rule=\"policy-writes-restricted\"} 0",
            "labgate_admission_cache_ready 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

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
