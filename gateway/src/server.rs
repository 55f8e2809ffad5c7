//! The gateway as a hyper service: the request pipeline of a session.
//!
//! A session request flows through small steps, each in its own module:
//! [`route`](crate::route) → [`credentials`](crate::credentials) →
//! [`token`](crate::token) → [`authz`](crate::authz) →
//! [`sessions`](crate::sessions) (limits, console ownership) →
//! [`backend`](crate::backend) → [`splice`](crate::splice).
//! Every refusal is decided before any upstream connection is made.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::{self, Grant};
use crate::backend::{Backend, UpstreamIo, UpstreamTarget};
use crate::credentials;
use crate::end_cork::EndCork;
use crate::index::LabIndex;
use crate::metrics::Metrics;
use crate::preauth::{PreAuth, PreAuthLimits, PreAuthSlot};
use crate::refusal::Refusal;
use crate::respond::{bad_upgrade, json, switching_protocols, text, unix_now, websocket_key};
use crate::route::{self, Route, Target};
use crate::sessions::{ConsoleClaim, ConsoleHold, ConsoleKey, Limits, SessionPermit, Sessions};
use crate::splice::{self, ByteCounts, ByteMetrics, SpliceSettings};
use crate::token::{TokenError, TokenVerifier};
use crate::viewer::{self, ViewerSettings};

/// Response type of the service.
pub type GatewayResponse = Response<Full<Bytes>>;

/// Runtime settings of the gateway (see `Config` for the flags behind them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Session limits.
    pub limits: Limits,
    /// Pings, idle timeout, close timeout.
    pub splice: SpliceSettings,
    /// Time allowed for the TLS handshake and the HTTP request head together.
    pub handshake_timeout: Duration,
    /// Caps on connections not yet authorised.
    pub preauth: PreAuthLimits,
    /// Time allowed to open the upstream websocket.
    pub upstream_connect_timeout: Duration,
    /// Largest request head accepted (bytes, at least 8192).
    pub max_header_bytes: usize,
    /// Largest websocket message accepted from either side (also in `splice`).
    pub max_message_bytes: usize,
    /// Sessions end after this long, whatever the token says.
    pub max_session_duration: Option<Duration>,
    /// On shutdown, how long sessions may go on before they are closed.
    pub shutdown_grace: Duration,
    /// Screenshot cache, timeout and takeover guard.
    pub screenshots: crate::screenshot::ScreenshotSettings,
    /// Path prefix the gateway is mounted under when nothing in front strips it
    /// (`/labgate`); `None` serves from `/`.
    pub base_path: Option<String>,
    /// Headers of the viewer page.
    pub viewer: ViewerSettings,
}

impl Settings {
    /// Websocket settings for the short-lived sockets that only send a
    /// refusal: small buffers, bounded messages.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) index: Arc<LabIndex>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sessions: Arc<Sessions>,
    /// Connections accepted by [`Gateway::serve`] and not yet authorised.
    pub(crate) preauth: Arc<PreAuth>,
    /// Screenshot cache and single flight ([`crate::lab_api`]).
    pub(crate) screenshots: crate::screenshot::Screenshots,
    pub(crate) draining: AtomicBool,
    /// `/healthz`, `/readyz`, `/metrics` are served by [`Gateway::handle`] too
    /// (false once an admin listener serves them instead).
    pub(crate) admin_on_main: AtomicBool,
    /// Cancelled when the listener stops: idle HTTP connections close.
    pub(crate) stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: sessions close with 1001.
    pub(crate) force_close: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// The gateway: a cheap-to-clone handle usable as a hyper service
/// ([`Gateway::handle`]) or served on its own listener ([`Gateway::serve`]).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
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
        let preauth = PreAuth::new(
            settings.preauth,
            metrics.preauth_connections.clone(),
            metrics.preauth_rejected.clone(),
        );
        let screenshots =
            crate::screenshot::Screenshots::new(settings.screenshots, metrics.clone());
        Gateway {
            shared: Arc::new(Shared {
                screenshots,
                settings,
                verifier,
                index,
                backend,
                metrics,
                sessions,
                preauth,
                draining: AtomicBool::new(false),
                admin_on_main: AtomicBool::new(true),
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

    /// Whether the gateway should receive traffic: index synced and not
    /// stale past `--index-unready-after`, not draining.
    pub fn is_ready(&self) -> bool {
        self.shared.index.readiness().is_ok() && !self.shared.draining.load(Ordering::Acquire)
    }

    /// Stops [`Gateway::handle`] from answering `/healthz`, `/readyz` and
    /// `/metrics` (404), for when [`Gateway::serve_admin`] serves them.
    pub fn move_admin_endpoints(&self) {
        self.shared.admin_on_main.store(false, Ordering::Release);
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.shared.sessions.open_sessions()
    }

    /// Handles one HTTP request (below `--base-path` when set): a session upgrade, a refusal,
    /// the viewer page and its assets (see [`viewer`](crate::viewer)), or `/healthz`,
    /// `/readyz`, `/metrics` (404 after [`Gateway::move_admin_endpoints`]). Mount it in any hyper (or axum) server that
    /// enables upgrades; session tasks outlive the request.
    pub async fn handle<B>(&self, req: Request<B>) -> GatewayResponse {
        let target = match self.local_path(req.uri().path()) {
            Some(path) => route::parse(path, req.uri().query()),
            // Probes address the process, not the mount: the admin endpoints answer at the
            // root too (when they are on this listener at all).
            None => match route::parse(req.uri().path(), None) {
                admin @ (Target::Health | Target::Ready | Target::Metrics) => admin,
                _ => Target::NotFound,
            },
        };
        // The request line as received, minus anything that could be a token.
        tracing::debug!(target: "labgate::request", method = %req.method(), path = %target.log_path(), "request");
        match target {
            Target::Session(route) => self.session(req, route).await,
            Target::LabListing(lab) => self.lab_listing(req, lab).await,
            Target::Screenshot(route) => self.screenshot(req, route).await,
            Target::BadSession => self.refuse(req, None, None, Refusal::BadRequest),
            Target::Viewer(_) => viewer::page(&req, &self.shared.settings.viewer),
            Target::ViewerSlash(lab) => viewer::redirect_without_slash(&lab),
            Target::Asset(name) => viewer::asset(&req, &name),
            other if self.shared.admin_on_main.load(Ordering::Acquire) => self.admin(&other),
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
        }
    }

    /// The path below `--base-path`, or `None` for a path outside it.
    fn local_path<'p>(&self, path: &'p str) -> Option<&'p str> {
        match &self.shared.settings.base_path {
            None => Some(path),
            Some(base) => path
                .strip_prefix(base.as_str())
                .filter(|rest| rest.starts_with('/')),
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
            Target::Ready => {
                let why = if self.shared.draining.load(Ordering::Acquire) {
                    "draining".to_string()
                } else {
                    self.shared.index.readiness().err().unwrap_or_default()
                };
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from(format!("{why}\n"))))
                    .unwrap_or_default()
            }
            Target::Metrics => {
                let metrics = &self.shared.metrics;
                metrics
                    .index_stale_seconds
                    .set(self.shared.index.staleness().as_secs_f64());
                metrics.refresh_runtime();
                Response::builder()
                    .header(CONTENT_TYPE, prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(metrics.render())))
                    .unwrap_or_default()
            }
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
            Err(why) => return bad_upgrade(why),
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
            Ok(grant) => {
                // Authorised: the connection no longer counts against the
                // caps on anonymous connections (the session limits apply).
                if let Some(slot) = req.extensions().get::<PreAuthSlot>() {
                    slot.release();
                }
                grant
            }
            // The user is known once the token verified: the audit line names them.
            Err((user, refusal)) => {
                return self.refuse(req, Some(&route), user.as_deref(), refusal);
            }
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
            shared.backend.connect(target),
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
        // Engaged at the session's end, with the upstream's (see `end_cork`).
        let end_corks: Vec<EndCork> = req
            .extensions()
            .get::<EndCork>()
            .into_iter()
            .chain(upstream.end_cork())
            .cloned()
            .collect();
        let on_upgrade = hyper::upgrade::on(req);
        let gateway = self.clone();
        shared.tracker.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    gateway
                        .run_session(
                            TokioIo::new(upgraded),
                            upstream,
                            route,
                            grant,
                            claim,
                            permit,
                            changes,
                            end_corks,
                        )
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
            }
        });
        response
    }

    /// The grant, or the refusal with the token's user when the token was
    /// valid (for the audit line; never the token itself).
    async fn authorize(
        &self,
        route: &Route,
        headers: &HeaderMap,
    ) -> Result<Grant, (Option<String>, Refusal)> {
        let token = match credentials::token(route, headers) {
            Ok(Some(token)) => token,
            Ok(None) => return Err((None, Refusal::BadToken)),
            // Two different tokens: which one a proxy in front checked is unknown.
            Err(credentials::Conflict) => return Err((None, Refusal::BadRequest)),
        };
        let claims = self
            .shared
            .verifier
            .verify(&token)
            .await
            .map_err(|e| match e {
                TokenError::Expired => (None, Refusal::TokenExpired),
                TokenError::Invalid => (None, Refusal::BadToken),
            })?;
        authz::authorize(route, &claims, &self.shared.index)
            .map_err(|r| (Some(claims.sub.clone()), r))
    }

    #[allow(clippy::too_many_arguments)] // the parts of one session, handed over once
    async fn run_session<C>(
        &self,
        client: C,
        upstream: UpstreamIo,
        route: Route,
        grant: Grant,
        claim: ConsoleClaim,
        permit: SessionPermit,
        changes: broadcast::Receiver<Arc<str>>,
        end_corks: Vec<EndCork>,
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
            &end_corks,
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
        // A far-off `exp` (up to u64::MAX) is past what an Instant can hold:
        // no deadline then, rather than an overflow panic.
        let token_deadline = now.checked_add(Duration::from_secs(
            grant.token_exp.saturating_sub(unix_now()),
        ));
        let max_deadline = shared
            .settings
            .max_session_duration
            .and_then(|d| now.checked_add(d));
        async move {
            // A change may have landed between the decision and now.
            if authz::recheck(&grant, &shared.index).is_err() {
                return Refusal::Revoked;
            }
            loop {
                tokio::select! {
                    _ = hold.kicked() => return Refusal::TakenOver,
                    _ = shared.force_close.cancelled() => return Refusal::ShuttingDown,
                    _ = async {
                        match token_deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => return Refusal::SessionExpired,
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
        // The close handshake below still counts as not authorised.
        let preauth = req.extensions().get::<PreAuthSlot>().cloned();
        let on_upgrade = hyper::upgrade::on(req);
        let ws_config = self.shared.settings.websocket_config();
        let close_timeout = self.shared.settings.splice.close_timeout;
        self.shared.tracker.spawn(async move {
            let _preauth = preauth;
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
}
