//! One direction of a relay: read raw bytes, check frame headers, write them on.
//!
//! Reads go into a 128 KiB buffer taken from a small per-thread pool only
//! while a read is ready, so an idle session holds no buffer at all, and a
//! busy one moves a burst with one read and one write (like nginx with large
//! proxy buffers). A slow reader holds back only its own direction: the pump
//! waits on its write before reading again, so nothing queues up.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Activity;
use super::frames::{Found, FrameScanner, Side, ping_frame};

/// Relay buffer size: large reads mean few system calls per megabyte.
const BUFFER_SIZE: usize = 128 * 1024;
/// Buffers kept for reuse per runtime thread.
const POOLED_BUFFERS: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

fn give_buffer(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    });
}

/// Waits for bytes and reads them into a pooled buffer, which is held only
/// while a read completes: a session waiting for data holds none.
async fn read_pooled<R: AsyncRead + Unpin>(rx: &mut R) -> std::io::Result<(Box<[u8]>, usize)> {
    std::future::poll_fn(|cx| {
        let mut buf = take_buffer();
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *rx).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                Poll::Ready(Ok((buf, n)))
            }
            Poll::Ready(Err(e)) => {
                give_buffer(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                give_buffer(buf);
                Poll::Pending
            }
        }
    })
    .await
}

/// How a pump ended.
pub enum PumpEnd {
    /// The read side sent a close frame; these are its bytes (decoded later).
    Closed(Vec<u8>),
    /// The read side dropped, failed or broke the framing rules.
    ReadGone,
    /// Writing to the other side failed.
    WriteGone,
    /// The read side sent a message over the size limit.
    TooBig,
}

/// Byte counters one pump adds to.
pub struct PumpCounters<'a> {
    /// Per-session count.
    pub count: &'a AtomicU64,
    /// Prometheus counter for this kind and direction.
    pub metric: &'a IntCounter,
    /// Shared idle tracking.
    pub activity: &'a Activity,
}

/// Moves frames from `rx` (the `from` side) to `tx` until `rx` closes or fails,
/// pinging the side it writes to every `ping_interval`.
pub async fn pump<R, W>(
    rx: &mut R,
    tx: &mut W,
    from: Side,
    max_message: u64,
    ping_interval: Duration,
    counters: PumpCounters<'_>,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let towards = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut scanner = FrameScanner::new(from, max_message);
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A ping may only go between two frames of the relayed stream.
    let mut ping_due = false;
    loop {
        let read = tokio::select! {
            read = read_pooled(rx) => read,
            _ = ping.tick() => {
                ping_due = true;
                if scanner.at_boundary() {
                    ping_due = false;
                    if write(tx, &ping_frame(towards)).await.is_err() {
                        return PumpEnd::WriteGone;
                    }
                }
                continue;
            }
        };
        let (mut buf, n) = match read {
            Ok((buf, n)) if n > 0 => (buf, n),
            Ok((buf, _)) => {
                give_buffer(buf);
                return PumpEnd::ReadGone;
            }
            Err(_) => return PumpEnd::ReadGone,
        };
        let (found, data) = scanner.scan(&mut buf[..n]);
        let forward = match found {
            Found::Nothing => n,
            Found::Close(at) => at,
            Found::TooBig | Found::Broken => {
                give_buffer(buf);
                return if found == Found::TooBig {
                    PumpEnd::TooBig
                } else {
                    PumpEnd::ReadGone
                };
            }
        };
        if forward > 0 && write(tx, &buf[..forward]).await.is_err() {
            give_buffer(buf);
            return PumpEnd::WriteGone;
        }
        if data > 0 {
            counters.count.fetch_add(data, Ordering::Relaxed);
            counters.metric.inc_by(data);
            counters.activity.touch();
        }
        if let Found::Close(at) = found {
            let rest = buf[at..n].to_vec();
            give_buffer(buf);
            return PumpEnd::Closed(rest);
        }
        give_buffer(buf);
        if ping_due && scanner.at_boundary() {
            ping_due = false;
            if write(tx, &ping_frame(towards)).await.is_err() {
                return PumpEnd::WriteGone;
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(tx: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    tx.write_all(bytes).await?;
    tx.flush().await
}
