//! The Helm chart's alerts and Grafana dashboard use only metrics the
//! binaries export: every `labgate_*` name in them must appear in a freshly
//! started gateway's `/metrics` or in the admission service's exposition
//! (which registers every series at start).

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::*;

/// The `labgate_*` metric families named in `text` (histogram suffixes
/// folded into their family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("labgate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        // `labgate_` alone (e.g. in prose) is not a metric name.
        if boundary && end > start + "labgate_".len() && !text[..end].ends_with('_') {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        i = end;
    }
    names
}

/// Families present in an exposition (`# TYPE name kind` lines).
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn chart_alerts_and_dashboard_use_only_exported_metrics() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/labgate");
    let rules =
        std::fs::read_to_string(chart.join("templates/observability/prometheusrule.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(chart.join("files/dashboard.json")).unwrap();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(used.len() >= 10, "the rules and dashboard name {used:?}");

    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let (status, gateway_metrics) = env.http("/metrics", &[]).await.unwrap();
    assert_eq!(status, 200);
    let mut available = exported(&gateway_metrics);
    available.extend(exported(&labgate_admission::Metrics::new().render()));
    assert!(
        available.contains("labgate_gateway_sessions_total"),
        "{available:?}"
    );

    let missing: Vec<_> = used.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "the chart uses metrics no binary exports: {missing:?}"
    );
}

#[test]
fn metric_names_are_found_with_histogram_suffixes_folded() {
    let names = metric_names(
        "rate(labgate_gateway_x_bucket[5m]) / xlabgate_no + labgate_admission_y_total{a=\"b\"}",
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "labgate_gateway_x".to_string(),
            "labgate_admission_y_total".to_string()
        ])
    );
}
