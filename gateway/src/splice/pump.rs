//! One direction of a relay: read raw bytes, check frame headers, write them on.
//!
//! Reads go into a 128 KiB buffer taken from a small per-thread pool only
//! while a read is ready, so an idle session holds no buffer at all, and a
//! busy one moves a burst with one read and one write (like nginx with large
//! proxy buffers). A slow reader holds back only its own direction: the pump
//! waits on its write before reading again, so nothing queues up.
//!
//! A pump is never dropped in the middle of a write: it is asked to stop
//! ([`Halt`]) and does so between reads, so the bytes written so far always
//! end on a known point of the frame stream and a close frame can follow.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use super::Activity;
use super::frames::{Found, FrameScanner, MAX_HEADER, Side, ping_frame};

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

/// Waits for bytes and reads them into a pooled buffer after `carry` (the
/// start of a frame header from the previous read). The buffer is held only
/// while a read completes: a session waiting for data holds none.
async fn read_pooled<R: AsyncRead + Unpin>(
    rx: &mut R,
    carry: &[u8],
) -> std::io::Result<(Box<[u8]>, usize)> {
    std::future::poll_fn(|cx| {
        let mut buf = take_buffer();
        buf[..carry.len()].copy_from_slice(carry);
        let mut read = ReadBuf::new(&mut buf[carry.len()..]);
        match Pin::new(&mut *rx).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                let total = if n == 0 { 0 } else { carry.len() + n };
                Poll::Ready(Ok((buf, total)))
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

/// Asks both pumps of a splice to stop at their next read, so that no write
/// is cut short and each side can still be sent a well-formed close frame.
#[derive(Default)]
pub struct Halt {
    halted: AtomicBool,
    notify: Notify,
}

impl Halt {
    /// Stops the pumps (each finishes the write it is in first).
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn halted(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.halted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The read side sent a close frame; these are its bytes (decoded later).
    Closed(Vec<u8>),
    /// The read side dropped, failed or broke the framing rules.
    ReadGone,
    /// Writing to the other side failed.
    WriteGone,
    /// The read side sent a message over the size limit.
    TooBig,
    /// [`Halt::halt`] was called.
    Halted,
}

impl PumpEnd {
    /// Whether the side this pump wrote to can still take bytes.
    pub fn writer_ok(&self) -> bool {
        !matches!(self, PumpEnd::WriteGone)
    }
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

/// Moves frames from `rx` to `tx` until `rx` closes or fails or `halt` is
/// called, pinging the side it writes to every `ping_interval`. `scanner`
/// (which knows the side `rx` belongs to) is left describing what was
/// written: between frames, or inside a payload with bytes still to come.
///
/// With `silent_limit`, a read side that sends nothing at all (not even the
/// pongs owed for the other pump's pings) for that long counts as gone.
pub async fn pump<R, W>(
    rx: &mut R,
    tx: &mut W,
    scanner: &mut FrameScanner,
    ping_interval: Duration,
    silent_limit: Option<Duration>,
    halt: &Halt,
    counters: PumpCounters<'_>,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let towards = match scanner.side() {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A ping may only go between two frames of the relayed stream.
    let mut ping_due = false;
    // The start of a frame header that has not been forwarded yet.
    let mut carry = [0u8; MAX_HEADER];
    let mut carry_len = 0;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let read = tokio::select! {
            read = read_pooled(rx, &carry[..carry_len]) => read,
            _ = halt.halted() => return PumpEnd::Halted,
            _ = ping.tick() => {
                if silent_limit.is_some_and(|limit| last_heard.elapsed() > limit) {
                    return PumpEnd::ReadGone;
                }
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
            Ok((buf, n)) if n > 0 => {
                last_heard = tokio::time::Instant::now();
                (buf, n)
            }
            Ok((buf, _)) => {
                give_buffer(buf);
                return PumpEnd::ReadGone;
            }
            Err(_) => return PumpEnd::ReadGone,
        };
        let scan = scanner.scan(&mut buf[..n]);
        if scan.forward > 0 && write(tx, &buf[..scan.forward]).await.is_err() {
            give_buffer(buf);
            return PumpEnd::WriteGone;
        }
        if scan.data > 0 {
            counters.count.fetch_add(scan.data, Ordering::Relaxed);
            counters.metric.inc_by(scan.data);
            counters.activity.touch();
        }
        let rest = &buf[scan.forward..n];
        let end = match scan.found {
            Found::Nothing => {
                carry_len = rest.len();
                carry[..carry_len].copy_from_slice(rest);
                None
            }
            Found::Close => Some(PumpEnd::Closed(rest.to_vec())),
            Found::TooBig => Some(PumpEnd::TooBig),
            Found::Broken => Some(PumpEnd::ReadGone),
        };
        give_buffer(buf);
        if let Some(end) = end {
            return end;
        }
        if ping_due && scanner.at_boundary() {
            ping_due = false;
            if write(tx, &ping_frame(towards)).await.is_err() {
                return PumpEnd::WriteGone;
            }
        }
    }
}

/// Finishes a frame cut off mid-payload with `len` zero bytes, so that a
/// close frame can follow.
pub async fn finish_frame<W: AsyncWrite + Unpin>(tx: &mut W, mut len: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        tx.write_all(&ZEROS[..n]).await?;
        len -= n as u64;
    }
    tx.flush().await
}

async fn write<W: AsyncWrite + Unpin>(tx: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    tx.write_all(bytes).await?;
    tx.flush().await
}
