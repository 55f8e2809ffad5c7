//! The crowd scenario: many echo sessions open through one proxy at the same time, with
//! traffic on a share of them, and every byte accounted for.
//!
//! Each session is proven with one echo when it opens, then held: idle sessions only read
//! (which answers the proxy's pings), active ones send pattern bytes ([`Pattern`], each
//! session at its own phase of it, message sizes cycling from 1 byte up) and check the
//! echo byte for byte. Every byte a session sends or receives goes into a count and a CRC-32
//! ([`Tally`]); with the upstream's ledger (`bench-upstream --echo-ledger-file`) those are
//! compared per session with what the upstream received and sent. At the end every session
//! must answer one more echo while all are still open. The proxy's memory (PSS and RSS)
//! and descriptors are read before, with all sessions open and idle, at the end of the
//! traffic and after closing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Target, Ws};
use crate::errors::Errors;
use crate::ledger::{SessionSums, Sum, Tally, read_ledger};
use crate::pattern::{PERIOD, Pattern};
use crate::plan::crowd_sessions;
use crate::procfs::{open_fds, open_files_limits, sample_tree, status_kib};
use crate::stats::percentile;
use crate::upstream_path::Mode;

/// How long one connect or one round trip may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors the load generator needs besides one per session.
const OWN_FD_RESERVE: u64 = 64;
/// How long to wait for the upstream's ledger to show every closed session.
const LEDGER_WAIT: Duration = Duration::from_secs(15);

#[derive(clap::Args, Clone, Debug)]
pub struct CrowdArgs {
    /// Sessions (default: 10,000, or fewer where the proxy's open-files limit cannot hold
    /// two descriptors per session; the output says when the limit capped the count).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// How long all sessions stay open with traffic on the active ones.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Share of the sessions that carry traffic.
    #[arg(long, default_value_t = 0.1)]
    pub active_share: f64,
    /// Largest message an active session sends; sizes cycle from 1 byte up to this.
    #[arg(long, default_value_t = 4096)]
    pub message_bytes: usize,
    /// Pause between an active session's round trips (0: one after another).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Wait with all sessions open (idle) before reading the proxy's memory.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Wait after closing before reading the proxy's memory again.
    #[arg(long, default_value_t = 1.0)]
    pub after_close: f64,
    /// The upstream's `--echo-ledger-file`: compare both ends of every session.
    #[arg(long)]
    pub upstream_ledger_file: Option<PathBuf>,
}

/// Where the run is; every session task follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Opening,
    Traffic,
    Verify,
    Close,
}

/// Counters every session task adds to.
#[derive(Default)]
struct Counters {
    finished_opening: AtomicU64,
    opened: AtomicU64,
    /// Answered the final echo with every session open.
    verified: AtomicU64,
    /// Verified or failed, after opening: the run may close once all opened ones settled.
    settled: AtomicU64,
    pings: AtomicU64,
    round_trips: AtomicU64,
    /// Payload of the traffic phase's round trips (each byte came back and was checked).
    traffic_bytes: AtomicU64,
}

/// What one session reports when it ends.
struct Report {
    vmi: String,
    sums: SessionSums,
    rtts_us: Vec<u32>,
}

/// One session as the client sees it.
struct Session {
    ws: Ws,
    vmi: String,
    sent: Tally,
    received: Tally,
}

impl Session {
    fn sums(&self) -> SessionSums {
        SessionSums {
            received: self.received.sum(),
            sent: self.sent.sum(),
        }
    }

    /// Sends `msg` and reads until as many bytes came back (a proxy may re-frame them),
    /// checking them against what was sent as they arrive.
    async fn round_trip(&mut self, msg: Bytes, counters: &Counters) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(msg.clone()))
            .await
            .context("send failed")?;
        self.sent.add(&msg);
        let mut got = 0;
        while got < msg.len() {
            match self.ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    self.received.add(&data);
                    let end = got + data.len();
                    if end > msg.len() || data[..] != msg[got..end] {
                        bail!("the echo differs from what was sent, at byte {got} of the message");
                    }
                    got = end;
                }
                Some(Ok(Message::Ping(_))) => {
                    counters.pings.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(other)) => bail!("unexpected message instead of the echo: {other:?}"),
                Some(Err(e)) => bail!("read failed: {e}"),
                None => bail!("connection ended before the echo"),
            }
        }
        Ok(())
    }

    /// Holds the session, reading (so the proxy's pings are answered), until the run
    /// reaches `phase`.
    async fn hold_until(
        &mut self,
        phases: &mut watch::Receiver<Phase>,
        phase: Phase,
        counters: &Counters,
    ) -> anyhow::Result<()> {
        loop {
            if *phases.borrow_and_update() >= phase {
                return Ok(());
            }
            tokio::select! {
                changed = phases.changed() => {
                    if changed.is_err() {
                        bail!("the run ended");
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Ping(_))) => {
                        counters.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => bail!("closed by the contender: {frame:?}"),
                    Some(Ok(other)) => bail!("unexpected message on a held session: {other:?}"),
                    Some(Err(e)) => bail!("read failed: {e}"),
                    None => bail!("the connection ended"),
                },
            }
        }
    }

    /// Sends a close frame and waits for the contender to finish the closing handshake.
    async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A message unique to (session, sequence number): proves a session is alive and its own.
fn probe(session: usize, seq: u64) -> Bytes {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&(session as u64).to_le_bytes());
    msg.extend_from_slice(&seq.to_le_bytes());
    Bytes::from(msg)
}

/// Whether session `i` of `n` carries traffic: `active` of them, spread evenly.
fn is_active(i: usize, n: usize, active: usize) -> bool {
    n > 0 && (i * active) / n != ((i + 1) * active) / n
}

/// Settings every session task shares.
struct Shared {
    target: Arc<Target>,
    args: CrowdArgs,
    pattern: Pattern,
    counters: Counters,
    errors: Errors,
    permits: Semaphore,
}

/// Opens session `i`, holds it through the run, and reports its sums (`None` if it never opened).
async fn session_task(
    shared: Arc<Shared>,
    i: usize,
    active: bool,
    mut phases: watch::Receiver<Phase>,
) -> Option<Report> {
    let c = &shared.counters;
    // The wait for a turn is not part of the opening's timeout: at a few hundred opens a
    // second, the last of 10,000 sessions waits longer than any one opening may take.
    let permit = shared.permits.acquire().await;
    let opening = async {
        let (ws, vmi) = shared.target.connect_named(Mode::Echo).await?;
        let mut session = Session {
            ws,
            vmi,
            sent: Tally::default(),
            received: Tally::default(),
        };
        session.round_trip(probe(i, 0), c).await?;
        anyhow::Ok(session)
    };
    let outcome = timeout(STEP_TIMEOUT * 3, opening).await;
    drop(permit);
    c.finished_opening.fetch_add(1, Ordering::Relaxed);
    let mut session = match outcome {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.errors.record(format_args!("opening: {e:#}"));
            return None;
        }
        Err(_) => {
            shared.errors.record("opening a session timed out");
            return None;
        }
    };
    c.opened.fetch_add(1, Ordering::Relaxed);
    let mut rtts_us = Vec::new();
    let lived = live(&shared, &mut session, i, active, &mut phases, &mut rtts_us).await;
    match &lived {
        Ok(()) => {
            c.verified.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => shared.errors.record(format_args!("{}: {e:#}", session.vmi)),
    }
    c.settled.fetch_add(1, Ordering::Relaxed);
    let sums = session.sums();
    let vmi = session.vmi.clone();
    if lived.is_ok() {
        // Stay open until every session has answered its final echo.
        if session
            .hold_until(&mut phases, Phase::Close, c)
            .await
            .is_ok()
        {
            session.close().await;
        }
    }
    Some(Report { vmi, sums, rtts_us })
}

/// From opened to the final echo: held while the others open, traffic if active, then one
/// more echo with every session still open.
async fn live(
    shared: &Shared,
    session: &mut Session,
    i: usize,
    active: bool,
    phases: &mut watch::Receiver<Phase>,
    rtts_us: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let c = &shared.counters;
    session.hold_until(phases, Phase::Traffic, c).await?;
    if active {
        let max = shared.args.message_bytes.max(1);
        let interval = Duration::from_millis(shared.args.interval_ms);
        // Each session its own phase of the pattern, so sessions' bytes differ.
        let mut offset = (i as u64 * 37) % PERIOD as u64;
        let mut seq = 0usize;
        while *phases.borrow() == Phase::Traffic {
            let len = 1 + (seq.wrapping_mul(7919) + i) % max;
            let msg = shared.pattern.chunk(offset, len);
            let began = Instant::now();
            timeout(STEP_TIMEOUT, session.round_trip(msg, c))
                .await
                .map_err(|_| anyhow!("a round trip timed out"))??;
            rtts_us.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32);
            c.round_trips.fetch_add(1, Ordering::Relaxed);
            c.traffic_bytes.fetch_add(len as u64, Ordering::Relaxed);
            offset += len as u64;
            seq += 1;
            if !interval.is_zero() {
                // Pause, still answering pings; ends early when the traffic phase does.
                if let Ok(held) =
                    timeout(interval, session.hold_until(phases, Phase::Verify, c)).await
                {
                    held?;
                }
            }
        }
    }
    session.hold_until(phases, Phase::Verify, c).await?;
    timeout(STEP_TIMEOUT, session.round_trip(probe(i, u64::MAX), c))
        .await
        .map_err(|_| anyhow!("the final echo timed out"))?
        .context("the final echo")
}

/// The proxy's memory, descriptors and CPU at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ProxyState {
    pss_kib: u64,
    rss_kib: Option<u64>,
    fds: Option<usize>,
    cpu_seconds: f64,
}

fn proxy_state(pid: Option<u32>) -> Option<ProxyState> {
    let pid = pid?;
    let tree = sample_tree(pid);
    Some(ProxyState {
        pss_kib: tree.memory_kib,
        rss_kib: status_kib(pid, "VmRSS"),
        fds: open_fds(pid),
        cpu_seconds: tree.cpu_seconds,
    })
}

/// Waits until `counter` reaches `target` or `limit` (if any) passes; whether it did.
async fn wait_for(counter: &AtomicU64, target: u64, limit: Option<Duration>) -> bool {
    let deadline = limit.map(|l| Instant::now() + l);
    while counter.load(Ordering::Relaxed) < target {
        if deadline.is_some_and(|d| Instant::now() > d) {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The session count: the one asked for, or 10,000 capped by the proxy's open-files limit;
/// then capped by this process's own limit (one descriptor per session). With the reasons.
fn session_count(args: &CrowdArgs, proxy_pid: Option<u32>) -> (usize, Value) {
    let proxy_limit = proxy_pid
        .and_then(|p| open_files_limits(&p.to_string()))
        .or_else(|| open_files_limits("self"))
        .map(|(soft, _)| soft);
    let (default, capped) = crowd_sessions(proxy_limit.unwrap_or(u64::MAX));
    let asked = args.sessions.unwrap_or(default);
    let own_limit = open_files_limits("self").map(|(soft, _)| soft);
    let own_cap = own_limit.map_or(usize::MAX, |l| l.saturating_sub(OWN_FD_RESERVE) as usize);
    let n = asked.min(own_cap);
    let mut notes = Vec::new();
    if args.sessions.is_none() && capped {
        notes.push(format!(
            "10,000 sessions need 20,000+ descriptors in the proxy; its open-files limit is {}, so {default} \
             (two per session, {} kept for the proxy's own files)",
            proxy_limit.unwrap_or_default(),
            crate::plan::PROXY_FD_RESERVE
        ));
    }
    if n < asked {
        notes.push(format!(
            "capped at {n} by the load generator's own open-files limit ({})",
            own_limit.unwrap_or_default()
        ));
    }
    let limits = json!({
        "sessions_asked": asked,
        "capped_by_open_files": n < asked || (args.sessions.is_none() && capped),
        "proxy_open_files_limit": proxy_limit,
        "load_open_files_limit": own_limit,
        "note": notes.join("; "),
    });
    (n, limits)
}

/// Runs the scenario and returns its JSON result.
pub async fn run(target: Arc<Target>, proxy_pid: Option<u32>, args: CrowdArgs) -> Value {
    let (n, limits) = session_count(&args, proxy_pid);
    let active = ((n as f64) * args.active_share.clamp(0.0, 1.0)).round() as usize;
    let shared = Arc::new(Shared {
        target,
        pattern: Pattern::new(args.message_bytes.max(1)),
        counters: Counters::default(),
        errors: Errors::default(),
        permits: Semaphore::new(args.connect_concurrency.max(1)),
        args: args.clone(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Opening);
    let before = proxy_state(proxy_pid);
    let began = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(session_task(
                shared.clone(),
                i,
                is_active(i, n, active),
                phase_rx.clone(),
            ))
        })
        .collect();
    let c = &shared.counters;
    // Every opening ends (opened, failed or timed out) within its own timeout.
    wait_for(&c.finished_opening, n as u64, None).await;
    let open_seconds = began.elapsed().as_secs_f64();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let all_open = proxy_state(proxy_pid);
    let opened = c.opened.load(Ordering::Relaxed);

    let _ = phase_tx.send(Phase::Traffic);
    let traffic_began = Instant::now();
    sleep(Duration::from_secs_f64(args.seconds)).await;
    let with_traffic = proxy_state(proxy_pid);
    let (round_trips, traffic_bytes) = (
        c.round_trips.load(Ordering::Relaxed),
        c.traffic_bytes.load(Ordering::Relaxed),
    );
    let traffic_seconds = traffic_began.elapsed().as_secs_f64();

    let _ = phase_tx.send(Phase::Verify);
    let all_settled = wait_for(&c.settled, opened, Some(STEP_TIMEOUT * 3)).await;
    if !all_settled {
        shared
            .errors
            .record("some sessions neither answered the final echo nor failed in time");
    }
    let verified = c.verified.load(Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Close);
    let mut reports = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(Some(report)) = task.await {
            reports.push(report);
        }
    }
    sleep(Duration::from_secs_f64(args.after_close)).await;
    let after_close = proxy_state(proxy_pid);

    let client_sent: u64 = reports.iter().map(|r| r.sums.sent.bytes).sum();
    let client_received: u64 = reports.iter().map(|r| r.sums.received.bytes).sum();
    let upstream = match &args.upstream_ledger_file {
        Some(path) => Some(compare_with_upstream(path, &reports).await),
        None => None,
    };
    let upstream_ok = upstream
        .as_ref()
        .is_none_or(|u| u["sessions_missing"] == 0 && u["sessions_mismatched"] == 0);
    let mut rtts: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.rtts_us.iter().map(|&v| u64::from(v)))
        .collect();
    rtts.sort_unstable();
    let errors = shared.errors.count();
    let per_session = |f: &dyn Fn(&ProxyState) -> Option<f64>| match (before, all_open) {
        (Some(b), Some(a)) if opened > 0 => Some((f(&a)? - f(&b)?) / opened as f64),
        _ => None,
    };
    let samples = shared.errors.json();
    let ok = n > 0 && errors == 0 && opened == n as u64 && verified == n as u64 && upstream_ok;
    json!({
        "scenario": "crowd",
        "sessions": n,
        "limits": limits,
        "ok": ok,
        "errors": errors,
        "error_samples": samples,
        "sessions_open": opened,
        "sessions_active": active,
        "sessions_answering_at_end": verified,
        "open_seconds": open_seconds,
        "opens_per_second": opened as f64 / open_seconds,
        "pings_answered": c.pings.load(Ordering::Relaxed),
        "traffic_seconds": traffic_seconds,
        "message_bytes_max": args.message_bytes,
        "interval_ms": args.interval_ms,
        "round_trips": round_trips,
        "traffic_bytes_each_way": traffic_bytes,
        "traffic_mb_per_s_each_way": traffic_bytes as f64 / 1e6 / traffic_seconds,
        "rtt_p50_us": percentile(&rtts, 50.0),
        "rtt_p99_us": percentile(&rtts, 99.0),
        "rtt_max_us": rtts.last(),
        "client_bytes_sent": client_sent,
        "client_bytes_received": client_received,
        "upstream": upstream,
        "proxy_before": before,
        "proxy_all_open": all_open,
        "proxy_with_traffic": with_traffic,
        "proxy_after_close": after_close,
        "proxy_kib_per_session": per_session(&|s| Some(s.pss_kib as f64)),
        "proxy_rss_kib_per_session": per_session(&|s| s.rss_kib.map(|v| v as f64)),
        "proxy_fds_per_session": per_session(&|s| s.fds.map(|v| v as f64)),
        "proxy_rss_kib_all_open": all_open.and_then(|s| s.rss_kib),
        "proxy_rss_kib_with_traffic": with_traffic.and_then(|s| s.rss_kib),
        "proxy_cpu_seconds_traffic": all_open.zip(with_traffic).map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
    })
}

/// Compares every session with the upstream's ledger: what the upstream received must be
/// what the client sent, and what it sent what the client received (bytes and CRC-32).
async fn compare_with_upstream(path: &std::path::Path, reports: &[Report]) -> Value {
    let deadline = Instant::now() + LEDGER_WAIT;
    let ledger = loop {
        let ledger = read_ledger(path);
        let complete = ledger
            .as_ref()
            .is_ok_and(|l| reports.iter().all(|r| l.contains_key(&r.vmi)));
        if complete || Instant::now() > deadline {
            break ledger;
        }
        sleep(Duration::from_millis(200)).await;
    };
    let ledger = match ledger {
        Ok(l) => l,
        Err(e) => {
            return json!({
                "error": format!("{e:#}"),
                "sessions_missing": reports.len(),
                "sessions_mismatched": 0,
            });
        }
    };
    let (mut matching, mut mismatched, mut missing) = (0u64, 0u64, 0u64);
    let (mut received, mut sent) = (Sum::default(), Sum::default());
    let mut first_mismatch = None;
    for r in reports {
        match ledger.get(&r.vmi) {
            None => missing += 1,
            Some(up) => {
                received.bytes += up.received.bytes;
                sent.bytes += up.sent.bytes;
                if r.sums.mirrors(up) {
                    matching += 1;
                } else {
                    mismatched += 1;
                    first_mismatch.get_or_insert_with(
                        || json!({ "vmi": r.vmi, "client": r.sums, "upstream": up }),
                    );
                }
            }
        }
    }
    let verified = |f: &dyn Fn(&SessionSums) -> u64| -> u64 {
        reports
            .iter()
            .filter(|r| ledger.get(&r.vmi).is_some_and(|up| r.sums.mirrors(up)))
            .map(|r| f(&r.sums))
            .sum()
    };
    json!({
        "sessions_matching": matching,
        "sessions_mismatched": mismatched,
        "sessions_missing": missing,
        "upstream_bytes_received": received.bytes,
        "upstream_bytes_sent": sent.bytes,
        "bytes_verified_client_to_upstream": verified(&|s| s.sent.bytes),
        "bytes_verified_upstream_to_client": verified(&|s| s.received.bytes),
        "first_mismatch": first_mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_share_is_spread_and_exact() {
        for (n, active) in [(10, 1), (9_990, 999), (7, 7), (5, 0), (100, 33)] {
            let picked: Vec<usize> = (0..n).filter(|&i| is_active(i, n, active)).collect();
            assert_eq!(picked.len(), active, "{active} of {n}");
            if active > 1 {
                let gaps: Vec<usize> = picked.windows(2).map(|w| w[1] - w[0]).collect();
                let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
                assert!(hi - lo <= 1, "evenly spread: gaps {lo}..{hi}");
            }
        }
    }

    #[test]
    fn probes_name_their_session() {
        assert_ne!(probe(1, 0), probe(2, 0));
        assert_ne!(probe(1, 0), probe(1, 1));
        assert_eq!(probe(3, 4).len(), 16);
    }
}
