//! The admission service's own API-server calls failing while reviews keep
//! arriving (issue 12, "Faults"): it fails closed where the README promises
//! (row 2: a lab it has not synced, or whose policy it has not seen, gets no
//! workloads) and recovers when the API server answers again.
//!
//! Reviews are posted straight to the webhook, as another API-server replica
//! would send them while this service's connection to its own one is broken.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use labgate_policies::EgressMode;
use serde_json::{Value, json};

/// A Pod CREATE review in `ns` (the recorded fixture, moved there).
fn pod_review(ns: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pod-create-in-lab-without-policy.json");
    let mut review: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    review["request"]["namespace"] = json!(ns);
    review["request"]["object"]["metadata"]["namespace"] = json!(ns);
    review
}

/// The webhook's answer: `Ok(())` allowed, `Err(rule)` denied by `rule`.
async fn decide(h: &Harness, ns: &str) -> Result<(), String> {
    let (status, body) = https_request(
        h.running.addr,
        "localhost",
        std::sync::Arc::new(h.ca.client_config()),
        "POST",
        "/validate",
        serde_json::to_vec(&pod_review(ns)).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let response = &answer["response"];
    if response["allowed"] == true {
        Ok(())
    } else {
        Err(response["auditAnnotations"]["denied-rule"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

async fn wait_allowed(h: &Harness, ns: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if decide(h, ns).await.is_ok() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{ns}: still denied after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_fail_closed_while_the_api_server_is_unreachable_and_recover() {
    let h = Harness::start(&[]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-known", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-known", Duration::from_secs(5), EgressMode::Standard)
            .await
    );
    h.wait_cached_policy("lab-known").await;
    assert_eq!(decide(&h, "lab-known").await, Ok(()));

    // The service loses its API server; a lab is created meanwhile (through
    // another replica), with no policy yet.
    h.standin.stop_serving().await;
    h.standin
        .put_namespace(lab_namespace("lab-unseen", STUDENT));
    for _ in 0..3 {
        // A lab it never saw: denied, not allowed by default.
        assert_eq!(
            decide(&h, "lab-unseen").await,
            Err("namespace-not-synced".to_string())
        );
        // A lab it knows with its policy in place keeps working.
        assert_eq!(decide(&h, "lab-known").await, Ok(()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Back: the lab is synced, its policy written, and workloads pass.
    h.standin.resume_serving().await.unwrap();
    let took = wait_allowed(&h, "lab-unseen", Duration::from_secs(5)).await;
    println!("lab created during the outage admitted {took:?} after the API server returned");
    assert!(
        h.wait_policy("lab-unseen", Duration::from_secs(1), EgressMode::Standard)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_fail_closed_while_the_api_server_answers_errors_and_recover() {
    let h = Harness::start(&[]).await;
    // The service's namespace requests fail (503) five times and its policy
    // writes three times (its per-namespace backoff, 200 ms doubling, is
    // documented); the watches are cut so it has to ask again.
    let failing = |path: &str| {
        path.starts_with("/api/v1/namespaces")
            || path.ends_with("/networkpolicies/labgate-isolation")
    };
    let before = h
        .standin
        .requests()
        .iter()
        .filter(|r| failing(&r.path))
        .count();
    h.standin.fail_requests("/api/v1/namespaces", 503, 5);
    h.standin
        .fail_requests("/networkpolicies/labgate-isolation", 503, 3);
    h.standin.drop_watches();
    h.standin
        .put_namespace(lab_namespace("lab-during-errors", STUDENT));
    let t0 = Instant::now();
    let mut denials = Vec::new();
    let mut errors_over = None;
    while let Err(rule) = decide(&h, "lab-during-errors").await {
        denials.push(rule);
        let seen = h
            .standin
            .requests()
            .iter()
            .filter(|r| failing(&r.path))
            .count();
        if errors_over.is_none() && seen >= before + 8 {
            errors_over = Some(Instant::now());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not admitted 10 s after the errors began: {:?}",
            denials.last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "admitted {:?} after the errors began, {:?} after the last of them; {} denials before",
        t0.elapsed(),
        errors_over.map(|t| t.elapsed()),
        denials.len()
    );
    assert!(!denials.is_empty(), "a lab it could not sync was admitted");
    for rule in &denials {
        assert!(
            rule == "namespace-not-synced" || rule == "policy-missing",
            "{rule}"
        );
    }
    // Admitted only once the policy exists.
    assert!(
        h.wait_policy(
            "lab-during-errors",
            Duration::from_millis(10),
            EgressMode::Standard
        )
        .await
    );
}
