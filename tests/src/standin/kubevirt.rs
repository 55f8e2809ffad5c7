//! KubeVirt's `vnc` and `console` websocket subresources, answered the way virt-api and
//! virt-handler do: RBAC and VMI checks as `Status` before the upgrade, `plain.kubevirt.io`
//! negotiation, a byte bridge to a real upstream, and one session per VMI and kind.
//!
//! Framing copies virt-handler: each upstream read becomes one Binary message, client Binary
//! messages go upstream, Text messages are silently dropped, Close means EOF. No pings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::path::ResourceType;
use super::rest::object_key;
use super::status::ApiError;
use super::{Body, Query, Shared, UserInfo};

/// The only subprotocol KubeVirt speaks.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// A VMI fixture: its phase and where its screen and serial console really are.
#[derive(Debug, Clone)]
pub struct Vmi {
    /// `Running`, `Scheduled`, `Pending`, `Failed`, …
    pub phase: String,
    /// `None`: no graphics device (`autoattachGraphicsDevice: false`).
    pub vnc: Option<UpstreamAddr>,
    /// `None`: no serial console (`autoattachSerialConsole: false`).
    pub console: Option<UpstreamAddr>,
}

impl Vmi {
    /// A running VMI with the given upstreams.
    pub fn running(vnc: Option<UpstreamAddr>, console: Option<UpstreamAddr>) -> Vmi {
        Vmi {
            phase: "Running".to_string(),
            vnc,
            console,
        }
    }
}

/// Where an upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Ways the subresource upgrade of `vnc`/`console` can misbehave, for fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeFault {
    /// The request is read and never answered (a hung virt-api or virt-handler).
    Hang,
    /// 101 Switching Protocols, then the first half of a binary websocket frame and the
    /// connection closes (the VM side dying mid-frame).
    HalfFrame,
}

/// Upstream addresses per VMI and the live sessions.
#[derive(Default)]
pub struct KubeVirt {
    upstreams: Mutex<HashMap<(String, String), Vmi>>,
    sessions: Mutex<HashMap<SessionKey, Session>>,
    next_session: AtomicU64,
    /// Which KubeVirt's screenshots to copy, and a delay before each capture.
    pub(crate) screenshot_setup: Mutex<(super::screenshot::ScreenshotMode, std::time::Duration)>,
}

type SessionKey = (String, String, String);

struct Session {
    id: u64,
    kick: CancellationToken,
}

impl KubeVirt {
    pub fn set_upstreams(&self, ns: &str, name: &str, vmi: Vmi) {
        self.upstreams
            .lock()
            .expect("kubevirt lock")
            .insert((ns.to_string(), name.to_string()), vmi);
    }

    pub(crate) fn upstream(&self, ns: &str, name: &str, kind: &str) -> Option<UpstreamAddr> {
        let upstreams = self.upstreams.lock().expect("kubevirt lock");
        let vmi = upstreams.get(&(ns.to_string(), name.to_string()))?;
        match kind {
            "vnc" => vmi.vnc.clone(),
            _ => vmi.console.clone(),
        }
    }

    pub(crate) fn has_session(&self, key: &SessionKey) -> bool {
        self.sessions
            .lock()
            .expect("session lock")
            .contains_key(key)
    }

    /// Registers a new session, kicking the previous one for the same VMI and kind.
    pub(crate) fn open_session(&self, key: SessionKey) -> (u64, CancellationToken) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let kick = CancellationToken::new();
        let previous = self.sessions.lock().expect("session lock").insert(
            key,
            Session {
                id,
                kick: kick.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.kick.cancel();
        }
        (id, kick)
    }

    pub(crate) fn close_session(&self, key: &SessionKey, id: u64) {
        let mut sessions = self.sessions.lock().expect("session lock");
        if sessions.get(key).is_some_and(|s| s.id == id) {
            sessions.remove(key);
        }
    }

    /// Ends every session of a VMI the way a dying VM does: the connection just drops.
    fn kick_vmi(&self, ns: &str, name: &str) {
        let mut sessions = self.sessions.lock().expect("session lock");
        sessions.retain(|(s_ns, s_name, _), session| {
            let hit = s_ns == ns && s_name == name;
            if hit {
                session.kick.cancel();
            }
            !hit
        });
    }
}

/// Follows VMI changes: when a VMI is deleted or stops running (by any path: API, namespace
/// deletion, [`super::StandIn::set_vmi_phase`]), its vnc/console sessions end, as they do when the
/// VM's sockets go away on a real node.
pub async fn end_sessions_of_stopped_vmis(shared: std::sync::Arc<Shared>) {
    let mut changes = shared.store.lock().expect("store lock").subscribe_now();
    loop {
        let change = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            received = changes.recv() => match received {
                Ok(change) => change,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        if change.key.group != "kubevirt.io" || change.key.resource != "virtualmachineinstances" {
            continue;
        }
        let running = change
            .new
            .as_ref()
            .and_then(|vmi| vmi.pointer("/status/phase"))
            .and_then(Value::as_str)
            == Some("Running");
        if !running {
            shared
                .kubevirt
                .kick_vmi(&change.key.namespace, &change.key.name);
        }
    }
}

/// One subresource request, already authenticated.
pub struct SubresourceCall<'a> {
    pub user: &'a UserInfo,
    pub namespace: String,
    pub name: String,
    pub kind: String,
    pub query: &'a Query,
    /// Offered subprotocols, with the bearer-token entry already removed.
    pub protocols: Vec<String>,
}

fn subresource_type() -> ResourceType {
    ResourceType {
        group: "subresources.kubevirt.io".into(),
        version: "v1".into(),
        resource: "virtualmachineinstances".into(),
        kind: "VirtualMachineInstance".into(),
        namespaced: true,
    }
}

/// Answers the request: an error `Status`, or 101 with the bridge started in the background.
pub async fn serve(
    shared: &std::sync::Arc<Shared>,
    call: SubresourceCall<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if req.method() != hyper::Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    if !matches!(call.kind.as_str(), "vnc" | "console" | "vnc/screenshot") {
        return Err(ApiError::no_such_path());
    }
    let allowed = shared
        .subresource_users
        .lock()
        .expect("rbac lock")
        .contains(&call.user.username)
        && !shared
            .denied_subresources
            .lock()
            .expect("rbac lock")
            .contains(&(call.user.username.clone(), call.kind.clone()));
    if !allowed {
        return Err(ApiError::forbidden(
            &subresource_type(),
            &call.name,
            &format!(
                "User \"{}\" cannot get resource \"virtualmachineinstances/{}\" in API group \"subresources.kubevirt.io\" in the namespace \"{}\"",
                call.user.username, call.kind, call.namespace
            ),
        ));
    }
    if call.kind == "vnc/screenshot" {
        return super::screenshot::serve(shared, call).await;
    }
    check_vmi(shared, &call)?;
    let key: SessionKey = (call.namespace.clone(), call.name.clone(), call.kind.clone());
    if call.kind == "vnc"
        && call.query.get("preserveSession") == Some("true")
        && shared.kubevirt.has_session(&key)
    {
        return Err(ApiError::internal(
            "Can't connect to websocket (503): Active VNC connection. Request denied.",
        ));
    }
    let ws_key = websocket_key(&req)?;
    let fault = *shared.upgrade_fault.lock().expect("fault lock");
    match fault {
        Some(UpgradeFault::Hang) => {
            // Held until the client gives up (hyper then drops this future) or the server stops.
            shared.cancel.cancelled().await;
            return Err(ApiError::internal("stand-in stopped"));
        }
        Some(UpgradeFault::HalfFrame) => {
            shared.runtime.spawn(async move {
                if let Ok(upgraded) = hyper::upgrade::on(req).await {
                    let mut io = TokioIo::new(upgraded);
                    // FIN + binary, 16-bit length 256, then only 4 of the 256 payload bytes.
                    let _ = io
                        .write_all(&[0x82, 0x7e, 0x01, 0x00, b'R', b'F', b'B', b' '])
                        .await;
                    let _ = io.flush().await;
                    let _ = io.shutdown().await;
                }
            });
            return Ok(switching(&ws_key, &call.protocols));
        }
        None => {}
    }
    let addr = shared
        .kubevirt
        .upstream(&call.namespace, &call.name, &call.kind)
        .ok_or_else(|| ApiError::internal("upstream disappeared"))?;
    let upstream = dial(&addr).await.map_err(|e| {
        ApiError::internal(format!("Can't connect to websocket: dialing {addr:?}: {e}"))
    })?;

    let (id, kick) = shared.kubevirt.open_session(key.clone());
    let shared_task = shared.clone();
    // A stopped API server cuts the sessions it proxies too.
    let serving = shared.serving.lock().expect("serving lock").clone();
    shared.runtime.spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            tokio::select! {
                () = bridge(ws, upstream, &kick, &shared_task.cancel) => {}
                () = serving.cancelled() => {}
            }
        }
        shared_task.kubevirt.close_session(&key, id);
    });
    Ok(switching(&ws_key, &call.protocols))
}

/// The 101 answer to a websocket upgrade.
fn switching(ws_key: &str, protocols: &[String]) -> Response<Body> {
    let mut response = Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(ws_key.as_bytes()));
    if protocols.iter().any(|p| p == PLAIN_PROTOCOL) {
        response = response.header("sec-websocket-protocol", PLAIN_PROTOCOL);
    }
    response
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts")
}

/// virt-api's validation order: device present, not Failed (console), not paused, Running.
/// The paused check and its 409 "VMI is paused" follow the VNC and console handlers'
/// `validate` in KubeVirt's pkg/virt-api/rest/subresource.go (console.go in newer releases).
pub(crate) fn check_vmi(shared: &Shared, call: &SubresourceCall<'_>) -> Result<(), ApiError> {
    let vmi_rt =
        ResourceType::lookup("kubevirt.io", "v1", "virtualmachineinstances").expect("VMIs served");
    let (phase, paused) = {
        let store = shared.store.lock().expect("store lock");
        let vmi = store
            .get(&object_key(&vmi_rt, Some(&call.namespace), &call.name))
            .ok_or_else(|| ApiError::not_found(&vmi_rt, &call.name))?;
        let phase = vmi
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // The Paused condition with status "True", as virt-handler sets it.
        let paused = vmi
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Paused")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            });
        (phase, paused)
    };
    if shared
        .kubevirt
        .upstream(&call.namespace, &call.name, &call.kind)
        .is_none()
    {
        return Err(ApiError::bad_request(if call.kind == "vnc" {
            "No graphics devices are present."
        } else {
            "No serial consoles are present."
        }));
    }
    if call.kind == "console" && phase == "Failed" {
        return Err(vmi_conflict(&call.name, "VMI is in failed status"));
    }
    if paused {
        return Err(vmi_conflict(&call.name, "VMI is paused"));
    }
    if phase != "Running" {
        return Err(ApiError::bad_request("VMI is not running"));
    }
    Ok(())
}

/// The 409 `errors.NewConflict(v1.Resource("virtualmachineinstance"), name, err)` gives.
fn vmi_conflict(name: &str, cause: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"{name}\": {cause}"
        ),
        Some(
            serde_json::json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachineinstance" }),
        ),
    )
}

/// The client's `Sec-WebSocket-Key`, or the error gorilla gives for a non-websocket request.
fn websocket_key(req: &Request<Incoming>) -> Result<String, ApiError> {
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    if !header("connection").iter().any(|t| t == "upgrade") {
        return Err(ApiError::bad_request(
            "websocket: the client is not using the websocket protocol: 'upgrade' token not found in 'Connection' header",
        ));
    }
    if !header("upgrade").iter().any(|t| t == "websocket") {
        return Err(ApiError::bad_request(
            "websocket: the client is not using the websocket protocol: 'websocket' token not found in 'Upgrade' header",
        ));
    }
    if !header("sec-websocket-version").iter().any(|t| t == "13") {
        return Err(ApiError::bad_request(
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        ));
    }
    req.headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("websocket: not a websocket handshake: 'Sec-WebSocket-Key' header is missing or blank"))
}

pub(crate) trait Upstream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Upstream for T {}

pub(crate) async fn dial(addr: &UpstreamAddr) -> std::io::Result<Box<dyn Upstream>> {
    Ok(match addr {
        UpstreamAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        UpstreamAddr::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
    })
}

/// Copies bytes both ways until either side ends. A kick or shutdown drops the connection without
/// a close frame (the client sees 1006), as virt-handler does.
async fn bridge<S>(
    mut ws: WebSocketStream<S>,
    mut upstream: Box<dyn Upstream>,
    kick: &CancellationToken,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            _ = kick.cancelled() => return,
            _ = shutdown.cancelled() => return,
            read = upstream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = ws.close(None).await;
                    return;
                }
                Ok(n) => {
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            },
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if upstream.write_all(&data).await.is_err() {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
                // virt-handler's binaryReader skips text messages.
                Some(Ok(Message::Text(_))) => {}
                Some(Ok(Message::Close(_))) => {
                    let _ = upstream.shutdown().await;
                    // Sends the reply tungstenite queued, completing the closing handshake.
                    let _ = SinkExt::close(&mut ws).await;
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    let _ = upstream.shutdown().await;
                    return;
                }
            },
        }
    }
}
