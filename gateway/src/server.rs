//! The gateway as a hyper service, and the accept loop that serves it.
//!
//! A session request flows through small steps, each in its own module:
//! [`route`](crate::route) → [`credentials`](crate::credentials) →
//! [`token`](crate::token) → [`authz`](crate::authz) →
//! [`sessions`](crate::sessions) (limits, console ownership) →
//! [`upstream`](crate::upstream) → [`splice`](crate::splice).
//! Every refusal is decided before any upstream connection is made.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{
    CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::{self, Grant};
use crate::credentials;
use crate::index::LabIndex;
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::route::{self, Route, Target};
use crate::sessions::{ConsoleClaim, ConsoleHold, ConsoleKey, Limits, SessionPermit, Sessions};
use crate::splice::{self, ByteCounts, ByteMetrics, SpliceSettings};
use crate::token::{TokenError, TokenVerifier};
use crate::upstream::{Backend, UpstreamSocket, UpstreamTarget};

/// Response type of the service.
pub type GatewayResponse = Response<Full<Bytes>>;

/// Runtime settings of the gateway (see `Config` for the flags behind them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Session limits.
    pub limits: Limits,
    /// Pings, idle timeout, close timeout.
    pub splice: SpliceSettings,
    /// Time allowed for the TLS handshake and the HTTP request head.
    pub handshake_timeout: Duration,
    /// Time allowed to open the upstream websocket.
    pub upstream_connect_timeout: Duration,
    /// Largest request head accepted (bytes, at least 8192).
    pub max_header_bytes: usize,
    /// Largest websocket message accepted from either side.
    pub max_message_bytes: usize,
    /// Sessions end after this long, whatever the token says.
    pub max_session_duration: Option<Duration>,
    /// On shutdown, how long sessions may go on before they are closed.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Websocket settings for both sides: bounded messages and buffers, so
    /// an idle session costs little and a flood cannot grow memory.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_message_bytes.saturating_mul(2).max(256 * 1024))
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

struct Shared {
    settings: Settings,
    verifier: Arc<TokenVerifier>,
    index: Arc<LabIndex>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    draining: AtomicBool,
    /// Cancelled when the listener stops: idle HTTP connections close.
    stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: sessions close with 1001.
    force_close: CancellationToken,
    tracker: TaskTracker,
}

/// The gateway: a cheap-to-clone handle usable as a hyper service
/// ([`Gateway::handle`]) or served on its own listener ([`Gateway::serve`]).
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Assembles a gateway from its parts.
    pub fn new(
        settings: Settings,
        verifier: Arc<TokenVerifier>,
        index: Arc<LabIndex>,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        let sessions = Sessions::new(settings.limits);
        Gateway {
            shared: Arc::new(Shared {
                settings,
                verifier,
                index,
                backend,
                metrics,
                sessions,
                draining: AtomicBool::new(false),
                stop_accepting: CancellationToken::new(),
                force_close: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The metrics registry, to serve or merge elsewhere.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Whether the gateway should receive traffic: index synced, not draining.
    pub fn is_ready(&self) -> bool {
        self.shared.index.is_ready() && !self.shared.draining.load(Ordering::Acquire)
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.shared.sessions.open_sessions()
    }

    /// Handles one HTTP request: a session upgrade, a refusal, or `/healthz`,
    /// `/readyz`, `/metrics`. Mount it in any hyper (or axum) server that
    /// enables upgrades; session tasks outlive the request.
    pub async fn handle<B>(&self, req: Request<B>) -> GatewayResponse {
        match route::parse(req.uri().path(), req.uri().query()) {
            Target::Session(route) => self.session(req, route).await,
            Target::BadSession => self.refuse(req, None, None, Refusal::BadRequest),
            other => self.admin(&other),
        }
    }

    /// Answers the admin endpoints only (for a separate admin listener).
    pub async fn handle_admin<B>(&self, req: Request<B>) -> GatewayResponse {
        self.admin(&route::parse(req.uri().path(), None))
    }

    fn admin(&self, target: &Target) -> GatewayResponse {
        match target {
            Target::Health => text(StatusCode::OK, "ok\n"),
            Target::Ready if self.is_ready() => text(StatusCode::OK, "ready\n"),
            Target::Ready => text(
                StatusCode::SERVICE_UNAVAILABLE,
                if self.shared.draining.load(Ordering::Acquire) {
                    "draining\n"
                } else {
                    "lab index not synced yet\n"
                },
            ),
            Target::Metrics => Response::builder()
                .header(CONTENT_TYPE, prometheus::TEXT_FORMAT)
                .body(Full::new(Bytes::from(self.shared.metrics.render())))
                .unwrap_or_default(),
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
        }
    }

    async fn session<B>(&self, req: Request<B>, route: Route) -> GatewayResponse {
        let shared = &self.shared;
        if shared.draining.load(Ordering::Acquire) {
            return self.refuse(req, Some(&route), None, Refusal::ShuttingDown);
        }
        let websocket = match websocket_key(&req) {
            Ok(key) => key,
            Err(()) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"bad_request","reason":"malformed websocket upgrade"}"#.into(),
                );
            }
        };
        // Subscribe before deciding, so a change racing the decision is seen.
        let changes = shared.index.subscribe();
        let decided = Instant::now();
        let decision = self.authorize(&route, req.headers()).await;
        shared
            .metrics
            .authorization_seconds
            .observe(decided.elapsed().as_secs_f64());
        let grant = match decision {
            Ok(grant) => grant,
            Err(refusal) => return self.refuse(req, Some(&route), None, refusal),
        };
        let Some(ws_key) = websocket else {
            // Authorised, but a console needs a websocket.
            return json(
                StatusCode::UPGRADE_REQUIRED,
                r#"{"error":"upgrade_required","reason":"open this URL as a websocket"}"#.into(),
            );
        };
        let permit = match shared.sessions.admit(&grant.user) {
            Ok(p) => p,
            Err(refusal) => return self.refuse(req, Some(&route), Some(&grant.user), refusal),
        };
        let mut claim = shared.sessions.claim(ConsoleKey {
            namespace: route.namespace.clone(),
            vmi: route.vmi.clone(),
            kind: route.kind,
        });
        let connecting = Instant::now();
        let target = UpstreamTarget {
            namespace: &route.namespace,
            vmi: &route.vmi,
            kind: route.kind,
        };
        let connected = tokio::time::timeout(
            shared.settings.upstream_connect_timeout,
            shared
                .backend
                .connect(target, shared.settings.websocket_config()),
        )
        .await;
        shared
            .metrics
            .upstream_connect_seconds
            .observe(connecting.elapsed().as_secs_f64());
        let upstream = match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                claim.abandon();
                tracing::info!(lab = %route.namespace, vmi = %route.vmi, kind = %route.kind, error = %e, "upstream refused");
                return self.refuse(req, Some(&route), Some(&grant.user), e.refusal());
            }
            Err(_) => {
                claim.abandon();
                tracing::warn!(lab = %route.namespace, vmi = %route.vmi, kind = %route.kind, "upstream connect timed out");
                return self.refuse(req, Some(&route), Some(&grant.user), Refusal::UpstreamError);
            }
        };
        claim.confirm();

        let response = switching_protocols(&ws_key, req.headers());
        let on_upgrade = hyper::upgrade::on(req);
        let gateway = self.clone();
        shared.tracker.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let client = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(gateway.shared.settings.websocket_config()),
                    )
                    .await;
                    gateway
                        .run_session(client, upstream, route, grant, claim, permit, changes)
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
            }
        });
        response
    }

    async fn authorize(&self, route: &Route, headers: &HeaderMap) -> Result<Grant, Refusal> {
        let token = credentials::token(route, headers).ok_or(Refusal::BadToken)?;
        let claims = self
            .shared
            .verifier
            .verify(&token)
            .await
            .map_err(|e| match e {
                TokenError::Expired => Refusal::TokenExpired,
                TokenError::Invalid => Refusal::BadToken,
            })?;
        authz::authorize(route, &claims, &self.shared.index)
    }

    #[allow(clippy::too_many_arguments)] // the parts of one session, handed over once
    async fn run_session<C>(
        &self,
        client: WebSocketStream<C>,
        upstream: UpstreamSocket,
        route: Route,
        grant: Grant,
        claim: ConsoleClaim,
        permit: SessionPermit,
        changes: broadcast::Receiver<Arc<str>>,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = &self.shared;
        let kind = route.kind.as_str();
        let started = Instant::now();
        let active = shared.metrics.active_sessions.with_label_values(&[kind]);
        active.inc();
        let counts = ByteCounts::default();
        let byte_metrics = ByteMetrics {
            client_to_upstream: shared
                .metrics
                .bytes
                .with_label_values(&[kind, "client_to_upstream"]),
            upstream_to_client: shared
                .metrics
                .bytes
                .with_label_values(&[kind, "upstream_to_client"]),
        };
        let stop = self.stop_signal(&grant, &claim.hold, changes);
        let hold = claim.hold.clone();
        let loss_reason = move || hold.loss_reason();
        let end = splice::splice(
            client,
            upstream,
            shared.settings.splice,
            stop,
            &loss_reason,
            &counts,
            &byte_metrics,
        )
        .await;
        active.dec();
        shared
            .metrics
            .sessions
            .with_label_values(&[kind, end.outcome()])
            .inc();
        tracing::info!(
            target: "labgate::audit",
            user = %grant.user,
            lab = %route.namespace,
            vmi = %route.vmi,
            kind,
            bytes_client_to_vm = counts.client_to_upstream.load(Ordering::Relaxed),
            bytes_vm_to_client = counts.upstream_to_client.load(Ordering::Relaxed),
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = end.outcome(),
            close_reason = %end.describe(),
            "session ended"
        );
        drop(claim);
        drop(permit);
    }

    /// Resolves with the reason the gateway must end a session: taken over,
    /// lab revoked, token expired, maximum duration, or shutdown.
    fn stop_signal(
        &self,
        grant: &Grant,
        hold: &Arc<ConsoleHold>,
        mut changes: broadcast::Receiver<Arc<str>>,
    ) -> impl Future<Output = Refusal> + Send + 'static {
        let shared = self.shared.clone();
        let grant = grant.clone();
        let hold = hold.clone();
        let now = tokio::time::Instant::now();
        let token_deadline = now + Duration::from_secs(grant.token_exp.saturating_sub(unix_now()));
        let max_deadline = shared.settings.max_session_duration.map(|d| now + d);
        async move {
            // A change may have landed between the decision and now.
            if authz::recheck(&grant, &shared.index).is_err() {
                return Refusal::Revoked;
            }
            loop {
                tokio::select! {
                    _ = hold.kicked() => return Refusal::TakenOver,
                    _ = shared.force_close.cancelled() => return Refusal::ShuttingDown,
                    _ = tokio::time::sleep_until(token_deadline) => return Refusal::SessionExpired,
                    _ = async {
                        match max_deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => return Refusal::MaxDuration,
                    changed = changes.recv() => match changed {
                        Ok(ns) if *ns != *grant.namespace => {}
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if authz::recheck(&grant, &shared.index).is_err() {
                                return Refusal::Revoked;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    },
                }
            }
        }
    }

    /// Reports a refusal: to a websocket client as an immediate close frame
    /// after a completed handshake, to a plain HTTP client as status + JSON.
    fn refuse<B>(
        &self,
        req: Request<B>,
        route: Option<&Route>,
        user: Option<&str>,
        refusal: Refusal,
    ) -> GatewayResponse {
        let kind = route.map_or("unknown", |r| r.kind.as_str());
        self.shared
            .metrics
            .sessions
            .with_label_values(&[kind, refusal.outcome()])
            .inc();
        tracing::info!(
            target: "labgate::audit",
            user = user.unwrap_or("-"),
            lab = route.map_or("-", |r| r.namespace.as_str()),
            vmi = route.map_or("-", |r| r.vmi.as_str()),
            kind,
            outcome = refusal.outcome(),
            close_reason = refusal.reason(),
            "session refused"
        );
        let Ok(Some(ws_key)) = websocket_key(&req) else {
            return json(refusal.http_status(), refusal.json_body());
        };
        let response = switching_protocols(&ws_key, req.headers());
        let on_upgrade = hyper::upgrade::on(req);
        let ws_config = self.shared.settings.websocket_config();
        let close_timeout = self.shared.settings.splice.close_timeout;
        self.shared.tracker.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config),
            )
            .await;
            let _ = ws.close(Some(splice::close_frame(refusal))).await;
            // Wait briefly for the client's close reply so it sees a clean close.
            let _ = tokio::time::timeout(close_timeout, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        });
        response
    }

    /// Serves the gateway on `listener` (TLS when `tls` is given) until
    /// `shutdown` resolves, then drains: stops accepting, turns unready, lets
    /// sessions run for the grace period, and closes the rest with 1001.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let handshake = gateway.shared.settings.handshake_timeout;
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                gateway.serve_connection(TokioIo::new(tls_stream)).await
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                    None => gateway.serve_connection(TokioIo::new(stream)).await,
                }
            });
        }
        drop(listener);
        tracing::info!(
            sessions = self.open_sessions(),
            grace = ?self.shared.settings.shutdown_grace,
            "shutting down: no longer accepting, draining sessions"
        );
        self.shared.draining.store(true, Ordering::Release);
        self.shared.stop_accepting.cancel();
        self.drain().await;
    }

    /// Lets sessions run for the grace period, then closes them ("going away").
    pub async fn drain(&self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        shared.tracker.close();
        if tokio::time::timeout(shared.settings.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            shared.force_close.cancel();
            let _ = tokio::time::timeout(
                shared.settings.splice.close_timeout * 2,
                shared.tracker.wait(),
            )
            .await;
        }
        tracing::info!("drained");
    }

    /// Serves HTTP/1.1 (with upgrades) on one connection; on shutdown,
    /// finishes the request in flight and closes idle keep-alive connections.
    async fn serve_connection<I>(&self, io: TokioIo<I>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req).await) }
        });
        let settings = &self.shared.settings;
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.handshake_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = &mut conn => {}
            _ = self.shared.stop_accepting.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(settings.handshake_timeout, conn).await;
            }
        }
    }

    /// Serves only `/healthz`, `/readyz` and `/metrics` on a plain-HTTP
    /// listener until the task is dropped (kept up while draining, so probes
    /// see the gateway turn unready).
    pub async fn serve_admin(&self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle_admin(req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// `Ok(Some(key))` for a well-formed websocket upgrade, `Ok(None)` for a
/// plain request, `Err(())` for a broken upgrade attempt.
fn websocket_key<B>(req: &Request<B>) -> Result<Option<String>, ()> {
    let headers = req.headers();
    let wants_upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return Ok(None);
    }
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let version_ok = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    match (
        req.method() == Method::GET,
        connection_upgrade,
        version_ok,
        key,
    ) {
        (true, true, true, Some(key)) => Ok(Some(key.to_string())),
        _ => Err(()),
    }
}

fn switching_protocols(ws_key: &str, headers: &HeaderMap) -> GatewayResponse {
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(ws_key.as_bytes()));
    if let Some(protocol) = credentials::negotiate_protocol(headers) {
        response = response.header(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response.body(Full::default()).unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> GatewayResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn json(status: StatusCode, body: String) -> GatewayResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
