//! The webhook over real HTTPS with a fixed cluster view: recorded fixtures,
//! malformed and oversized input, certificate rotation under load, and metrics
//! checked by promtool.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use labgate_admission::decide::{NamespaceState, PolicyState};
use labgate_admission::tls::ReloadingCert;
use labgate_admission::webhook::{MAX_REVIEW_BYTES, WebhookState};
use labgate_admission::{ClusterView, Metrics, Rules};
use labgate_policies::EgressMode;
use labgate_tests::certs::TestCa;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The cluster as the fixtures assume it.
struct FixtureView;

impl ClusterView for FixtureView {
    fn namespace(&self, name: &str) -> NamespaceState {
        match name {
            "lab-alice" | "lab-bob" | "colin-coder" => NamespaceState::Lab { terminating: false },
            "lab-old" => NamespaceState::Lab { terminating: true },
            "my-namespace" => NamespaceState::NotLab,
            _ => NamespaceState::Unknown,
        }
    }
    fn policy(&self, namespace: &str) -> PolicyState {
        match namespace {
            "lab-alice" | "lab-old" => PolicyState::Canonical,
            _ => PolicyState::Missing,
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    async fn start() -> Server {
        Server::start_with(1024).await
    }

    async fn start_with(max_connections: usize) -> Server {
        init();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
        let metrics = Metrics::new();
        let state = Arc::new(WebhookState {
            view: Arc::new(FixtureView),
            rules: Rules {
                portal_users: vec![PORTAL_USER.into()],
                portal_groups: vec![],
                namespace_controller_users: vec![],
                egress: EgressMode::Standard,
                exempt_namespaces: vec![],
            },
            metrics: metrics.clone(),
            max_connections,
        });
        let shutdown = CancellationToken::new();
        let resolver = Arc::new(ReloadingCert::new(cert, key).unwrap());
        let (addr, metrics_addr) = labgate_admission::start_webhook(
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
            resolver,
            state,
            shutdown.clone(),
        )
        .await
        .unwrap();
        Server {
            addr,
            metrics_addr: metrics_addr.unwrap(),
            metrics,
            shutdown,
            dir,
            ca,
        }
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(self.ca.client_config())
    }

    async fn post(&self, body: Vec<u8>) -> (u16, Value, String) {
        let (status, bytes) = https_request(
            self.addr,
            "localhost",
            self.client(),
            "POST",
            "/validate",
            body,
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        )
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_get_the_documented_decisions() {
    let s = Server::start().await;
    let table: &[(&str, Option<&str>)] = &[
        ("k8s-docs-deployment-scale-update.json", None),
        ("gke-pod-create-recorded.json", Some("policy-missing")),
        (
            "namespace-create-lab-by-student.json",
            Some("lab-create-restricted"),
        ),
        ("namespace-create-lab-by-portal-dry-run.json", None),
        (
            "namespace-update-strip-lab-label.json",
            Some("lab-marking-immutable"),
        ),
        (
            "networkpolicy-delete-by-student.json",
            Some("policy-protected"),
        ),
        (
            "networkpolicy-delete-during-namespace-termination.json",
            None,
        ),
        (
            "pod-create-in-lab-without-policy.json",
            Some("policy-missing"),
        ),
        ("pod-eviction-in-lab-without-policy.json", None),
        ("vmi-create-in-lab-with-policy.json", None),
    ];
    for (file, denied_by) in table {
        let body = fixture(file);
        let sent: Value = serde_json::from_slice(&body).unwrap();
        let (status, answer, text) = s.post(body).await;
        assert_eq!(status, 200, "{file}: {text}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{file}");
        assert_eq!(answer["kind"], "AdmissionReview", "{file}");
        assert!(
            answer.get("request").is_none(),
            "{file}: the request is not echoed"
        );
        let response = &answer["response"];
        assert_eq!(
            response["uid"], sent["request"]["uid"],
            "{file}: uid echoed"
        );
        match denied_by {
            None => {
                assert_eq!(response["allowed"], true, "{file}: {response}");
                assert!(response.get("auditAnnotations").is_none(), "{file}");
            }
            Some(rule) => {
                assert_eq!(response["allowed"], false, "{file}: {response}");
                assert_eq!(response["status"]["code"], 403, "{file}");
                assert_eq!(response["auditAnnotations"]["denied-rule"], *rule, "{file}");
                let message = response["status"]["message"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("labgate: rule {rule}: ")),
                    "{file}: {message}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_reviews_get_http_errors_not_panics() {
    let s = Server::start().await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"{this is not json".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("JSON array", b"[]".to_vec(), 400),
        ("no request", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), 400),
        (
            "v1beta1 review",
            serde_json::to_vec(&{
                let mut v: Value = serde_json::from_slice(&fixture("pod-create-in-lab-without-policy.json")).unwrap();
                v["apiVersion"] = json!("admission.k8s.io/v1beta1");
                v
            })
            .unwrap(),
            400,
        ),
        (
            "unknown operation",
            serde_json::to_vec(&{
                let mut v: Value = serde_json::from_slice(&fixture("pod-create-in-lab-without-policy.json")).unwrap();
                v["request"]["operation"] = json!("EXPLODE");
                v
            })
            .unwrap(),
            400,
        ),
        ("no uid", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":null,"oldObject":null}}"#.to_vec(), 400),
        ("deeply nested", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), 400),
        ("4 MiB body", vec![b' '; MAX_REVIEW_BYTES + 1024 * 1024], 413),
    ];
    for (what, body, expected) in cases {
        let (status, _, text) = s.post(body).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert!(!text.is_empty(), "{what}: an error says why");
    }
    // Parsed but not understood: a lab-relevant request missing its object is
    // denied with a reason; an unknown kind is allowed untouched.
    let mut v: Value =
        serde_json::from_slice(&fixture("namespace-update-strip-lab-label.json")).unwrap();
    v["request"]["oldObject"] = Value::Null;
    let (status, answer, _) = s.post(serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["response"]["auditAnnotations"]["denied-rule"],
        "malformed-request"
    );
    let mut v: Value =
        serde_json::from_slice(&fixture("pod-create-in-lab-without-policy.json")).unwrap();
    v["request"]["resource"] =
        json!({"group": "example.com", "version": "v1", "resource": "widgets"});
    v["request"]["kind"] = json!({"group": "example.com", "version": "v1", "kind": "Widget"});
    let (_, answer, _) = s.post(serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(answer["response"]["allowed"], true);

    // Other routes and methods.
    let get =
        |path: &'static str| https_request(s.addr, "localhost", s.client(), "GET", path, vec![]);
    assert_eq!(get("/validate").await.unwrap().0, 405);
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    assert_eq!(get("/nope").await.unwrap().0, 404);
    // The plain listener never validates.
    assert_eq!(http_get(s.metrics_addr, "/healthz").await.unwrap().0, 200);
    let (status, _) = http_get(s.metrics_addr, "/validate").await.unwrap();
    assert_eq!(status, 404);

    // Still serving after all that.
    let (status, answer, _) = s.post(fixture("vmi-create-in-lab-with-policy.json")).await;
    assert_eq!(
        (status, answer["response"]["allowed"].clone()),
        (200, json!(true))
    );
    let metrics = s.metrics.render();
    assert!(
        metrics.contains("labgate_admission_invalid_requests_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("labgate_admission_invalid_requests_total{reason=\"bad_json\"}"),
        "{metrics}"
    );
}

/// Rewrites the serving pair in place (cert first, then key, like a careless
/// writer; the reloader must not serve the mismatched half-state).
fn rotate(dir: &Path, ca: &TestCa) {
    let (cert, key) = ca.leaf(&["localhost"]);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

fn trusting(cas: &[&TestCa]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(rustls::pki_types::CertificateDer::from(ca.ca_der()))
            .unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_on_disk_while_requests_flow() {
    let s = Server::start().await;
    let new_ca = TestCa::new();
    let (both, old_only, new_only) = (
        trusting(&[&s.ca, &new_ca]),
        trusting(&[&s.ca]),
        trusting(&[&new_ca]),
    );

    // A steady stream of reviews from a client that trusts old and new CA.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let body = fixture("vmi-create-in-lab-with-policy.json");
    let load = {
        let (stop, ok, failed, both, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            both.clone(),
            s.addr,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match https_request(
                    addr,
                    "localhost",
                    both.clone(),
                    "POST",
                    "/validate",
                    body.clone(),
                )
                .await
                {
                    Ok((200, b))
                        if serde_json::from_slice::<Value>(&b).unwrap()["response"]["allowed"]
                            == true =>
                    {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        tracing::error!(?other, "request failed during rotation");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let healthz = |client: Arc<rustls::ClientConfig>| {
        let addr = s.addr;
        async move {
            https_request(addr, "localhost", client, "GET", "/healthz", vec![])
                .await
                .is_ok()
        }
    };
    assert!(healthz(old_only.clone()).await);
    assert!(!healthz(new_only.clone()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;

    rotate(s.dir.path(), &new_ca);
    let mut switched = false;
    for _ in 0..100 {
        if healthz(new_only.clone()).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        switched,
        "the new certificate is served within 5 s without a restart"
    );
    assert!(
        !healthz(old_only.clone()).await,
        "the old certificate is gone"
    );

    // A broken replacement is refused; the current pair keeps serving.
    std::fs::write(
        s.dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(healthz(new_only.clone()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no review failed during the rotation"
    );
    assert!(ok.load(Ordering::SeqCst) > 10, "requests kept flowing");
    let metrics = s.metrics.render();
    assert!(
        metrics.contains("labgate_admission_tls_reloads_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("labgate_admission_tls_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let s = Server::start().await;
    for file in [
        "pod-create-in-lab-without-policy.json",
        "vmi-create-in-lab-with-policy.json",
    ] {
        assert_eq!(s.post(fixture(file)).await.0, 200);
    }
    assert_eq!(s.post(b"nope".to_vec()).await.0, 400);
    let (status, over_tls) =
        https_request(s.addr, "localhost", s.client(), "GET", "/metrics", vec![])
            .await
            .unwrap();
    assert_eq!(status, 200);
    let (status, plain) = http_get(s.metrics_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for exposition in [over_tls, plain] {
        let text = String::from_utf8(exposition.to_vec()).unwrap();
        for series in [
            "labgate_admission_requests_total{decision=\"denied\",kind=\"Pod\",operation=\"CREATE\"} 1",
            "labgate_admission_requests_total{decision=\"allowed\",kind=\"VirtualMachineInstance\",operation=\"CREATE\"} 1",
            "labgate_admission_request_duration_seconds_bucket{decision=\"denied\",le=\"+Inf\"} 1",
            "labgate_admission_invalid_requests_total{reason=\"bad_json\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in:\n{text}");
        }
        labgate_tests::promtool::assert_clean(&text);
    }
}

/// A flood of connections that never start TLS holds at most
/// `--max-connections` slots: the next one is closed at once (not held until the
/// handshake timeout) and counted, and once the flood goes the webhook answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_capped_and_the_webhook_recovers() {
    use tokio::io::AsyncReadExt;
    let s = Server::start_with(4).await;
    let open = s.metrics.connections.with_label_values(&["webhook"]);
    let rejected = s
        .metrics
        .rejected_connections
        .with_label_values(&["webhook"]);
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let held = eventually(Duration::from_secs(5), || (open.get() == 4).then_some(())).await;
    assert!(held.is_some(), "4 connections open: {}", open.get());
    let mut one_more = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), one_more.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection past the cap was not closed at once: {closed:?}"
    );
    assert_eq!(rejected.get(), 1);
    assert_eq!(open.get(), 4);
    drop(flood);
    let freed = eventually(Duration::from_secs(5), || (open.get() == 0).then_some(())).await;
    assert!(
        freed.is_some(),
        "the flood's slots given back: {}",
        open.get()
    );
    let (status, review, _) = s.post(fixture("vmi-create-in-lab-with-policy.json")).await;
    assert_eq!(status, 200);
    assert_eq!(review["response"]["allowed"], true);
}

/// What a hostile review must get: an HTTP error, or a well-formed review
/// answer (uid echoed) allowing it or denying it by a named rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Http(u16),
    Allowed,
    Denied(&'static str),
}

/// Hostile AdmissionReviews (issue 12): malformed, truncated, oversized,
/// type-confused, kinds and subresources the webhook did not register, and
/// object/oldObject that disagree with each other or with the request. Each
/// gets its exact answer; none a panic or a 5xx; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reviews_get_a_clear_answer_never_a_panic_or_5xx() {
    let s = Server::start().await;
    let load = |file: &str| -> Value { serde_json::from_slice(&fixture(file)).unwrap() };
    let pod = load("pod-create-in-lab-without-policy.json");
    let vmi = load("vmi-create-in-lab-with-policy.json");
    let strip = load("namespace-update-strip-lab-label.json");
    let np_delete = load("networkpolicy-delete-by-student.json");
    let edit = |base: &Value, f: &dyn Fn(&mut Value)| -> Vec<u8> {
        let mut v = base.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let pod_bytes = serde_json::to_vec(&pod).unwrap();
    let cut = |fraction: f64| pod_bytes[..(pod_bytes.len() as f64 * fraction) as usize].to_vec();
    use Answer::*;
    let cases: Vec<(&str, Vec<u8>, Answer)> = vec![
        // Malformed and truncated.
        ("null", b"null".to_vec(), Http(400)),
        ("empty object", b"{}".to_vec(), Http(400)),
        ("a JSON string", br#""AdmissionReview""#.to_vec(), Http(400)),
        ("truncated to 10%", cut(0.1), Http(400)),
        ("truncated to 50%", cut(0.5), Http(400)),
        (
            "truncated by one byte",
            pod_bytes[..pod_bytes.len() - 1].to_vec(),
            Http(400),
        ),
        (
            "trailing garbage",
            [pod_bytes.as_slice(), b"}{"].concat(),
            Http(400),
        ),
        (
            "invalid UTF-8",
            [&pod_bytes[..20], &[0xff, 0xfe][..], &pod_bytes[20..]].concat(),
            Http(400),
        ),
        ("NUL bytes", vec![0u8; 64], Http(400)),
        // Oversized.
        (
            "one byte over the limit",
            {
                let mut b = pod_bytes.clone();
                b.resize(MAX_REVIEW_BYTES + 1, b' ');
                b
            },
            Http(413),
        ),
        (
            "2 MiB annotation, under the limit",
            edit(&pod, &|v| {
                v["request"]["object"]["metadata"]["annotations"] =
                    json!({"x": "a".repeat(2 * 1024 * 1024)});
            }),
            Denied("policy-missing"),
        ),
        // Type confusion.
        (
            "request is a string",
            edit(&pod, &|v| v["request"] = json!("pod")),
            Http(400),
        ),
        (
            "uid is a number",
            edit(&pod, &|v| v["request"]["uid"] = json!(42)),
            Http(400),
        ),
        (
            "operation in lower case",
            edit(&pod, &|v| v["request"]["operation"] = json!("create")),
            Http(400),
        ),
        (
            "kind is a string",
            edit(&pod, &|v| v["request"]["kind"] = json!("Pod")),
            Http(400),
        ),
        (
            "resource is a list",
            edit(&pod, &|v| v["request"]["resource"] = json!(["pods"])),
            Http(400),
        ),
        (
            "groups is a string",
            edit(&pod, &|v| {
                v["request"]["userInfo"]["groups"] = json!("system:masters")
            }),
            Http(400),
        ),
        (
            "object is a string",
            edit(&pod, &|v| v["request"]["object"] = json!("{}")),
            Http(400),
        ),
        (
            "object is a list",
            edit(&pod, &|v| v["request"]["object"] = json!([])),
            Http(400),
        ),
        (
            "labels is a list",
            edit(&pod, &|v| {
                v["request"]["object"]["metadata"]["labels"] = json!(["a"])
            }),
            Http(400),
        ),
        (
            "label value is a number",
            edit(&strip, &|v| {
                v["request"]["object"]["metadata"]["labels"]["labgate.io/lab"] = json!(1)
            }),
            Http(400),
        ),
        (
            "namespace is a number",
            edit(&pod, &|v| v["request"]["namespace"] = json!(7)),
            Http(400),
        ),
        (
            "dryRun is a string",
            edit(&pod, &|v| v["request"]["dryRun"] = json!("yes")),
            Http(400),
        ),
        // Kinds and subresources it did not register.
        (
            "secret create",
            edit(&pod, &|v| {
                v["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
                v["request"]["resource"] =
                    json!({"group": "", "version": "v1", "resource": "secrets"});
            }),
            Allowed,
        ),
        (
            "pods/exec connect",
            edit(&pod, &|v| {
                v["request"]["subResource"] = json!("exec");
                v["request"]["operation"] = json!("CONNECT");
                v["request"]["object"] =
                    json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"]});
            }),
            Allowed,
        ),
        (
            "networkpolicies/status update",
            edit(&np_delete, &|v| {
                v["request"]["subResource"] = json!("status");
                v["request"]["operation"] = json!("UPDATE");
                v["request"]["object"] = v["request"]["oldObject"].clone();
            }),
            Allowed,
        ),
        // Objects that disagree.
        (
            "namespace update whose object renames the namespace",
            edit(&strip, &|v| {
                v["request"]["object"]["metadata"]["name"] = json!("innocent");
            }),
            Denied("lab-marking-immutable"),
        ),
        (
            "isolation policy delete whose oldObject has another name",
            edit(&np_delete, &|v| {
                v["request"]["oldObject"]["metadata"]["name"] = json!("harmless");
            }),
            Denied("policy-protected"),
        ),
        (
            "isolation policy delete with no request name",
            edit(&np_delete, &|v| {
                v["request"]["name"] = json!("");
            }),
            Denied("policy-protected"),
        ),
        (
            "pod whose object claims another namespace",
            edit(&pod, &|v| {
                v["request"]["object"]["metadata"]["namespace"] = json!("my-namespace");
            }),
            Denied("policy-missing"),
        ),
        (
            "request kind Namespace, resource pods",
            edit(&pod, &|v| {
                v["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Namespace"});
            }),
            Denied("policy-missing"),
        ),
        (
            "vmi whose object is a Namespace",
            edit(&vmi, &|v| {
                v["request"]["object"] = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab-alice"}});
            }),
            Allowed,
        ),
        (
            "namespace update without oldObject",
            edit(&strip, &|v| v["request"]["oldObject"] = Value::Null),
            Denied("malformed-request"),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, body, expect) in &cases {
        let sent: Option<Value> = serde_json::from_slice(body).ok();
        let (status, answer, text) = s.post(body.clone()).await;
        assert!(status < 500, "{what}: {status} {text}");
        let got = match status {
            200 => {
                assert_eq!(answer["kind"], "AdmissionReview", "{what}");
                let response = &answer["response"];
                assert_eq!(
                    response["uid"],
                    sent.as_ref().unwrap()["request"]["uid"],
                    "{what}: uid echoed"
                );
                if response["allowed"] == true {
                    Allowed
                } else {
                    assert_eq!(response["status"]["code"], 403, "{what}");
                    let rule = response["auditAnnotations"]["denied-rule"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    Denied(Box::leak(rule.into_boxed_str()))
                }
            }
            other => Http(other),
        };
        if got != *expect {
            wrong.push(format!("{what}: got {got:?}, want {expect:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Still serving.
    let (status, answer, _) = s.post(fixture("vmi-create-in-lab-with-policy.json")).await;
    assert_eq!(
        (status, answer["response"]["allowed"].clone()),
        (200, json!(true))
    );
}
