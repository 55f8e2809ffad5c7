//! The in-process Kubernetes + KubeVirt API server tests run against: TLS, bearer-token
//! authentication, generic object storage with list/watch, admission and the KubeVirt websocket
//! subresources.
//!
//! [`StandIn`] is the handle tests hold; the server runs on the test's tokio runtime and stops when
//! the last handle is dropped or on [`StandIn::shutdown`].

mod admission;
mod kubevirt;
mod path;
mod rest;
mod screenshot;
mod selector;
mod status;
mod store;
mod watch;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use admission::AdmissionHook;
pub use kubevirt::{PLAIN_PROTOCOL, UpgradeFault, UpstreamAddr, Vmi};
pub use rest::{NAMESPACE_CONTROLLER, NAMESPACE_NAME_LABEL};
pub use screenshot::{ScreenshotMode, encode_png};

use crate::certs::TestCa;
use path::{ApiPath, ResourceType, Route};
use status::ApiError;
use store::Store;

/// Username of the gateway's service account, whose token [`StandIn::start`] registers.
pub const GATEWAY_USER: &str = "system:serviceaccount:labgate:labgate-gateway";
/// Prefix of the browser idiom for passing a bearer token as a websocket subprotocol.
const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";
/// Largest request body the stand-in reads (the API server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Response body type of every handler.
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A service account identity with the groups the API server gives it.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        }
    }

    /// A plain user without groups.
    pub fn user(name: &str) -> UserInfo {
        UserInfo {
            username: name.to_string(),
            groups: Vec::new(),
        }
    }
}

/// One request as the stand-in received it (tokens are never recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// The authenticated username; `None` if authentication failed.
    pub user: Option<String>,
}

/// Decoded query parameters; empty pairs (kube sends `?&…`) are skipped.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            raw.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(pair), String::new()),
                })
                .collect(),
        )
    }

    /// The first value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// State shared by the handle and every connection task.
pub(crate) struct Shared {
    /// TLS handshakes accepted: (full, resumed).
    tls_handshakes: (AtomicU64, AtomicU64),
    store: Mutex<Store>,
    tokens: Mutex<HashMap<String, UserInfo>>,
    subresource_users: Mutex<HashSet<String>>,
    /// Subresources (`vnc`, `console`, `vnc/screenshot`) withheld from a user, as a ClusterRole
    /// lacking that resource would: (username, subresource).
    denied_subresources: Mutex<HashSet<(String, String)>>,
    /// RBAC denials on stored resources: (username, verb), e.g. `watch` on namespaces.
    denied_verbs: Mutex<HashSet<(String, String)>>,
    requests: Mutex<Vec<RecordedRequest>>,
    kubevirt: kubevirt::KubeVirt,
    admission_hook: Mutex<Option<AdmissionHook>>,
    /// Injected failures: (path fragment, HTTP code, remaining count).
    failures: Mutex<Vec<(String, u16, usize)>>,
    bookmark_interval: Mutex<Duration>,
    /// Bumped by [`StandIn::drop_watches`]; every watch stream cuts its connection.
    watch_cut: tokio::sync::watch::Sender<u64>,
    cancel: CancellationToken,
    /// Cancelled by [`StandIn::stop_serving`]: the listener closes and every connection is cut,
    /// as when the API server process goes away; [`StandIn::resume_serving`] installs a new one.
    serving: Mutex<CancellationToken>,
    /// How VM subresource upgrades misbehave, if at all.
    upgrade_fault: Mutex<Option<UpgradeFault>>,
    runtime: tokio::runtime::Handle,
}

/// The last handle's drop stops the server.
struct Handle {
    shared: Arc<Shared>,
    url: String,
    ca: TestCa,
    gateway_token: String,
    addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// A running stand-in API server. Cheap to clone.
#[derive(Clone)]
pub struct StandIn {
    inner: Arc<Handle>,
}

impl StandIn {
    /// Starts the server on `127.0.0.1:0` with TLS from a fresh test CA.
    ///
    /// # Errors
    /// Binding the port or building the TLS config failed.
    pub async fn start() -> anyhow::Result<StandIn> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new();
        // Like a Go API server (crypto/tls defaults): stateless session tickets, one sent
        // after every TLS 1.3 handshake, and no server-side session cache.
        let mut server_config = ca.server_config(&[])?;
        server_config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        server_config.send_tls13_tickets = 1;
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let gateway_token = random_token();
        let shared = Arc::new(Shared {
            tls_handshakes: Default::default(),
            store: Mutex::new(Store::new()),
            tokens: Mutex::new(HashMap::from([(
                gateway_token.clone(),
                UserInfo::service_account("labgate", "labgate-gateway"),
            )])),
            subresource_users: Mutex::new(HashSet::from([GATEWAY_USER.to_string()])),
            denied_subresources: Mutex::new(HashSet::new()),
            denied_verbs: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            kubevirt: kubevirt::KubeVirt::default(),
            admission_hook: Mutex::new(None),
            failures: Mutex::new(Vec::new()),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            watch_cut: tokio::sync::watch::channel(0).0,
            cancel: CancellationToken::new(),
            serving: Mutex::new(CancellationToken::new()),
            upgrade_fault: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        });
        let server = tokio::spawn(accept_loop(shared.clone(), listener, tls.clone()));
        tokio::spawn(kubevirt::end_sessions_of_stopped_vmis(shared.clone()));
        Ok(StandIn {
            inner: Arc::new(Handle {
                shared,
                url: format!("https://{addr}"),
                ca,
                gateway_token,
                addr,
                tls,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    pub fn ca(&self) -> &TestCa {
        &self.inner.ca
    }

    pub fn ca_pem(&self) -> String {
        self.inner.ca.ca_pem()
    }

    /// Registers a bearer token for an identity.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.shared()
            .tokens
            .lock()
            .expect("token lock")
            .insert(token.to_string(), user);
    }

    /// Stops accepting a bearer token (a rotated service-account token whose old one is revoked):
    /// requests carrying it get 401 from now on.
    pub fn revoke_token(&self, token: &str) {
        self.shared()
            .tokens
            .lock()
            .expect("token lock")
            .remove(token);
    }

    /// Denies (`deny = true`) or gives back `verb` (`get`, `list`, `watch`, `create`, ...) on every
    /// stored resource to `username`, as a missing RBAC rule would: 403 Forbidden before the handler.
    pub fn deny_verb(&self, username: &str, verb: &str, deny: bool) {
        let mut denied = self.shared().denied_verbs.lock().expect("rbac lock");
        let entry = (username.to_string(), verb.to_string());
        if deny {
            denied.insert(entry);
        } else {
            denied.remove(&entry);
        }
    }

    /// The token of the gateway's service account ([`GATEWAY_USER`]).
    pub fn gateway_token(&self) -> String {
        self.inner.gateway_token.clone()
    }

    /// Lets `username` open `vnc` and `console` subresources (the gateway SA may from the start).
    pub fn allow_subresources(&self, username: &str) {
        self.shared()
            .subresource_users
            .lock()
            .expect("rbac lock")
            .insert(username.to_string());
    }

    /// Withholds (`deny = true`) or gives back one KubeVirt subresource (`vnc`, `console`,
    /// `vnc/screenshot`) from `username`: 403 Forbidden, as without that RBAC rule.
    pub fn deny_subresource(&self, username: &str, subresource: &str, deny: bool) {
        let mut denied = self.shared().denied_subresources.lock().expect("rbac lock");
        let entry = (username.to_string(), subresource.to_string());
        if deny {
            denied.insert(entry);
        } else {
            denied.remove(&entry);
        }
    }

    /// Writes `kubeconfig` (CA inline, `tokenFile` pointing at `kubeconfig-token`, no trailing
    /// newline) into `dir`; returns the kubeconfig's path.
    pub fn write_kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        let token_path = dir.join("kubeconfig-token");
        std::fs::write(&token_path, token).expect("writing the token file into the test dir");
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: standin-user\n  user:\n    tokenFile: {token}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin-user\n    namespace: default\ncurrent-context: standin\n",
            url = self.url(),
            token = token_path.display(),
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).expect("writing the kubeconfig into the test dir");
        path
    }

    /// A `kube::Config` for the stand-in authenticating with `token`.
    pub fn kube_config(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("our URL parses"));
        config.root_cert = Some(vec![self.inner.ca.ca_der()]);
        config.auth_info = serde_json::from_value(json!({ "token": token }))
            .expect("an auth info with a token deserializes");
        config.default_namespace = "default".to_string();
        config
    }

    /// A kube client for the stand-in authenticating with `token`.
    pub fn client(&self, token: &str) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        kube::Client::try_from(self.kube_config(token)).expect("a client for the stand-in builds")
    }

    // --- objects ---

    /// Creates or updates a namespace directly (no admission), with the automatic
    /// `kubernetes.io/metadata.name` label and phase Active unless it says otherwise.
    pub fn put_namespace(&self, ns: k8s_openapi::api::core::v1::Namespace) {
        let mut obj = serde_json::to_value(&ns).expect("a Namespace serializes");
        let name = ns
            .metadata
            .name
            .clone()
            .expect("put_namespace needs metadata.name");
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Namespace");
        rest::namespace_defaults(&mut obj, &name);
        self.put_json(&format!("/api/v1/namespaces/{name}"), obj);
    }

    /// Creates or updates the lab namespace `name` for `owner` and `members`, exactly as a portal
    /// labels and annotates it.
    pub fn lab_namespace(&self, name: &str, owner: &str, members: &[&str]) {
        let lab = labgate_policies::Lab {
            namespace: name.to_string(),
            owner: owner.to_string(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        let (labels, annotations) = lab.metadata();
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some(name.to_string());
        ns.metadata.labels = Some(labels);
        ns.metadata.annotations = Some(annotations);
        self.put_namespace(ns);
    }

    /// Deletes a namespace the way the API server does: MODIFIED to Terminating now, its content
    /// removed (through admission, as the namespace controller) and DELETED shortly after.
    pub fn delete_namespace(&self, name: &str) {
        rest::begin_namespace_termination(self.shared(), name);
    }

    /// The stored object at an API path such as `/api/v1/namespaces/x`.
    pub fn get_json(&self, api_path: &str) -> Option<Value> {
        let (rt, ns, name) = object_path(api_path, None).ok()?;
        let store = self.shared().store.lock().expect("store lock");
        store
            .get(&rest::object_key(&rt, ns.as_deref(), &name))
            .cloned()
    }

    /// Writes an object straight into the store (no admission, no lifecycle checks); the path may
    /// name the object or its collection. Fills `apiVersion`, `kind`, name and namespace.
    pub fn put_json(&self, api_path: &str, mut obj: Value) {
        let (rt, ns, name) = object_path(api_path, Some(&obj))
            .unwrap_or_else(|e| panic!("put_json({api_path}): {e}"));
        if !obj.is_object() {
            panic!("put_json({api_path}): the object must be a JSON object");
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["name"] = json!(name);
        if let Some(ns) = &ns {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let mut store = self.shared().store.lock().expect("store lock");
        store.commit(rest::object_key(&rt, ns.as_deref(), &name), Some(obj));
    }

    /// Removes an object straight from the store (no admission; a namespace goes at once).
    pub fn delete_json(&self, api_path: &str) {
        let Ok((rt, ns, name)) = object_path(api_path, None) else {
            return;
        };
        let key = rest::object_key(&rt, ns.as_deref(), &name);
        let mut store = self.shared().store.lock().expect("store lock");
        if store.get(&key).is_some() {
            store.commit(key, None);
        }
    }

    // --- watch control ---

    /// Forgets the change history: watches resuming from any RV seen so far get an ERROR 410 event,
    /// and older `continue` tokens expire.
    pub fn compact_history(&self) {
        self.shared().store.lock().expect("store lock").compact();
    }

    /// Cuts every open watch connection now (mid-stream, no clean end).
    pub fn drop_watches(&self) {
        self.shared()
            .watch_cut
            .send_modify(|generation| *generation += 1);
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s); applies to
    /// watches started afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self
            .shared()
            .bookmark_interval
            .lock()
            .expect("bookmark lock") = interval;
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared()
            .store
            .lock()
            .expect("store lock")
            .resource_version()
    }

    // --- KubeVirt ---

    /// Adds (or replaces) a VMI: the `kubevirt.io/v1` object plus where its screen and console are.
    pub fn add_vmi(&self, ns: &str, name: &str, vmi: Vmi) {
        let obj = json!({
            "metadata": { "name": name, "namespace": ns },
            "spec": {
                "domain": {
                    "devices": {
                        "autoattachGraphicsDevice": vmi.vnc.is_some(),
                        "autoattachSerialConsole": vmi.console.is_some(),
                    }
                }
            },
            "status": { "phase": vmi.phase },
        });
        self.shared().kubevirt.set_upstreams(ns, name, vmi);
        self.put_json(
            &format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}"),
            obj,
        );
    }

    /// Adds (or replaces) a `kubevirt.io/v1` VirtualMachine whose template has (or lacks) a
    /// screen and a serial console, with `spec.runStrategy` as given (`Halted` for a stopped VM).
    pub fn add_vm(&self, ns: &str, name: &str, run_strategy: &str, screen: bool, console: bool) {
        let obj = json!({
            "metadata": { "name": name, "namespace": ns },
            "spec": {
                "runStrategy": run_strategy,
                "template": { "spec": { "domain": { "devices": {
                    "autoattachGraphicsDevice": screen,
                    "autoattachSerialConsole": console,
                } } } }
            },
            "status": { "printableStatus": if run_strategy == "Halted" { "Stopped" } else { "Running" } },
        });
        self.put_json(
            &format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}"),
            obj,
        );
    }

    /// Deletes a VMI (a DELETED event; its sessions end as when a VM stops).
    pub fn delete_vmi(&self, ns: &str, name: &str) {
        self.delete_json(&format!(
            "/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}"
        ));
    }

    /// Which KubeVirt version's screenshot behaviour to copy (default [`ScreenshotMode::Libvirt`]),
    /// and how long each capture waits before reading the screen (to make captures overlap).
    pub fn set_screenshot_mode(&self, mode: ScreenshotMode, delay: Duration) {
        *self
            .shared()
            .kubevirt
            .screenshot_setup
            .lock()
            .expect("kubevirt lock") = (mode, delay);
    }

    /// The screenshot requests received so far.
    pub fn screenshot_requests(&self) -> Vec<RecordedRequest> {
        self.subresource_requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/vnc/screenshot"))
            .collect()
    }

    /// Changes a VMI's `status.phase` (a MODIFIED event for VMI watchers).
    pub fn set_vmi_phase(&self, ns: &str, name: &str, phase: &str) {
        let path = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}");
        if let Some(mut vmi) = self.get_json(&path) {
            vmi["status"]["phase"] = json!(phase);
            self.put_json(&path, vmi);
        }
    }

    /// Pauses or resumes a VMI: sets or clears its `Paused` condition (a MODIFIED event).
    pub fn set_vmi_paused(&self, ns: &str, name: &str, paused: bool) {
        let path = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}");
        if let Some(mut vmi) = self.get_json(&path) {
            vmi["status"]["conditions"] = if paused {
                json!([{ "type": "Paused", "status": "True", "reason": "PausedByUser" }])
            } else {
                json!([])
            };
            self.put_json(&path, vmi);
        }
    }

    /// Makes the next `times` authenticated requests whose path contains `path_fragment` fail with
    /// `code` (500 InternalError, 429 TooManyRequests with `Retry-After: 1`, 503 ServiceUnavailable,
    /// anything else as a generic failure), before any other processing.
    pub fn fail_requests(&self, path_fragment: &str, code: u16, times: usize) {
        self.shared().failures.lock().expect("failure lock").push((
            path_fragment.to_string(),
            code,
            times,
        ));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared()
            .requests
            .lock()
            .expect("request log lock")
            .clone()
    }

    /// TLS handshakes accepted so far: (full, resumed from a session ticket).
    pub fn tls_handshakes(&self) -> (u64, u64) {
        let (full, resumed) = &self.inner.shared.tls_handshakes;
        (
            full.load(Ordering::Relaxed),
            resumed.load(Ordering::Relaxed),
        )
    }

    /// The requests to `subresources.kubevirt.io`.
    pub fn subresource_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/apis/subresources.kubevirt.io/"))
            .collect()
    }

    /// Installs (or removes) the validating admission hook called before every write with the
    /// `AdmissionReview` request JSON; `Err(status)` denies the write with that `Status`.
    /// The hook type is `Arc<dyn Fn(Value) -> BoxFuture<'static, Result<(), Value>> + Send + Sync>`.
    pub fn set_admission_hook(&self, hook: Option<AdmissionHook>) {
        *self.shared().admission_hook.lock().expect("hook lock") = hook;
    }

    /// Makes the VM subresource upgrades misbehave (`None`: behave).
    pub fn set_upgrade_fault(&self, fault: Option<UpgradeFault>) {
        *self.shared().upgrade_fault.lock().expect("fault lock") = fault;
    }

    /// The API server goes away: the port closes (connections are refused) and every open
    /// connection, watches included, is cut. The stored objects stay, and tests may change them
    /// while nobody can see it; [`StandIn::resume_serving`] brings the server back.
    pub async fn stop_serving(&self) {
        self.shared().serving.lock().expect("serving lock").cancel();
        let server = self.inner.server.lock().expect("server lock").take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }

    /// The API server comes back on the same address, with the same CA and objects.
    ///
    /// # Errors
    /// The address could not be bound again.
    pub async fn resume_serving(&self) -> anyhow::Result<()> {
        *self.shared().serving.lock().expect("serving lock") = CancellationToken::new();
        let listener = TcpListener::bind(self.inner.addr).await?;
        let server = tokio::spawn(accept_loop(
            self.shared().clone(),
            listener,
            self.inner.tls.clone(),
        ));
        *self.inner.server.lock().expect("server lock") = Some(server);
        Ok(())
    }

    /// Stops accepting, ends every watch and websocket session, and waits for the accept loop.
    pub async fn shutdown(&self) {
        self.shared().cancel.cancel();
        let server = self.inner.server.lock().expect("server lock").take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

/// Resolves an object path (or a collection path plus the object's own name).
fn object_path(
    api_path: &str,
    obj: Option<&Value>,
) -> Result<(ResourceType, Option<String>, String), String> {
    let Route::Resource(ApiPath {
        rt,
        namespace,
        name,
        ..
    }) = path::route(api_path)
    else {
        return Err("not a path of a served resource".to_string());
    };
    let name = name
        .or_else(|| obj?.pointer("/metadata/name")?.as_str().map(str::to_string))
        .ok_or("no object name in the path or the object")?;
    let namespace = namespace.or_else(|| {
        obj?.pointer("/metadata/namespace")?
            .as_str()
            .map(str::to_string)
    });
    if rt.namespaced && namespace.is_none() {
        return Err("a namespaced object needs a namespace".to_string());
    }
    Ok((rt, namespace, name))
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: tokio_rustls::TlsAcceptor) {
    let serving = shared.serving.lock().expect("serving lock").clone();
    loop {
        let (tcp, _) = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = serving.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let tls = tls.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let (full, resumptions) = &shared.tls_handshakes;
            if resumed { resumptions } else { full }.fetch_add(1, Ordering::Relaxed);
            let service_shared = shared.clone();
            let service = service_fn(move |req| handle(service_shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = shared.cancel.cancelled() => {}
                _ = serving.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// The identity behind a request plus the offered websocket subprotocols (token entry removed).
fn authenticate(shared: &Shared, headers: &HeaderMap) -> (Option<UserInfo>, Vec<String>) {
    let mut protocols: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let mut token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let is_upgrade = headers.get("upgrade").is_some();
    if is_upgrade {
        // Browsers cannot set headers on websockets; the API server accepts the token here.
        let mut from_protocol = None;
        protocols.retain(|p| match p.strip_prefix(BEARER_PROTOCOL_PREFIX) {
            Some(encoded) => {
                from_protocol = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                false
            }
            None => true,
        });
        if token.is_none() {
            token = from_protocol;
        }
    }
    let user = token.and_then(|t| shared.tokens.lock().expect("token lock").get(&t).cloned());
    (user, protocols)
}

/// Takes one injected failure matching `path`, if any is left.
fn injected_failure(shared: &Shared, path: &str) -> Option<u16> {
    let mut failures = shared.failures.lock().expect("failure lock");
    let index = failures
        .iter()
        .position(|(fragment, _, left)| *left > 0 && path.contains(fragment.as_str()))?;
    let entry = &mut failures[index];
    entry.2 -= 1;
    let code = entry.1;
    failures.retain(|(_, _, left)| *left > 0);
    Some(code)
}

/// The RBAC verb of a request (apiserver `pkg/endpoints/request/requestinfo.go`: a collection GET
/// is `list`, or `watch` with `watch=true`; PUT is `update`, DELETE on a collection
/// `deletecollection`) and, if `user` is denied it, the 403 the authorization filter answers
/// (`pkg/endpoints/handlers/responsewriters/errors.go` `forbiddenMessage`).
fn rbac_denial(
    shared: &Shared,
    user: &UserInfo,
    method: &hyper::Method,
    path: &ApiPath,
    query: &Query,
) -> Option<ApiError> {
    let collection = path.name.is_none();
    let verb = match (method.as_str(), collection) {
        ("GET", true) if matches!(query.get("watch"), Some("true" | "1")) => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => return None,
    };
    let denied = shared.denied_verbs.lock().expect("rbac lock");
    if !denied.contains(&(user.username.clone(), verb.to_string())) {
        return None;
    }
    let scope = match &path.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let why = format!(
        "User \"{}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
        user.username, path.rt.resource, path.rt.group
    );
    Some(match path.name.as_deref() {
        Some(name) => ApiError::forbidden(&path.rt, name, &why),
        // apimachinery `errors.NewForbidden` leaves the name out of a collection's message.
        None => ApiError::new(
            403,
            "Forbidden",
            format!("{} is forbidden: {why}", path.rt.qualified()),
            Some(serde_json::json!({ "kind": path.rt.resource })),
        ),
    })
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts")
}

fn error_response(error: ApiError) -> Response<Body> {
    json_response(error.code, &error.status)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let (user, protocols) = authenticate(&shared, req.headers());
    shared
        .requests
        .lock()
        .expect("request log lock")
        .push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            user: user.as_ref().map(|u| u.username.clone()),
        });
    let Some(user) = user else {
        return Ok(error_response(ApiError::unauthorized()));
    };
    if let Some(code) = injected_failure(&shared, &path) {
        let reason = match code {
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let mut response = error_response(ApiError::new(
            code,
            reason,
            "failure injected by the test",
            None,
        ));
        if code == 429 {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        }
        return Ok(response);
    }
    let query = Query::parse(&raw_query);
    if path == "/version" {
        return Ok(json_response(
            200,
            &json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0-labgate-standin", "platform": "linux/amd64" }),
        ));
    }
    let result = match path::route(&path) {
        Route::KubeVirtSubresource {
            namespace,
            name,
            kind,
        } => {
            let call = kubevirt::SubresourceCall {
                user: &user,
                namespace,
                name,
                kind,
                query: &query,
                protocols,
            };
            kubevirt::serve(&shared, call, req).await
        }
        Route::Resource(api_path) => {
            if let Some(denied) = rbac_denial(&shared, &user, &method, &api_path, &query) {
                return Ok(error_response(denied));
            }
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => {
                    let call = rest::Call {
                        shared: &shared,
                        user: &user,
                        path: api_path,
                        query: &query,
                        content_type,
                        body: body.to_bytes(),
                    };
                    rest::handle(call, &method).await
                }
                Err(e) => Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!("reading the request body: {e}"),
                    None,
                )),
            }
        }
        Route::NotFound => Err(ApiError::no_such_path()),
    };
    Ok(result.unwrap_or_else(error_response))
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn query_skips_empty_pairs_and_decodes() {
        let q = Query::parse("&labelSelector=labgate.io%2Flab%3Dtrue&watch=true&&x=a+b&flag");
        assert_eq!(q.get("labelSelector"), Some("labgate.io/lab=true"));
        assert_eq!(q.get("watch"), Some("true"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
    }
}
