//! Shared test harness: an HTTPS client for the webhook, an API-server-like webhook
//! dispatcher for the stand-in, and a started service against the stand-in.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingWebhook, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use labgate_admission::{Config, Running, WEBHOOK_CONFIGURATION_YAML};
use labgate_tests::certs::TestCa;
use labgate_tests::standin::{AdmissionHook, StandIn, UserInfo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const PORTAL_USER: &str = "system:serviceaccount:portal:portal";
pub const PORTAL_TOKEN: &str = "portal-token";
pub const STUDENT: &str = "alice@example.com";
pub const STUDENT_TOKEN: &str = "student-token";
pub const ADMISSION_TOKEN: &str = "admission-token";
pub const POLICY_PATH: &str =
    "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/labgate-isolation";

pub fn policy_path(ns: &str) -> String {
    POLICY_PATH.replace("{ns}", ns)
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// One HTTPS request on a fresh connection; returns status and body.
pub async fn https_request(
    addr: SocketAddr,
    server_name: &str,
    client: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, server_name)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Plain HTTP GET (metrics listener).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The webhook configuration shipped in policies/manifests.
pub fn webhook_configuration() -> ValidatingWebhookConfiguration {
    serde_yaml::from_str(WEBHOOK_CONFIGURATION_YAML)
        .expect("the shipped webhook configuration parses")
}

fn selector_matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("unsupported selector operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

fn labels_of(obj: &Value) -> Option<BTreeMap<String, String>> {
    if obj.is_null() {
        return None;
    }
    Some(
        serde_json::from_value(
            obj.pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({})),
        )
        .unwrap_or_default(),
    )
}

/// Whether the API server would send `review` to `webhook` (rules, namespaceSelector,
/// objectSelector, matchConditions), following the documented semantics.
pub fn webhook_matches(webhook: &ValidatingWebhook, review: &Value, standin: &StandIn) -> bool {
    let r = &review["request"];
    let op = r["operation"].as_str().unwrap_or("");
    let group = r["resource"]["group"].as_str().unwrap_or("");
    let version = r["resource"]["version"].as_str().unwrap_or("");
    let mut resource = r["resource"]["resource"].as_str().unwrap_or("").to_string();
    if let Some(sub) = r["subResource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let any =
        |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
    let rule_ok = webhook.rules.iter().flatten().any(|rule| {
        any(&rule.operations, op)
            && any(&rule.api_groups, group)
            && any(&rule.api_versions, version)
            && any(&rule.resources, &resource)
    });
    if !rule_ok {
        return false;
    }
    // namespaceSelector: a Namespace is matched on its own (new) labels, anything
    // else on its namespace's labels.
    let ns_labels = if group.is_empty() && r["resource"]["resource"] == "namespaces" {
        labels_of(&r["object"])
            .or_else(|| labels_of(&r["oldObject"]))
            .unwrap_or_default()
    } else {
        let ns = r["namespace"].as_str().unwrap_or("");
        standin
            .get_json(&format!("/api/v1/namespaces/{ns}"))
            .and_then(|n| labels_of(&n))
            .unwrap_or_default()
    };
    if !selector_matches(webhook.namespace_selector.as_ref(), &ns_labels) {
        return false;
    }
    // objectSelector: old or new object matches; a null object never does.
    if webhook.object_selector.is_some() {
        let hit = [&r["object"], &r["oldObject"]]
            .into_iter()
            .filter_map(labels_of)
            .any(|l| selector_matches(webhook.object_selector.as_ref(), &l));
        if !hit {
            return false;
        }
    }
    webhook.match_conditions.iter().flatten().all(|c| {
        let prefix = "request.name == '";
        let expected = c
            .expression
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("the test dispatcher cannot evaluate {:?}", c.expression));
        r["name"].as_str() == Some(expected)
    })
}

/// A call the dispatcher made: the review sent and the response (or error).
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub webhook: String,
    pub review: Value,
    pub allowed: bool,
    pub response: Value,
}

/// Turns the stand-in's admission hook into real HTTPS calls to the webhook,
/// as the API server does with `failurePolicy: Fail`.
pub fn install_dispatcher(
    standin: &StandIn,
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> (AdmissionHook, Arc<Mutex<Vec<Dispatched>>>) {
    let (hook, log) = dispatcher(standin, addr, client);
    standin.set_admission_hook(Some(hook.clone()));
    (hook, log)
}

/// The hook [`install_dispatcher`] installs (a test may wrap it) and its log.
pub fn dispatcher(
    standin: &StandIn,
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> (AdmissionHook, Arc<Mutex<Vec<Dispatched>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let vwc = Arc::new(webhook_configuration());
    let (standin_for_hook, log_for_hook) = (standin.clone(), log.clone());
    let hook: AdmissionHook = Arc::new(move |review: Value| {
        let (vwc, standin, log, client) = (
            vwc.clone(),
            standin_for_hook.clone(),
            log_for_hook.clone(),
            client.clone(),
        );
        async move {
            for webhook in vwc.webhooks.iter().flatten() {
                if !webhook_matches(webhook, &review, &standin) {
                    continue;
                }
                let body = serde_json::to_vec(&review).expect("reviews serialize");
                let call = tokio::time::timeout(
                    Duration::from_secs(webhook.timeout_seconds.unwrap_or(10) as u64),
                    https_request(addr, "localhost", client.clone(), "POST", "/validate", body),
                )
                .await;
                let failure = |msg: String| {
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                           "reason": "InternalError",
                           "message": format!("Internal error occurred: failed calling webhook \"{}\": {msg}", webhook.name)})
                };
                let (status, bytes) = match call {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(failure(e.to_string())),
                    Err(_) => return Err(failure("context deadline exceeded".into())),
                };
                if status != 200 {
                    return Err(failure(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))));
                }
                let answer: Value = serde_json::from_slice(&bytes).map_err(|e| failure(e.to_string()))?;
                let response = answer["response"].clone();
                assert_eq!(response["uid"], review["request"]["uid"], "the webhook echoes the uid");
                let allowed = response["allowed"].as_bool().unwrap_or(false);
                log.lock().unwrap().push(Dispatched {
                    webhook: webhook.name.clone(),
                    review: review.clone(),
                    allowed,
                    response: response.clone(),
                });
                if !allowed {
                    let mut status = response["status"].clone();
                    status["kind"] = json!("Status");
                    status["apiVersion"] = json!("v1");
                    status["status"] = json!("Failure");
                    let message = status["message"].as_str().unwrap_or("").to_string();
                    status["message"] =
                        json!(format!("admission webhook \"{}\" denied the request: {message}", webhook.name));
                    if status["code"].as_u64().unwrap_or(0) == 0 {
                        status["code"] = json!(403);
                    }
                    return Err(status);
                }
            }
            Ok(())
        }
        .boxed()
    });
    (hook, log)
}

/// Serialises the tests of one test binary that start a [`Harness`]: the
/// end-to-end tests have hard 1 s deadlines, and on a small CI machine (two
/// cores) several stand-ins, reconcilers and webhooks started at once by the
/// parallel test runner compete for the CPU. A tokio mutex is not poisoned, so
/// a failing test does not fail the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A started labgate-admission against a fresh stand-in, with users registered.
///
/// Only one `Harness` exists at a time per test binary (see [`SERIAL`]); the
/// next test's `Harness::start` waits until this one is dropped.
pub struct Harness {
    pub standin: StandIn,
    pub running: Running,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub dispatched: Arc<Mutex<Vec<Dispatched>>>,
    /// The installed dispatcher, for tests that wrap it in their own hook.
    pub dispatcher: AdmissionHook,
    /// Held for the test's lifetime; dropped after `Drop::drop` cancelled the service.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    /// Starts with `extra` flags appended to a base configuration.
    pub async fn start(extra: &[&str]) -> Harness {
        init();
        let serial = SERIAL.lock().await;
        let standin = StandIn::start().await.expect("stand-in starts");
        standin.add_token(
            ADMISSION_TOKEN,
            UserInfo::service_account("labgate-system", "labgate-admission"),
        );
        standin.add_token(PORTAL_TOKEN, UserInfo::service_account("portal", "portal"));
        standin.add_token(
            STUDENT_TOKEN,
            UserInfo {
                username: STUDENT.into(),
                groups: vec!["students".into()],
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
        let mut args: Vec<String> = [
            "labgate-admission",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--portal-user",
            PORTAL_USER,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--tls-cert-file".into(), cert.display().to_string()]);
        args.extend(["--tls-key-file".into(), key.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from_args(&args);
        let shutdown = CancellationToken::new();
        let running =
            labgate_admission::start(&config, standin.client(ADMISSION_TOKEN), shutdown.clone())
                .await
                .expect("service starts");
        tokio::time::timeout(Duration::from_secs(10), running.cache.wait_ready())
            .await
            .expect("cache syncs");
        let (dispatcher, dispatched) =
            install_dispatcher(&standin, running.addr, Arc::new(ca.client_config()));
        Harness {
            standin,
            running,
            shutdown,
            dir,
            ca,
            dispatched,
            dispatcher,
            _serial: serial,
        }
    }

    pub fn portal(&self) -> kube::Client {
        self.standin.client(PORTAL_TOKEN)
    }

    pub fn student(&self) -> kube::Client {
        self.standin.client(STUDENT_TOKEN)
    }

    pub fn cert_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        )
    }

    /// Waits until the stand-in holds the canonical isolation policy in `ns`.
    pub async fn wait_policy(
        &self,
        ns: &str,
        deadline: Duration,
        egress: labgate_policies::EgressMode,
    ) -> bool {
        let path = policy_path(ns);
        eventually(deadline, || {
            let p = self.standin.get_json(&path)?;
            let spec = serde_json::from_value(p.get("spec")?.clone()).ok()?;
            egress.is_canonical(Some(&spec)).then_some(())
        })
        .await
        .is_some()
    }

    /// Waits until the webhook's cache shows the canonical policy (decisions use the cache).
    pub async fn wait_cached_policy(&self, ns: &str) {
        use labgate_admission::ClusterView;
        let cache = self.running.cache.clone();
        eventually(Duration::from_secs(5), || {
            (cache.policy(ns) == labgate_admission::decide::PolicyState::Canonical).then_some(())
        })
        .await
        .expect("the cache sees the policy");
    }

    /// Waits (up to 2 s) until the metrics exposition contains `line`; the
    /// counters move just after the API write they count.
    pub async fn wait_metric(&self, line: &str) {
        let metrics = self.running.metrics.clone();
        let seen = eventually(Duration::from_secs(2), || {
            metrics.render().contains(line).then_some(())
        })
        .await;
        assert!(
            seen.is_some(),
            "missing {line} in:\n{}",
            self.running.metrics.render()
        );
    }

    pub fn denials(&self) -> Vec<Dispatched> {
        self.dispatched
            .lock()
            .unwrap()
            .iter()
            .filter(|d| !d.allowed)
            .cloned()
            .collect()
    }
}

/// The namespace a portal creates for `owner`.
pub fn lab_namespace(name: &str, owner: &str) -> k8s_openapi::api::core::v1::Namespace {
    let lab = labgate_policies::Lab {
        namespace: name.into(),
        owner: owner.into(),
        members: vec![],
    };
    let (labels, annotations) = lab.metadata();
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(name.into());
    ns.metadata.labels = Some(labels);
    ns.metadata.annotations = Some(annotations);
    ns
}

/// Extension to build a Config from owned args.
pub trait ParseArgs {
    fn try_parse_from_args(args: &[String]) -> Config;
}

impl ParseArgs for Config {
    fn try_parse_from_args(args: &[String]) -> Config {
        use clap::Parser;
        Config::try_parse_from(args).expect("test flags parse")
    }
}

/// The status message of a kube API error.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}
