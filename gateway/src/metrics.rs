//! Prometheus metrics of the gateway, all prefixed `labgate_gateway_`.
//!
//! Labels are small fixed sets (kind, outcome, direction): never users,
//! namespaces or tokens, so the series count stays bounded.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports, registered in its own [`Registry`].
pub struct Metrics {
    /// The registry holding the metrics below (mountable elsewhere).
    pub registry: Registry,
    /// Sessions currently spliced, by kind.
    pub active_sessions: IntGaugeVec,
    /// Sessions by kind and outcome (ok, bad_token, forbidden, not_found, ...).
    pub sessions: IntCounterVec,
    /// Bytes relayed, by kind and direction.
    pub bytes: IntCounterVec,
    /// Time from request to authorisation decision.
    pub authorization_seconds: Histogram,
    /// Time to open the upstream websocket.
    pub upstream_connect_seconds: Histogram,
    /// Labs in the ownership index.
    pub index_labs: IntGauge,
    /// Times the namespace watch was re-opened or relisted, for any reason.
    pub index_watch_restarts: IntCounter,
    /// Namespaces marked as labs that admit nobody, by reason.
    pub index_malformed_labs: IntGaugeVec,
    /// Seconds the namespace watch has been unhealthy (0 while one is open).
    pub index_stale_seconds: Gauge,
    /// Token cache hits.
    pub token_cache_hits: IntCounter,
    /// Token cache misses.
    pub token_cache_misses: IntCounter,
    /// Remote JWKS fetches by result (ok, error, invalid, rate_limited).
    pub jwks_refetches: IntCounterVec,
    /// Keys in use from each issuer's remote JWKS.
    pub jwks_keys: IntGaugeVec,
    /// Connections accepted and not yet authorised.
    pub preauth_connections: IntGauge,
    /// Connections closed at accept because a pre-authorisation cap was
    /// reached, by reason (total, per_address).
    pub preauth_rejected: IntCounterVec,
    /// Connections open on the admin listener (probes, scrapes).
    pub admin_connections: IntGauge,
    /// Admin-listener connections closed at accept by its caps.
    pub admin_rejected: IntCounterVec,
    /// VM names in the VM index.
    pub vm_index_vms: IntGauge,
    /// VMs left out of the VM index, by cap (per_lab, total).
    pub vm_index_dropped: IntCounterVec,
    /// Times a VM watch was re-opened or relisted, by resource.
    pub vm_watch_restarts: IntCounterVec,
    /// Lab listing and screenshot requests, by endpoint and outcome.
    pub lab_requests: IntCounterVec,
    /// Screenshots fetched from the backend (cache misses), by outcome.
    pub screenshot_captures: IntCounterVec,
    /// Time to fetch one screenshot from the backend.
    pub screenshot_seconds: Histogram,
    /// Tasks alive on the tokio runtime, read at each scrape ([`Metrics::refresh_runtime`]).
    pub runtime_alive_tasks: IntGauge,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let active_sessions = IntGaugeVec::new(
            Opts::new(
                "labgate_gateway_active_sessions",
                "Sessions currently open, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let sessions = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_sessions_total",
                "Sessions by kind and outcome: ok, bad_request, bad_token, expired, forbidden, \
                 not_found, taken_over, upstream_error, limit, revoked, idle, shutdown, not_ready, \
                 gateway_unauthorized.",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_bytes_total",
                "Payload bytes relayed, by kind and direction (client_to_upstream, upstream_to_client).",
            ),
            &["kind", "direction"],
        )
        .expect("valid metric");
        let fast_buckets = vec![
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
        ];
        let authorization_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "labgate_gateway_authorization_duration_seconds",
                "Time from a session request to the authorisation decision.",
            )
            .buckets(fast_buckets),
        )
        .expect("valid metric");
        let upstream_connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "labgate_gateway_upstream_connect_duration_seconds",
                "Time to open the upstream websocket to the VM.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let index_labs = IntGauge::new(
            "labgate_gateway_index_labs",
            "Lab namespaces in the ownership index.",
        )
        .expect("valid metric");
        let index_watch_restarts = IntCounter::new(
            "labgate_gateway_index_watch_restarts_total",
            "Times the lab namespace watch was re-opened or relisted: after its timeout, \
             a dropped connection, a 410 Expired or a failed request.",
        )
        .expect("valid metric");
        let index_malformed_labs = IntGaugeVec::new(
            Opts::new(
                "labgate_gateway_index_malformed_labs",
                "Namespaces marked as labs that admit nobody, by reason: missing_owner, \
                 owner_hash_mismatch, bad_members, exempt (a system or exempt namespace).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let index_stale_seconds = Gauge::new(
            "labgate_gateway_index_stale_seconds",
            "Seconds since the lab namespace watch was last known healthy; 0 while a watch is open.",
        )
        .expect("valid metric");
        let token_cache_hits = IntCounter::new(
            "labgate_gateway_token_cache_hits_total",
            "Token verifications answered from the cache.",
        )
        .expect("valid metric");
        let token_cache_misses = IntCounter::new(
            "labgate_gateway_token_cache_misses_total",
            "Token verifications that checked the signature.",
        )
        .expect("valid metric");
        let jwks_refetches = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_jwks_refetches_total",
                "Remote JWKS fetches by result: ok, error (unreachable, timeout, non-200), invalid \
                 (unparsable or no usable key; the last good keys stay), rate_limited (asked \
                 too soon after the previous fetch, so not sent).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "labgate_gateway_jwks_keys",
                "Keys in use from an issuer's remote JWKS (the last good set).",
            ),
            &["issuer"],
        )
        .expect("valid metric");
        let preauth_connections = IntGauge::new(
            "labgate_gateway_preauth_connections",
            "Connections accepted and not yet authorised (TLS handshake, request head, \
             authorisation, refusal).",
        )
        .expect("valid metric");
        let preauth_rejected = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_preauth_rejected_total",
                "Connections closed at accept because a cap on connections not yet authorised \
                 was reached, by reason: total, per_address.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let admin_connections = IntGauge::new(
            "labgate_gateway_admin_connections",
            "Connections open on the admin listener (/healthz, /readyz, /metrics).",
        )
        .expect("valid metric");
        let admin_rejected = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_admin_rejected_total",
                "Admin-listener connections closed at accept because a cap was reached, by \
                 reason: total, per_address.",
            ),
            &["reason"],
        )
        .expect("valid metric");

        let vm_index_vms = IntGauge::new(
            "labgate_gateway_vm_index_vms",
            "VMs (VirtualMachines and VirtualMachineInstances by name) in the VM index.",
        )
        .expect("valid metric");
        let vm_index_dropped = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_vm_index_dropped_total",
                "VMs left out of the VM index because a cap was reached, by cap: per_lab, total.",
            ),
            &["cap"],
        )
        .expect("valid metric");
        let vm_watch_restarts = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_vm_watch_restarts_total",
                "Times a VM watch was re-opened or relisted, by resource: virtualmachineinstances, \
                 virtualmachines.",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let lab_requests = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_lab_requests_total",
                "Lab listing and screenshot requests, by endpoint (listing, screenshot) and outcome \
                 (ok or the refusal's outcome label).",
            ),
            &["endpoint", "outcome"],
        )
        .expect("valid metric");
        let screenshot_captures = IntCounterVec::new(
            Opts::new(
                "labgate_gateway_screenshot_captures_total",
                "Screenshots fetched from the VM side (cache misses; concurrent requests for one VM \
                 share one), by outcome: ok, error.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let screenshot_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "labgate_gateway_screenshot_duration_seconds",
                "Time to fetch one screenshot from the VM side.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");

        // A count that only grows under steady load is a task leak (a session's
        // pump or timer that never ends); operators and the soak bench watch it.
        let runtime_alive_tasks = IntGauge::new(
            "labgate_gateway_runtime_alive_tasks",
            "Tasks alive on the gateway's tokio runtime (spawned and not yet finished), read at scrape time.",
        )
        .expect("valid metric");

        for c in [
            Box::new(active_sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sessions.clone()),
            Box::new(bytes.clone()),
            Box::new(authorization_seconds.clone()),
            Box::new(upstream_connect_seconds.clone()),
            Box::new(index_labs.clone()),
            Box::new(index_watch_restarts.clone()),
            Box::new(index_malformed_labs.clone()),
            Box::new(index_stale_seconds.clone()),
            Box::new(token_cache_hits.clone()),
            Box::new(token_cache_misses.clone()),
            Box::new(jwks_refetches.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(preauth_connections.clone()),
            Box::new(preauth_rejected.clone()),
            Box::new(admin_connections.clone()),
            Box::new(admin_rejected.clone()),
            Box::new(vm_index_vms.clone()),
            Box::new(vm_index_dropped.clone()),
            Box::new(vm_watch_restarts.clone()),
            Box::new(lab_requests.clone()),
            Box::new(screenshot_captures.clone()),
            Box::new(screenshot_seconds.clone()),
            Box::new(runtime_alive_tasks.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Show both kinds from the start so dashboards see zeros, not gaps.
        for kind in ["vnc", "console"] {
            active_sessions.with_label_values(&[kind]);
            sessions.with_label_values(&[kind, "ok"]);
            for dir in ["client_to_upstream", "upstream_to_client"] {
                bytes.with_label_values(&[kind, dir]);
            }
        }
        for reason in [
            "missing_owner",
            "owner_hash_mismatch",
            "bad_members",
            "exempt",
        ] {
            index_malformed_labs.with_label_values(&[reason]);
        }
        for result in ["ok", "error", "invalid", "rate_limited"] {
            jwks_refetches.with_label_values(&[result]);
        }
        for reason in ["total", "per_address"] {
            preauth_rejected.with_label_values(&[reason]);
            admin_rejected.with_label_values(&[reason]);
        }
        for cap in ["per_lab", "total"] {
            vm_index_dropped.with_label_values(&[cap]);
        }
        for resource in ["virtualmachineinstances", "virtualmachines"] {
            vm_watch_restarts.with_label_values(&[resource]);
        }
        for endpoint in ["listing", "screenshot"] {
            lab_requests.with_label_values(&[endpoint, "ok"]);
        }
        for outcome in ["ok", "error"] {
            screenshot_captures.with_label_values(&[outcome]);
        }
        Metrics {
            registry,
            active_sessions,
            sessions,
            bytes,
            authorization_seconds,
            upstream_connect_seconds,
            index_labs,
            index_watch_restarts,
            index_malformed_labs,
            index_stale_seconds,
            token_cache_hits,
            token_cache_misses,
            jwks_refetches,
            jwks_keys,
            preauth_connections,
            preauth_rejected,
            admin_connections,
            admin_rejected,
            vm_index_vms,
            vm_index_dropped,
            vm_watch_restarts,
            lab_requests,
            screenshot_captures,
            screenshot_seconds,
            runtime_alive_tasks,
        }
    }

    /// Sets the runtime gauges from the tokio runtime this is called on; outside
    /// a runtime they keep their last value.
    pub fn refresh_runtime(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.runtime_alive_tasks
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    fn alive(metrics: &Metrics) -> i64 {
        metrics.refresh_runtime();
        metrics.runtime_alive_tasks.get()
    }

    #[test]
    fn alive_tasks_follow_the_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let metrics = Metrics::new();
        runtime.block_on(async {
            let before = alive(&metrics);
            let (release, wait) = tokio::sync::watch::channel(false);
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    let mut wait = wait.clone();
                    tokio::spawn(async move { wait.wait_for(|go| *go).await.map(|_| ()) })
                })
                .collect();
            assert_eq!(alive(&metrics), before + 3);
            release.send(true).unwrap();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            assert_eq!(alive(&metrics), before);
            assert!(
                metrics
                    .render()
                    .contains(&format!("labgate_gateway_runtime_alive_tasks {before}\n"))
            );
        });
    }

    #[test]
    fn outside_a_runtime_the_gauge_keeps_its_value() {
        let metrics = Metrics::new();
        metrics.runtime_alive_tasks.set(7);
        metrics.refresh_runtime();
        assert_eq!(metrics.runtime_alive_tasks.get(), 7);
    }

    /// Every metric name in this file has a row in the README's metrics table.
    #[test]
    fn readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        let source = include_str!("metrics.rs");
        let mut names = 0;
        // Pieces between quotes that are whole metric names (string literals).
        for quoted in source.split('"') {
            let is_name = quoted.starts_with("labgate_gateway_")
                && !quoted.ends_with('_')
                && quoted.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if !is_name {
                continue;
            }
            names += 1;
            assert!(
                readme.contains(&format!("| `{quoted}`"))
                    || readme.contains(&format!(", `{quoted}` |")),
                "README's metrics table lacks {quoted}"
            );
        }
        assert!(names > 20, "found only {names} metric names");
    }
}
