//! Relaying messages between the client's websocket and the VM's.
//!
//! Each direction is a pump that reads one side and writes the other, so a
//! slow reader holds back only its own direction (backpressure through
//! tungstenite's bounded write buffer, never an unbounded queue). Client text
//! frames become binary (KubeVirt silently drops text, and xterm.js' attach
//! addon types as text). Each pump also pings the side it writes to, since
//! KubeVirt sends no pings and idle proxies and load balancers cut silent
//! connections. Close frames are passed on in both directions.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::refusal::Refusal;

/// Timing settings of a splice.
#[derive(Debug, Clone, Copy)]
pub struct SpliceSettings {
    /// How often each side is pinged.
    pub ping_interval: Duration,
    /// End the session after this long without data either way.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for close frames to be written at the end.
    pub close_timeout: Duration,
}

/// How a splice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// The client sent a close frame (passed on to the VM side).
    ClientClosed(Option<CloseFrame>),
    /// The VM side sent a close frame (passed on to the client).
    UpstreamClosed(Option<CloseFrame>),
    /// The client's connection dropped without a close frame.
    ClientGone,
    /// The VM side dropped without a close frame (KubeVirt does this when
    /// another viewer takes over); the client was told `reason`.
    UpstreamGone(Refusal),
    /// The gateway ended the session (revoked, expired, shutdown...).
    Stopped(Refusal),
    /// No data either way for the idle timeout.
    Idle,
    /// A side sent a message over the size limit; it got close code 1009.
    MessageTooBig {
        /// Whether the client (rather than the VM side) sent it.
        from_client: bool,
    },
}

impl SpliceEnd {
    /// The `outcome` metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            SpliceEnd::ClientClosed(_) | SpliceEnd::UpstreamClosed(_) | SpliceEnd::ClientGone => {
                "ok"
            }
            SpliceEnd::UpstreamGone(r) | SpliceEnd::Stopped(r) => r.outcome(),
            SpliceEnd::Idle => Refusal::Idle.outcome(),
            SpliceEnd::MessageTooBig { from_client: true } => Refusal::BadRequest.outcome(),
            SpliceEnd::MessageTooBig { from_client: false } => Refusal::UpstreamError.outcome(),
        }
    }

    /// Short description for the audit log.
    pub fn describe(&self) -> String {
        match self {
            SpliceEnd::ClientClosed(f) => format!("client closed ({})", close_text(f)),
            SpliceEnd::UpstreamClosed(f) => format!("VM side closed ({})", close_text(f)),
            SpliceEnd::ClientGone => "client connection lost".into(),
            SpliceEnd::UpstreamGone(r) | SpliceEnd::Stopped(r) => r.reason().into(),
            SpliceEnd::Idle => Refusal::Idle.reason().into(),
            SpliceEnd::MessageTooBig { from_client: true } => "client message too big".into(),
            SpliceEnd::MessageTooBig { from_client: false } => "VM message too big".into(),
        }
    }
}

fn close_text(frame: &Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason),
        None => "no status".into(),
    }
}

/// Bytes relayed, per direction (payload bytes of data messages).
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Client to VM.
    pub client_to_upstream: AtomicU64,
    /// VM to client.
    pub upstream_to_client: AtomicU64,
}

/// Prometheus counters a splice adds its bytes to.
#[derive(Clone)]
pub struct ByteMetrics {
    /// `labgate_gateway_bytes_total{direction="client_to_upstream"}` for this kind.
    pub client_to_upstream: IntCounter,
    /// `labgate_gateway_bytes_total{direction="upstream_to_client"}` for this kind.
    pub upstream_to_client: IntCounter,
}

/// A close frame carrying a refusal's code and reason.
pub fn close_frame(refusal: Refusal) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(refusal.close_code()),
        reason: refusal.reason().into(),
    }
}

enum PumpEnd {
    /// The read side sent a close frame.
    Closed(Option<CloseFrame>),
    /// The read side dropped or failed.
    ReadGone,
    /// Writing to the other side failed.
    WriteGone,
    /// The read side sent a message over the size limit.
    TooBig,
}

/// Milliseconds since the splice started at which data last moved.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Relays until either side closes, `stop` resolves, or the idle timeout
/// passes; then closes both sides with the right frames.
///
/// `upstream_gone` is asked what to tell the client when the VM side drops
/// without a close frame (it knows whether another viewer took over).
pub async fn splice<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    settings: SpliceSettings,
    stop: impl Future<Output = Refusal>,
    upstream_gone: &(dyn Fn() -> Refusal + Sync),
    counts: &ByteCounts,
    metrics: &ByteMetrics,
) -> SpliceEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };

    let end = {
        let up = pump(
            &mut client_rx,
            &mut upstream_tx,
            settings.ping_interval,
            &counts.client_to_upstream,
            &metrics.client_to_upstream,
            &activity,
        );
        let down = pump(
            &mut upstream_rx,
            &mut client_tx,
            settings.ping_interval,
            &counts.upstream_to_client,
            &metrics.upstream_to_client,
            &activity,
        );
        tokio::pin!(up, down, stop);
        loop {
            let idle_at = settings.idle_timeout.map(|t| activity.last() + t);
            let idle = async {
                match idle_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                end = &mut up => break match end {
                    PumpEnd::Closed(frame) => SpliceEnd::ClientClosed(frame),
                    PumpEnd::ReadGone => SpliceEnd::ClientGone,
                    PumpEnd::WriteGone => SpliceEnd::UpstreamGone(upstream_gone()),
                    PumpEnd::TooBig => SpliceEnd::MessageTooBig { from_client: true },
                },
                end = &mut down => break match end {
                    PumpEnd::Closed(frame) => SpliceEnd::UpstreamClosed(frame),
                    PumpEnd::ReadGone => SpliceEnd::UpstreamGone(upstream_gone()),
                    PumpEnd::WriteGone => SpliceEnd::ClientGone,
                    PumpEnd::TooBig => SpliceEnd::MessageTooBig { from_client: false },
                },
                refusal = &mut stop => break SpliceEnd::Stopped(refusal),
                _ = idle => {
                    // Data may have moved while we slept: only end if still idle.
                    if settings.idle_timeout.is_some_and(|t| activity.last() + t <= Instant::now()) {
                        break SpliceEnd::Idle;
                    }
                }
            }
        }
    };

    // Tell each side what happened, without waiting forever on a dead peer.
    let (to_client, to_upstream): (Option<Option<CloseFrame>>, Option<Option<CloseFrame>>) =
        match &end {
            // tungstenite already queued the reply to the closing side; flush it.
            SpliceEnd::ClientClosed(frame) => (None, Some(frame.clone())),
            // KubeVirt closes without a status; say what happened.
            SpliceEnd::UpstreamClosed(frame) => (
                Some(Some(frame.clone().unwrap_or_else(|| {
                    normal_close("the VM closed the connection")
                }))),
                None,
            ),
            SpliceEnd::ClientGone => (None, Some(Some(normal_close("client went away")))),
            SpliceEnd::UpstreamGone(r) => (Some(Some(close_frame(*r))), None),
            SpliceEnd::Stopped(r) => (
                Some(Some(close_frame(*r))),
                Some(Some(normal_close("session ended by the gateway"))),
            ),
            SpliceEnd::Idle => (
                Some(Some(close_frame(Refusal::Idle))),
                Some(Some(normal_close("session idle"))),
            ),
            SpliceEnd::MessageTooBig { from_client } => {
                let too_big = Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too big".into(),
                });
                let other = Some(normal_close("peer sent a message too big"));
                if *from_client {
                    (Some(too_big), Some(other))
                } else {
                    (Some(other), Some(too_big))
                }
            }
        };
    let close_client = finish(&mut client_tx, to_client);
    let close_upstream = finish(&mut upstream_tx, to_upstream);
    let _ = tokio::time::timeout(settings.close_timeout, async {
        tokio::join!(close_client, close_upstream)
    })
    .await;
    end
}

fn normal_close(reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    }
}

/// Sends a close frame (if `frame` is `Some`) and flushes whatever is queued,
/// including close replies tungstenite queued on its own.
async fn finish<S>(
    tx: &mut SplitSink<WebSocketStream<S>, Message>,
    frame: Option<Option<CloseFrame>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(frame) = frame {
        let _ = tx.send(Message::Close(frame)).await;
    }
    let _ = tx.close().await;
}

/// Moves data messages from `rx` to `tx` until `rx` closes or fails.
async fn pump<R, W>(
    rx: &mut SplitStream<WebSocketStream<R>>,
    tx: &mut SplitSink<WebSocketStream<W>, Message>,
    ping_interval: Duration,
    count: &AtomicU64,
    metric: &IntCounter,
    activity: &Activity,
) -> PumpEnd
where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            msg = rx.next() => msg,
            _ = ping.tick() => {
                if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                    return PumpEnd::WriteGone;
                }
                continue;
            }
        };
        // Forward everything that is already readable, then flush once:
        // one write per burst rather than per message.
        let mut next = first;
        loop {
            let payload = match next {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => Bytes::from(t),
                // Each side answers its own pings (tungstenite does it while reading).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    match rx.next().now_or_never() {
                        Some(msg) => {
                            next = msg;
                            continue;
                        }
                        None => break,
                    }
                }
                Some(Ok(Message::Close(frame))) => return PumpEnd::Closed(frame),
                Some(Err(WsError::Capacity(_))) => return PumpEnd::TooBig,
                Some(Err(_)) | None => return PumpEnd::ReadGone,
            };
            let len = payload.len() as u64;
            if tx.feed(Message::Binary(payload)).await.is_err() {
                return PumpEnd::WriteGone;
            }
            count.fetch_add(len, Ordering::Relaxed);
            metric.inc_by(len);
            activity.touch();
            match rx.next().now_or_never() {
                Some(msg) => next = msg,
                None => break,
            }
        }
        if tx.flush().await.is_err() {
            return PumpEnd::WriteGone;
        }
    }
}

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
