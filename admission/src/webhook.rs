//! HTTP transport of the webhook: HTTPS server, routing, body limits and review (de)coding.
//!
//! `/validate` turns an AdmissionReview v1 into a decision; `/healthz`, `/readyz`
//! and `/metrics` serve probes and Prometheus.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, META_API_VERSION_V1, META_KIND};
use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::decide::{ClusterView, Rules, decide, kind_label};
use crate::metrics::Metrics;

/// Largest review body accepted (the API server's own request limit is 3 MiB).
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;

/// Oversized bodies up to this size are read and discarded before the 413,
/// so well-behaved clients see the answer instead of a connection reset.
const DRAIN_LIMIT: usize = 4 * MAX_REVIEW_BYTES;

/// Time allowed for reading a review body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a TLS handshake and for request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request handler needs.
pub struct WebhookState {
    /// The cluster view (watch-fed cache in production).
    pub view: Arc<dyn ClusterView + Send + Sync>,
    /// The configured rules.
    pub rules: Rules,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Connections the HTTPS listener holds at once (`--max-connections`).
    pub max_connections: usize,
}

/// Connections the plain probe and metrics listener holds at once: the kubelet's
/// probes and a scraper need a handful, and a flood on that port must not use up
/// the descriptors the webhook needs.
pub const PROBE_MAX_CONNECTIONS: usize = 64;

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Routes one request. `serve_validate` is false on the plain metrics listener.
pub async fn handle(
    state: Arc<WebhookState>,
    req: Request<Incoming>,
    serve_validate: bool,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/validate") if serve_validate => validate(&state, req).await,
        (_, "/validate") if serve_validate => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if state.view.ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "cache not synced\n"),
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn validate(state: &WebhookState, req: Request<Incoming>) -> Response<Body> {
    let invalid = |reason: &str, status: StatusCode, msg: String| {
        state
            .metrics
            .invalid_requests
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, "{msg}");
        text(status, msg + "\n")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        // Far too big to even read: answer at once (the client may see a reset).
        let msg = format!("review body exceeds {MAX_REVIEW_BYTES} bytes");
        return invalid("too_large", StatusCode::PAYLOAD_TOO_LARGE, msg);
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Ok(Ok(body)) => body,
        Ok(Err((reason, status, msg))) => return invalid(reason, status, msg),
        Err(_) => {
            return invalid(
                "read_error",
                StatusCode::REQUEST_TIMEOUT,
                "timed out reading the body".into(),
            );
        }
    };
    let started = Instant::now();
    match review_bytes(state, &body) {
        Ok((json, decision)) => {
            state
                .metrics
                .request_duration
                .with_label_values(&[decision])
                .observe(started.elapsed().as_secs_f64());
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err((reason, msg)) => invalid(reason, StatusCode::BAD_REQUEST, msg),
    }
}

type BodyError = (&'static str, StatusCode, String);

/// Reads a review body of at most [`MAX_REVIEW_BYTES`]. Past the limit the rest
/// is read and dropped (up to `DRAIN_LIMIT`), so the client can finish sending
/// and reliably receives the 413 instead of a reset.
async fn read_body(mut body: Incoming) -> Result<Bytes, BodyError> {
    let too_large = || {
        let msg = format!("review body exceeds {MAX_REVIEW_BYTES} bytes");
        ("too_large", StatusCode::PAYLOAD_TOO_LARGE, msg)
    };
    let mut collected = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                "read_error",
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total > DRAIN_LIMIT {
                return Err(too_large());
            }
            if total <= MAX_REVIEW_BYTES {
                collected.extend_from_slice(&data);
            }
        }
    }
    if total > MAX_REVIEW_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(collected))
}

/// Where a body fails to decode, and how, but never what it says there:
/// serde's own message quotes the offending value (`unknown variant
/// "<value>"`), which may be a secret from the reviewed object, and the
/// message is logged.
fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Data => "a field has the wrong type or value",
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Decodes a review, decides, and encodes the answer. Errors carry a metrics
/// reason and a message for an HTTP 400.
pub fn review_bytes(
    state: &WebhookState,
    body: &[u8],
) -> Result<(Vec<u8>, &'static str), (&'static str, String)> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        let why = json_error(&e);
        ("bad_json", format!("body is not an AdmissionReview: {why}"))
    })?;
    if review.types.kind != META_KIND || review.types.api_version != META_API_VERSION_V1 {
        return Err((
            "wrong_type",
            format!(
                "expected kind {META_KIND} apiVersion {META_API_VERSION_V1}, got kind {:?} apiVersion {:?}",
                review.types.kind, review.types.api_version
            ),
        ));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| ("no_request", "AdmissionReview has no request".to_string()))?;
    if request.uid.is_empty() {
        return Err((
            "no_request",
            "AdmissionReview request has no uid".to_string(),
        ));
    }
    let decision = decide(&request, state.view.as_ref(), &state.rules);
    let verdict = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    let operation = format!("{:?}", request.operation).to_uppercase();
    state
        .metrics
        .requests
        .with_label_values(&[operation.as_str(), kind_label(&request), verdict])
        .inc();
    if let Some(rule) = decision.rule {
        state
            .metrics
            .denials
            .with_label_values(&[rule.name()])
            .inc();
    }
    if !decision.allowed
        && let Some(suppressed) = DENIAL_LOG.admit(std::time::Instant::now())
    {
        if suppressed > 0 {
            tracing::info!(
                suppressed,
                "{suppressed} denials not logged in the last window (labgate_admission_denials_total counts all)"
            );
        }
        tracing::info!(
            uid = %request.uid,
            user = request.user_info.username.as_deref().unwrap_or(""),
            namespace = request.namespace.as_deref().unwrap_or(""),
            name = %request.name,
            dry_run = request.dry_run,
            "{}",
            decision.message
        );
    }
    let response = decision.into_response(&request).into_review();
    let json = serde_json::to_vec(&response)
        .map_err(|e| ("encode_error", format!("cannot encode response: {e}")))?;
    Ok((json, verdict))
}

/// Accepts HTTPS connections on `listener` until `shutdown`, at most
/// `state.max_connections` at a time.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<WebhookState>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let cap = ConnectionCap::new("webhook", state.max_connections, &state.metrics);
    accept_loop(listener, shutdown, cap, move |tcp, peer| {
        let (acceptor, state) = (acceptor.clone(), state.clone());
        async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            serve_connection(TokioIo::new(tls), state, true).await;
        }
    })
    .await;
}

/// Serves probes and metrics over plain HTTP until `shutdown` (no /validate),
/// at most [`PROBE_MAX_CONNECTIONS`] at a time.
pub async fn serve_plain(
    listener: TcpListener,
    state: Arc<WebhookState>,
    shutdown: CancellationToken,
) {
    let cap = ConnectionCap::new("probes", PROBE_MAX_CONNECTIONS, &state.metrics);
    accept_loop(listener, shutdown, cap, move |tcp, _peer| {
        let state = state.clone();
        async move { serve_connection(TokioIo::new(tcp), state, false).await }
    })
    .await;
}

/// The most connections one listener holds at a time. Every accepted
/// connection costs a task and a descriptor before anything is known of it; at
/// the cap a new one is closed at once, before TLS or HTTP, which is the
/// cheapest answer there is (a 503 would need the TLS handshake a flood wants
/// the service to make).
struct ConnectionCap {
    slots: Arc<Semaphore>,
    open: IntGauge,
    rejected: IntCounter,
    listener: &'static str,
}

impl ConnectionCap {
    fn new(listener: &'static str, max: usize, metrics: &Metrics) -> ConnectionCap {
        ConnectionCap {
            slots: Arc::new(Semaphore::new(max)),
            open: metrics.connections.with_label_values(&[listener]),
            rejected: metrics.rejected_connections.with_label_values(&[listener]),
            listener,
        }
    }

    /// A slot for a new connection, or `None` (counted) at the cap.
    fn admit(&self) -> Option<OpenConnection> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(OpenConnection {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.rejected.inc();
                tracing::debug!(
                    listener = self.listener,
                    "connection closed at accept: too many open"
                );
                None
            }
        }
    }
}

/// A connection's slot, given back when its task ends.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    cap: ConnectionCap,
    on_conn: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = cap.admit() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let serve = on_conn(tcp, peer);
        tokio::spawn(async move {
            serve.await;
            drop(slot);
        });
    }
}

async fn serve_connection<IO>(io: TokioIo<IO>, state: Arc<WebhookState>, serve_validate: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req, serve_validate).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(io, service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Denials logged per window; the rest are only counted (a tenant looping a
/// denied request must not flood the log).
pub const DENIAL_LOG_BURST: u32 = 5;
/// The sampling window of [`DENIAL_LOG_BURST`].
pub const DENIAL_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

static DENIAL_LOG: DenialSampler = DenialSampler::new();

/// Lets through [`DENIAL_LOG_BURST`] denials per [`DENIAL_LOG_WINDOW`].
pub struct DenialSampler {
    state: std::sync::Mutex<Option<(std::time::Instant, u32, u64)>>,
}

impl Default for DenialSampler {
    fn default() -> Self {
        DenialSampler::new()
    }
}

impl DenialSampler {
    /// An empty sampler.
    pub const fn new() -> DenialSampler {
        DenialSampler {
            state: std::sync::Mutex::new(None),
        }
    }

    /// `Some(n)` when this denial may be logged, `n` being how many earlier
    /// ones were suppressed since the last logged line; `None` to stay silent.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.as_mut() {
            Some((start, logged, suppressed)) if now.duration_since(*start) < DENIAL_LOG_WINDOW => {
                if *logged < DENIAL_LOG_BURST {
                    *logged += 1;
                    Some(std::mem::take(suppressed))
                } else {
                    *suppressed += 1;
                    None
                }
            }
            Some((start, logged, suppressed)) => {
                *start = now;
                *logged = 1;
                Some(std::mem::take(suppressed))
            }
            None => {
                *st = Some((now, 1, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod denial_log_tests {
    use super::*;

    #[test]
    fn a_burst_of_denials_logs_a_bounded_number_of_lines() {
        let s = DenialSampler::new();
        let t0 = std::time::Instant::now();
        let logged = (0..12_800).filter(|_| s.admit(t0).is_some()).count();
        assert_eq!(logged, DENIAL_LOG_BURST as usize);
        // The next window logs again and reports what was suppressed.
        assert_eq!(s.admit(t0 + DENIAL_LOG_WINDOW), Some(12_800 - 5));
    }
}
