//! Secrets stay secret (issue 12), admission side: the service runs with
//! every target at `debug` and its own at `trace` through real reviews (via
//! the stand-in) and hostile ones; no API-server token, no TLS key and no
//! secret carried in a reviewed object appears in a log line, panic message
//! or metric.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use labgate_tests::log_capture::LogCapture;
use serde_json::{Value, json};

const FILTER: &str = "debug,labgate_admission=trace,labgate_tests=trace";
/// A password a careless user put in a pod's environment.
const ENV_SECRET: &str = "pod-env-password-8d1f0c";
/// The data of a Secret sent for review (base64 of nothing in particular).
const SECRET_DATA: &str = "c2VjcmV0LWRhdGEtdmFsdWUtNzcyMQ==";

fn pod_with_secret(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "PASSWORD", "value": ENV_SECRET}]}]}
    }))
    .unwrap()
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_a_panic_or_a_metric() {
    let capture = LogCapture::install(FILTER);
    let h = Harness::start(&["--no-reconciler"]).await;

    // Real reviews through the stand-in: a lab, a denied pod, a student's
    // forbidden lab, an allowed pod elsewhere.
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-s", STUDENT))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), || {
        use labgate_admission::ClusterView;
        matches!(
            h.running.cache.namespace("lab-s"),
            labgate_admission::decide::NamespaceState::Lab { .. }
        )
        .then_some(())
    })
    .await
    .unwrap();
    Api::<Pod>::namespaced(h.student(), "lab-s")
        .create(&PostParams::default(), &pod_with_secret("p1"))
        .await
        .unwrap_err();
    Api::<Namespace>::all(h.student())
        .create(&PostParams::default(), &lab_namespace("lab-t", STUDENT))
        .await
        .unwrap_err();

    // Hostile reviews straight to the webhook, carrying the secrets.
    let client = Arc::new(h.ca.client_config());
    let post = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            https_request(
                h.running.addr,
                "localhost",
                client,
                "POST",
                "/validate",
                body,
            )
            .await
            .unwrap()
            .0
        }
    };
    let mut pod = fixture("pod-create-in-lab-without-policy.json");
    pod["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "PASSWORD", "value": ENV_SECRET}]);
    assert_eq!(post(serde_json::to_vec(&pod).unwrap()).await, 200);
    let bytes = serde_json::to_vec(&pod).unwrap();
    let at = String::from_utf8_lossy(&bytes).find(ENV_SECRET).unwrap();
    // Cut inside the secret, and right after it.
    assert_eq!(post(bytes[..at + 6].to_vec()).await, 400);
    assert_eq!(post(bytes[..at + ENV_SECRET.len() + 2].to_vec()).await, 400);
    // The secret where a type is wrong: the decoder's message must not quote it.
    let mut confused = pod.clone();
    confused["request"]["uid"] = json!([ENV_SECRET]);
    assert_eq!(post(serde_json::to_vec(&confused).unwrap()).await, 400);
    let mut confused = pod.clone();
    confused["request"]["operation"] = json!(ENV_SECRET);
    assert_eq!(post(serde_json::to_vec(&confused).unwrap()).await, 400);
    let mut confused = pod.clone();
    confused["request"]["object"]["metadata"]["labels"] = json!({"k": [ENV_SECRET]});
    assert_eq!(post(serde_json::to_vec(&confused).unwrap()).await, 400);
    let mut secret = pod.clone();
    secret["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
    secret["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "secrets"});
    secret["request"]["object"] = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "lab-s"}, "data": {"password": SECRET_DATA}});
    assert_eq!(post(serde_json::to_vec(&secret).unwrap()).await, 200);

    let metrics = h.running.metrics.render();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = capture.text();
    assert!(logs.contains("DEBUG"), "debug lines were not captured");
    assert!(
        logs.contains("policy-missing"),
        "denials were not logged: {logs}"
    );

    let mut secrets: Vec<(String, String)> = vec![
        (
            "admission's API-server token".into(),
            ADMISSION_TOKEN.into(),
        ),
        ("portal's token".into(), PORTAL_TOKEN.into()),
        ("student's token".into(), STUDENT_TOKEN.into()),
        ("a pod's env secret".into(), ENV_SECRET.into()),
        ("a Secret's data".into(), SECRET_DATA.into()),
    ];
    let (_, key_path) = h.cert_paths();
    let key_pem = std::fs::read_to_string(key_path).unwrap();
    for (i, line) in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .enumerate()
    {
        if line.len() >= 16 {
            secrets.push((format!("TLS key line {i}"), line.to_string()));
        }
    }
    LogCapture::assert_free_of("the logs", &logs, &secrets);
    LogCapture::assert_free_of("/metrics", &metrics, &secrets);
}
