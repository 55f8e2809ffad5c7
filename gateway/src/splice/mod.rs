//! Relaying a session between the client's websocket and the VM's.
//!
//! Each direction is a [`pump`] that forwards frames as they are (see
//! [`frames`] for why no re-encoding is needed), turning client text frames
//! into binary (KubeVirt silently drops text; xterm.js' attach addon types as
//! text), enforcing the message size limit and counting bytes. Each pump also
//! pings the side it writes to, since KubeVirt sends no pings and idle
//! proxies and load balancers cut silent connections; a browser that answers
//! none of them for a while is taken for gone. At the end both pumps are
//! halted between reads (never in the middle of a write), a frame cut off
//! mid-payload is finished towards the browser, and tungstenite takes over
//! both connections to read and write the close frames, so close codes and
//! reasons pass in both directions.

pub(crate) mod frames;
mod pump;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::end_cork::EndCork;
use crate::refusal::Refusal;
use frames::{FrameScanner, Side};

/// Ping intervals a client may stay completely silent before it counts as gone.
pub const CLIENT_SILENT_PINGS: u32 = 3;

/// Timing settings of a splice.
#[derive(Debug, Clone, Copy)]
pub struct SpliceSettings {
    /// How often each side is pinged.
    pub ping_interval: Duration,
    /// End the session after this long without data either way.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for close frames to be written at the end.
    pub close_timeout: Duration,
    /// Largest message accepted from either side (payload bytes).
    pub max_message_bytes: usize,
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
            // KubeVirt sends no application codes; a raw-target relay (static
            // backend) ends a session with a refusal's code (4009 for a VM
            // removed from its file), which counts as that refusal.
            SpliceEnd::UpstreamClosed(Some(frame)) if u16::from(frame.code) >= 4000 => Refusal::ALL
                .iter()
                .find(|r| r.close_code() == u16::from(frame.code))
                .map_or("ok", |r| r.outcome()),
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

/// Milliseconds since the splice started at which data last moved.
pub(crate) struct Activity {
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

/// How the pumps stopped, before the close frames are decoded.
enum Stop {
    ClientClosed(Vec<u8>),
    UpstreamClosed(Vec<u8>),
    ClientGone,
    UpstreamGone,
    Gateway(Refusal),
    Idle,
    TooBig { from_client: bool },
}

impl Stop {
    /// What it means that the pump reading the client (`from_client`) or the
    /// VM side ended with `end`.
    fn from_pump(end: pump::PumpEnd, from_client: bool) -> Stop {
        use pump::PumpEnd::*;
        match (end, from_client) {
            (Closed(bytes), true) => Stop::ClientClosed(bytes),
            (Closed(bytes), false) => Stop::UpstreamClosed(bytes),
            (ReadGone, true) | (WriteGone, false) => Stop::ClientGone,
            (ReadGone, false) | (WriteGone, true) => Stop::UpstreamGone,
            (TooBig, from_client) => Stop::TooBig { from_client },
            // Only the splice halts pumps, after it has decided why.
            (Halted, _) => Stop::Gateway(Refusal::ShuttingDown),
        }
    }
}

/// Where the bytes written to one side ended, once its pump has stopped.
#[derive(Debug, Clone, Copy)]
enum Written {
    /// Between frames, or `n` payload bytes short of the end of a frame.
    Short(u64),
    /// The side cannot take a close frame: its connection failed, or its
    /// pump did not stop in time (stuck writing to a peer that reads nothing).
    Unusable,
}

impl Written {
    /// `writer_ok`: the pump stopped (in time) with its write side intact.
    fn after(writer_ok: Option<bool>, scanner: &FrameScanner) -> Written {
        match writer_ok {
            Some(true) => Written::Short(scanner.payload_left()),
            Some(false) | None => Written::Unusable,
        }
    }
}

/// Relays until either side closes, `stop` resolves, or the idle timeout
/// passes; then closes both sides with the right frames.
///
/// `client` and `upstream` are the raw connections right after their
/// websocket handshakes. `upstream_gone` is asked what to tell the client
/// when the VM side drops without a close frame (it knows whether another
/// viewer took over). `end_corks` are engaged when the closing starts, so the
/// connections that watch them send their close frames with their FIN.
#[allow(clippy::too_many_arguments)] // the parts of one session, handed over once
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    settings: SpliceSettings,
    stop: impl Future<Output = Refusal>,
    upstream_gone: &(dyn Fn() -> Refusal + Sync),
    counts: &ByteCounts,
    metrics: &ByteMetrics,
    end_corks: &[EndCork],
) -> SpliceEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let max_message = settings.max_message_bytes as u64;
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let mut from_client = FrameScanner::new(Side::Client, max_message);
    let mut from_upstream = FrameScanner::new(Side::Upstream, max_message);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let halt = pump::Halt::default();

    let (stopped, up_writer_ok, down_writer_ok) = {
        let up = pump::pump(
            &mut client_rx,
            &mut upstream_tx,
            &mut from_client,
            settings.ping_interval,
            // Browsers answer every ping: a client silent for three ping
            // intervals is gone (laptop asleep, network lost), and its
            // session should not hold a slot until TCP gives up.
            Some(settings.ping_interval * CLIENT_SILENT_PINGS),
            &halt,
            pump::PumpCounters {
                count: &counts.client_to_upstream,
                metric: &metrics.client_to_upstream,
                activity: &activity,
            },
        );
        let down = pump::pump(
            &mut upstream_rx,
            &mut client_tx,
            &mut from_upstream,
            settings.ping_interval,
            None,
            &halt,
            pump::PumpCounters {
                count: &counts.upstream_to_client,
                metric: &metrics.upstream_to_client,
                activity: &activity,
            },
        );
        tokio::pin!(up, down, stop);
        // Per pump, once stopped: whether its write side is still intact.
        let mut up_writer_ok = None;
        let mut down_writer_ok = None;
        let stopped = loop {
            let idle_at = settings.idle_timeout.map(|t| activity.last() + t);
            let idle = async {
                match idle_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                end = &mut up => {
                    up_writer_ok = Some(end.writer_ok());
                    break Stop::from_pump(end, true);
                }
                end = &mut down => {
                    down_writer_ok = Some(end.writer_ok());
                    break Stop::from_pump(end, false);
                }
                refusal = &mut stop => break Stop::Gateway(refusal),
                _ = idle => {
                    // Data may have moved while we slept: only end if still idle.
                    if settings.idle_timeout.is_some_and(|t| activity.last() + t <= Instant::now()) {
                        break Stop::Idle;
                    }
                }
            }
        };
        // Let the other pump (or both) finish the write it is in, so each
        // side's stream ends on a known point before the close frames.
        halt.halt();
        let _ = tokio::time::timeout(settings.close_timeout, async {
            tokio::join!(
                async {
                    if up_writer_ok.is_none() {
                        up_writer_ok = Some(up.await.writer_ok());
                    }
                },
                async {
                    if down_writer_ok.is_none() {
                        down_writer_ok = Some(down.await.writer_ok());
                    }
                },
            )
        })
        .await;
        (stopped, up_writer_ok, down_writer_ok)
    };
    let to_client = Written::after(down_writer_ok, &from_upstream);
    let to_upstream = Written::after(up_writer_ok, &from_client);
    // Both pumps have stopped: whatever is written from here on is the end.
    for cork in end_corks {
        cork.engage();
    }

    // The closing phase runs once, on the heap: an idle session's future
    // then holds only the relay state.
    Box::pin(close_both(
        client_rx.unsplit(client_tx),
        upstream_rx.unsplit(upstream_tx),
        stopped,
        [to_client, to_upstream],
        settings,
        upstream_gone,
    ))
    .await
}

/// Decodes the close frame a side sent (if any), then tells each side what
/// happened, without waiting forever on a dead peer.
async fn close_both<C, U>(
    mut client_io: C,
    upstream_io: U,
    stopped: Stop,
    [to_client_written, to_upstream_written]: [Written; 2],
    settings: SpliceSettings,
    upstream_gone: &(dyn Fn() -> Refusal + Sync),
) -> SpliceEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // A frame cut off mid-payload is finished with filler towards the
    // browser, so the close frame that follows is read as one and the user
    // sees the reason. Towards the VM a filler would be typed into it, so that
    // side is only disconnected (KubeVirt reports no close reasons anyway).
    let client_usable = match to_client_written {
        Written::Short(0) => true,
        Written::Short(left) => tokio::time::timeout(
            settings.close_timeout,
            pump::finish_frame(&mut client_io, left),
        )
        .await
        .is_ok_and(|written| written.is_ok()),
        Written::Unusable => false,
    };
    let upstream_usable = matches!(to_upstream_written, Written::Short(0));

    // From here on tungstenite frames everything: decoding the close frame a
    // side sent, answering it, and writing ours.
    let config = WebSocketConfig::default().max_message_size(Some(settings.max_message_bytes));
    let (client_rest, upstream_rest) = match &stopped {
        Stop::ClientClosed(bytes) => (bytes.clone(), Vec::new()),
        Stop::UpstreamClosed(bytes) => (Vec::new(), bytes.clone()),
        _ => (Vec::new(), Vec::new()),
    };
    let mut client_ws =
        WebSocketStream::from_partially_read(client_io, client_rest, Role::Server, Some(config))
            .await;
    let mut upstream_ws = WebSocketStream::from_partially_read(
        upstream_io,
        upstream_rest,
        Role::Client,
        Some(config),
    )
    .await;
    let end = match stopped {
        Stop::ClientClosed(_) => SpliceEnd::ClientClosed(read_close(&mut client_ws).await),
        Stop::UpstreamClosed(_) => SpliceEnd::UpstreamClosed(read_close(&mut upstream_ws).await),
        Stop::ClientGone => SpliceEnd::ClientGone,
        Stop::UpstreamGone => SpliceEnd::UpstreamGone(upstream_gone()),
        Stop::Gateway(refusal) => SpliceEnd::Stopped(refusal),
        Stop::Idle => SpliceEnd::Idle,
        Stop::TooBig { from_client } => SpliceEnd::MessageTooBig { from_client },
    };

    // Tell each side what happened, without waiting forever on a dead peer.
    // A side that sent a close frame gets tungstenite's reply (queued when it
    // read the frame) when its stream is closed below.
    let (to_client, to_upstream): (Option<Option<CloseFrame>>, Option<Option<CloseFrame>>) =
        match &end {
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
    let close_client = finish(&mut client_ws, to_client, client_usable);
    let close_upstream = finish(&mut upstream_ws, to_upstream, upstream_usable);
    let _ = tokio::time::timeout(settings.close_timeout, async {
        tokio::join!(close_client, close_upstream)
    })
    .await;
    end
}

/// Reads the close frame a side started sending (its first bytes were given
/// to tungstenite as already read).
async fn read_close<S>(ws: &mut WebSocketStream<S>) -> Option<CloseFrame>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
        Ok(Some(Ok(Message::Close(frame)))) => frame,
        _ => None,
    }
}

fn normal_close(reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    }
}

/// Sends a close frame (if `frame` is `Some`), flushes whatever is queued,
/// including close replies tungstenite queued on its own, and shuts the
/// stream down: over TLS that sends close_notify, without which a client
/// cannot tell a finished session from a cut connection (rustls reports it
/// as an unexpected end of file). A side whose stream cannot take a frame
/// (`usable` false) is only shut down.
async fn finish<S>(ws: &mut WebSocketStream<S>, frame: Option<Option<CloseFrame>>, usable: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !usable {
        let _ = ws.get_mut().shutdown().await;
        return;
    }
    if let Some(frame) = frame {
        let _ = ws.send(Message::Close(frame)).await;
    }
    let _ = SinkExt::close(ws).await;
    let _ = ws.get_mut().shutdown().await;
}

#[cfg(test)]
mod tests;
