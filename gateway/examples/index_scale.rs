//! Scale check of the lab index (issue 12): memory per lab and lookup cost at 1,000 and
//! 100,000 labs (RSS growth, an upper bound). Labs go through the same path as the namespace watch (`entry_for` on a
//! labelled `Namespace`, then `replace_all`), and lookups hit random existing and missing
//! namespaces. Prints one JSON line per size; nothing here asserts on timings.
//!
//! `cargo run --release -p labgate-gateway --example index_scale [SIZES...]`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;
use labgate_gateway::index::{LabIndex, entry_for};
use labgate_gateway::metrics::Metrics;
use labgate_policies::Lab;

/// Resident memory of this process (VmRSS), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A namespace as the admission service leaves it: lab label, owner annotation and hash, two members.
fn lab_namespace(i: usize) -> Namespace {
    let lab = Lab {
        namespace: format!("lab-{i:06}"),
        owner: format!("student-{i:06}@uni.example"),
        members: vec![
            "tutor-1@uni.example".into(),
            format!("peer-{i}@uni.example"),
        ],
    };
    let (labels, annotations) = lab.metadata();
    Namespace {
        metadata: ObjectMeta {
            name: Some(lab.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// xorshift: cheap, deterministic lookup keys without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        let before = rss_kib();
        let index = LabIndex::new(Arc::new(Metrics::new()));
        let built = Instant::now();
        let fresh: HashMap<String, _> = (0..n)
            .filter_map(|i| {
                let ns = lab_namespace(i);
                Some((ns.metadata.name.clone()?, entry_for(&ns)?))
            })
            .collect();
        index.replace_all(fresh);
        let build_ms = built.elapsed().as_secs_f64() * 1e3;
        assert_eq!(index.len(), n, "every namespace is a lab");
        // An upper bound: it includes what the allocator kept of the freed list.
        let after = rss_kib();
        // Lookups: half existing labs, half unknown names, in random order.
        let keys: Vec<String> = {
            let mut s = 0x9e37_79b9_7f4a_7c15;
            (0..4096)
                .map(|k| {
                    let i = (next(&mut s) % n as u64) as usize;
                    if k % 2 == 0 {
                        format!("lab-{i:06}")
                    } else {
                        format!("nolab-{i:06}")
                    }
                })
                .collect()
        };
        let rounds = 500;
        let timer = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for k in &keys {
                found += usize::from(black_box(index.get(black_box(k))).is_some());
            }
        }
        let ns_per_lookup = timer.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64;
        assert_eq!(found, rounds * keys.len() / 2);
        println!(
            "{}",
            serde_json::json!({
                "labs": n,
                "rss_growth_kib": after.saturating_sub(before),
                "rss_bytes_per_lab": (after.saturating_sub(before) * 1024) as f64 / n as f64,
                "build_ms": build_ms,
                "ns_per_lookup": ns_per_lookup,
            })
        );
        drop(index);
    }
}
