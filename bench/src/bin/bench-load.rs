//! The benchmark's load generator: opens websocket sessions through one contender, runs one
//! scenario (throughput, rtt, handshake, first-byte, idle or crowd), checks every byte it gets
//! back, reads the proxy's CPU time and memory from /proc around the measured window and prints
//! one JSON object.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use labgate_bench::client::{Target, Ws, tls_connector};
use labgate_bench::crowd::{self, CrowdArgs};
use labgate_bench::errors::Errors;
use labgate_bench::pattern::Pattern;
use labgate_bench::procfs::{TreeSample, sample_tree};
use labgate_bench::stats::percentile;
use labgate_bench::token::TokenMinter;
use labgate_bench::upstream_path::{Mode, RFB_GREETING};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{MissedTickBehavior, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long one connect or one round trip may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "Load generator for the labgate benchmarks; prints one JSON result")]
struct Args {
    /// Session URL; `{vmi}`, `{sub}` and `{token}` are filled in per connection.
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) to trust for `wss://` URLs.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// HMAC secret for minting the per-connection HS256 token.
    #[arg(long)]
    jwt_secret_file: Option<std::path::PathBuf>,
    /// Send the upstream's TCP mode selector byte first (for websockify).
    #[arg(long)]
    tcp_mode_selector: bool,
    /// PID of the proxy whose process tree's CPU and memory are read from /proc.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// Send `Authorization: Bearer <file contents>` (direct connections to the API-server stand-in).
    #[arg(long)]
    bearer_token_file: Option<std::path::PathBuf>,
    /// PID of the upstream, whose CPU per handshake is reported next to the proxy's.
    #[arg(long)]
    upstream_pid: Option<u32>,
    /// The upstream's `--stats-file` (full and resumed TLS handshakes).
    #[arg(long)]
    upstream_stats_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// N stream sessions receiving as fast as possible; bytes per second and proxy CPU per GB.
    Throughput {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// N echo sessions each sending a small message every interval; round-trip percentiles.
    Rtt {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        #[arg(long, default_value_t = 64)]
        message_bytes: usize,
    },
    /// C workers each looping: connect, handshake (with token), first echo, close.
    Handshake {
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Sequential sessions to a screen: time from starting the TCP connect to the first
    /// checked byte of the upstream's stream (time to first screen byte).
    FirstByte {
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Open N echo sessions, hold them idle, and read the proxy's memory before and after.
    Idle {
        #[arg(long)]
        sessions: usize,
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        #[arg(long, default_value_t = 64)]
        connect_concurrency: usize,
        /// Wait after closing before reading the proxy's memory again.
        #[arg(long, default_value_t = 1.0)]
        after_close: f64,
    },
    /// Open N echo sessions and hold them all open together, with traffic on a share of them
    /// (every byte checked, counted and CRC'd per session; with the upstream's ledger, at
    /// both ends); read the proxy's memory and descriptors before, with all open, with
    /// traffic and after closing.
    Crowd(CrowdArgs),
}

/// Reads the proxy's process tree, if there is a proxy.
fn sample_proxy(pid: Option<u32>) -> Option<TreeSample> {
    pid.map(sample_tree)
}

fn cpu_delta(before: Option<TreeSample>, after: Option<TreeSample>) -> Option<f64> {
    Some(after?.cpu_seconds - before?.cpu_seconds)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = match &args.ca_file {
        Some(path) => Some(tls_connector(
            &std::fs::read(path).context("read CA file")?,
        )?),
        None => None,
    };
    let minter = match &args.jwt_secret_file {
        Some(path) => Some(TokenMinter::new(
            &std::fs::read(path).context("read JWT secret file")?,
        )),
        None => None,
    };
    let idle = matches!(args.scenario, Scenario::Idle { .. } | Scenario::Crowd(_));
    // Idle sessions need little buffer; streaming ones read 64 KiB messages.
    let read_buffer = if idle { 4 * 1024 } else { 128 * 1024 };
    let target = Arc::new(Target {
        url_template: args.url.clone(),
        tls,
        tcp_mode_selector: args.tcp_mode_selector,
        minter,
        config: WebSocketConfig::default().read_buffer_size(read_buffer),
        authorization: match &args.bearer_token_file {
            Some(path) => Some(format!(
                "Bearer {}",
                std::fs::read_to_string(path)
                    .context("read bearer token file")?
                    .trim()
            )),
            None => None,
        },
        // The crowd's VMI names are the upstream's ledger keys: unique to this process, so
        // sessions of earlier scenarios on the same upstream never stand in for them.
        next_vmi: match args.scenario {
            Scenario::Crowd(_) => (u64::from(std::process::id()) * 1_000_000).into(),
            _ => Default::default(),
        },
    });
    // Fail early and clearly if the URL cannot be built.
    target.url(Mode::Echo)?;
    let result = match args.scenario.clone() {
        Scenario::Throughput {
            sessions,
            seconds,
            warmup,
        } => throughput(target, args.proxy_pid, sessions, seconds, warmup).await,
        Scenario::Rtt {
            sessions,
            seconds,
            warmup,
            interval_ms,
            message_bytes,
        } => {
            rtt(
                target,
                args.proxy_pid,
                sessions,
                seconds,
                warmup,
                interval_ms,
                message_bytes,
            )
            .await
        }
        Scenario::Handshake {
            concurrency,
            seconds,
            warmup,
        } => {
            let upstream = UpstreamProbe {
                pid: args.upstream_pid,
                stats_file: args.upstream_stats_file.clone(),
            };
            handshake(
                target,
                args.proxy_pid,
                upstream,
                concurrency,
                seconds,
                warmup,
            )
            .await
        }
        Scenario::FirstByte { seconds, warmup } => {
            first_byte(target, args.proxy_pid, seconds, warmup).await
        }
        Scenario::Idle {
            sessions,
            settle,
            connect_concurrency,
            after_close,
        } => {
            idle_sessions(
                target,
                args.proxy_pid,
                sessions,
                settle,
                connect_concurrency,
                after_close,
            )
            .await
        }
        Scenario::Crowd(crowd_args) => crowd::run(target, args.proxy_pid, crowd_args).await,
    };
    println!("{result}");
    Ok(())
}

async fn connect(target: &Target, mode: Mode) -> anyhow::Result<Ws> {
    timeout(STEP_TIMEOUT, target.connect(mode))
        .await
        .context("connect timed out")?
}

async fn throughput(
    target: Arc<Target>,
    pid: Option<u32>,
    sessions: usize,
    seconds: f64,
    warmup: f64,
) -> Value {
    let errors = Arc::new(Errors::default());
    let bytes = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let pattern = Pattern::new(64 * 1024);
    let connects =
        futures::future::join_all((0..sessions).map(|_| connect(&target, Mode::Stream))).await;
    let mut tasks = Vec::new();
    for conn in connects {
        match conn {
            Ok(ws) => tasks.push(tokio::spawn(read_stream(
                ws,
                pattern.clone(),
                bytes.clone(),
                errors.clone(),
                stopping.clone(),
            ))),
            Err(e) => errors.record(e),
        }
    }
    sleep(Duration::from_secs_f64(warmup)).await;
    let (t0, b0, s0) = (
        Instant::now(),
        bytes.load(Ordering::Relaxed),
        sample_proxy(pid),
    );
    sleep(Duration::from_secs_f64(seconds)).await;
    let (t1, b1, s1) = (
        Instant::now(),
        bytes.load(Ordering::Relaxed),
        sample_proxy(pid),
    );
    stopping.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    let elapsed = (t1 - t0).as_secs_f64();
    let relayed = b1 - b0;
    let gb = relayed as f64 / 1e9;
    let cpu = cpu_delta(s0, s1);
    json!({
        "scenario": "throughput",
        "sessions": sessions,
        "seconds": elapsed,
        "ok": errors.count() == 0 && relayed > 0 && tasks.len() == sessions,
        "errors": errors.count(),
        "error_samples": errors.json(),
        "bytes": relayed,
        "mb_per_s": relayed as f64 / 1e6 / elapsed,
        "proxy_cpu_seconds": cpu,
        "proxy_cpu_s_per_gb": cpu.filter(|_| gb > 0.0).map(|c| c / gb),
    })
}

/// Reads a stream session, checking each byte against the pattern, until aborted.
async fn read_stream(
    mut ws: Ws,
    pattern: Pattern,
    bytes: Arc<AtomicU64>,
    errors: Arc<Errors>,
    stopping: Arc<AtomicBool>,
) {
    let mut offset = 0u64;
    let problem = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                if !pattern.matches(offset, &data) {
                    break format!("stream content differs at byte {offset}");
                }
                offset += data.len() as u64;
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Some(Ok(Message::Text(_))) => break "text message in a binary stream".to_owned(),
            Some(Ok(Message::Close(frame))) => break format!("closed by the contender: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("read failed: {e}"),
            None => break "stream ended".to_owned(),
        }
    };
    if !stopping.load(Ordering::Relaxed) {
        errors.record(problem);
    }
}

/// Sends `msg` and reads until as many bytes came back (a proxy in front of a TCP echo may
/// split them), then checks they are the same bytes.
async fn echo_once(ws: &mut Ws, msg: Bytes) -> anyhow::Result<()> {
    ws.send(Message::Binary(msg.clone()))
        .await
        .context("send failed")?;
    let mut got = Vec::with_capacity(msg.len());
    while got.len() < msg.len() {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => got.extend_from_slice(&data),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(other)) => bail!("unexpected message instead of the echo: {other:?}"),
            Some(Err(e)) => bail!("read failed: {e}"),
            None => bail!("connection ended before the echo"),
        }
    }
    if got != msg {
        bail!("echo differs from what was sent");
    }
    Ok(())
}

/// A message unique to (session, sequence number), `len` bytes long.
fn probe(session: usize, seq: u64, len: usize) -> Bytes {
    let mut msg = Vec::with_capacity(len.max(16));
    msg.extend_from_slice(&(session as u64).to_le_bytes());
    msg.extend_from_slice(&seq.to_le_bytes());
    msg.extend((16..len).map(|i| (i as u8).wrapping_add(seq as u8)));
    msg.truncate(len.max(1));
    Bytes::from(msg)
}

async fn rtt(
    target: Arc<Target>,
    pid: Option<u32>,
    sessions: usize,
    seconds: f64,
    warmup: f64,
    interval_ms: u64,
    message_bytes: usize,
) -> Value {
    let errors = Arc::new(Errors::default());
    let connects =
        futures::future::join_all((0..sessions).map(|_| connect(&target, Mode::Echo))).await;
    let interval = Duration::from_millis(interval_ms.max(1));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (i, conn) in connects.into_iter().enumerate() {
        let mut ws = match conn {
            Ok(ws) => ws,
            Err(e) => {
                errors.record(e);
                continue;
            }
        };
        let errors = errors.clone();
        // Spread the sessions evenly over one interval so they do not all send at once.
        let first = start + interval.mul_f64(i as f64 / sessions.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticker = tokio::time::interval_at(first.into(), interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for seq in 0u64.. {
                ticker.tick().await;
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                match timeout(
                    STEP_TIMEOUT,
                    echo_once(&mut ws, probe(i, seq, message_bytes)),
                )
                .await
                {
                    Ok(Ok(())) if sent >= measure_from => {
                        samples.push(sent.elapsed().as_micros() as u64)
                    }
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        errors.record(e);
                        return samples;
                    }
                    Err(_) => {
                        errors.record("round trip timed out");
                        return samples;
                    }
                }
            }
            let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
            samples
        }));
    }
    let s0 = {
        tokio::time::sleep_until(measure_from.into()).await;
        sample_proxy(pid)
    };
    let mut all: Vec<u64> = Vec::new();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.extend(samples);
        }
    }
    let s1 = sample_proxy(pid);
    all.sort_unstable();
    json!({
        "scenario": "rtt",
        "sessions": sessions,
        "seconds": seconds,
        "interval_ms": interval_ms,
        "message_bytes": message_bytes,
        "ok": errors.count() == 0 && !all.is_empty(),
        "errors": errors.count(),
        "error_samples": errors.json(),
        "round_trips": all.len(),
        "p50_us": percentile(&all, 50.0),
        "p90_us": percentile(&all, 90.0),
        "p99_us": percentile(&all, 99.0),
        "max_us": all.last(),
        "proxy_cpu_seconds": cpu_delta(s0, s1),
    })
}

/// Where to read the upstream's side of a handshake: its CPU time and its TLS handshake counts.
struct UpstreamProbe {
    pid: Option<u32>,
    stats_file: Option<std::path::PathBuf>,
}

impl UpstreamProbe {
    /// (CPU seconds, full TLS handshakes, resumed TLS handshakes) so far.
    fn sample(&self) -> (Option<f64>, Option<(u64, u64)>) {
        let cpu = self.pid.map(|p| sample_tree(p).cpu_seconds);
        let counts = self.stats_file.as_ref().and_then(|f| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
            Some((v["full"].as_u64()?, v["resumed"].as_u64()?))
        });
        (cpu, counts)
    }
}

async fn handshake(
    target: Arc<Target>,
    pid: Option<u32>,
    upstream: UpstreamProbe,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
) -> Value {
    let errors = Arc::new(Errors::default());
    let close_timeouts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (target, errors, close_timeouts) =
            (target.clone(), errors.clone(), close_timeouts.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < end {
                let began = Instant::now();
                let this_seq = seq;
                seq += 1;
                let attempt = async {
                    let mut ws = target.connect(Mode::Echo).await?;
                    echo_once(&mut ws, probe(w, this_seq, 16)).await?;
                    anyhow::Ok(ws)
                };
                match timeout(STEP_TIMEOUT, attempt).await {
                    Ok(Ok(ws)) => {
                        let done = Instant::now();
                        if done >= measure_from && done <= end {
                            latencies_us.push((done - began).as_micros() as u64);
                        }
                        // Close politely in the background; the next handshake starts now.
                        tokio::spawn(close_politely(ws, close_timeouts.clone()));
                    }
                    Ok(Err(e)) => {
                        errors.record(e);
                        sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => errors.record("handshake and first echo timed out"),
                }
            }
            latencies_us
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (s0, u0) = (sample_proxy(pid), upstream.sample());
    tokio::time::sleep_until(end.into()).await;
    let (s1, u1) = (sample_proxy(pid), upstream.sample());
    let mut all = Vec::new();
    for worker in workers {
        if let Ok(l) = worker.await {
            all.extend(l);
        }
    }
    all.sort_unstable();
    let cpu = cpu_delta(s0, s1);
    json!({
        "scenario": "handshake",
        "concurrency": concurrency,
        "seconds": seconds,
        "ok": errors.count() == 0 && !all.is_empty(),
        "errors": errors.count(),
        "error_samples": errors.json(),
        "handshakes": all.len(),
        "per_second": all.len() as f64 / seconds,
        "p50_us": percentile(&all, 50.0),
        "p99_us": percentile(&all, 99.0),
        "close_timeouts": close_timeouts.load(Ordering::Relaxed),
        "proxy_cpu_seconds": cpu,
        "proxy_cpu_us_per_handshake": cpu.filter(|_| !all.is_empty()).map(|c| c * 1e6 / all.len() as f64),
        "upstream_cpu_us_per_handshake": u0.0.zip(u1.0).filter(|_| !all.is_empty())
            .map(|(a, b)| (b - a) * 1e6 / all.len() as f64),
        // The stats file is rewritten every 50 ms, so these counts are approximate.
        "upstream_tls_full": u0.1.zip(u1.1).map(|(a, b)| b.0 - a.0),
        "upstream_tls_resumed": u0.1.zip(u1.1).map(|(a, b)| b.1 - a.1),
    })
}

/// One session after another: connect (TCP, TLS, websocket, token) to a screen and wait for
/// the first message of its stream, which must start the pattern.
async fn first_byte(target: Arc<Target>, pid: Option<u32>, seconds: f64, warmup: f64) -> Value {
    let errors = Errors::default();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut latencies_us = Vec::new();
    let mut s0 = None;
    while Instant::now() < end {
        if s0.is_none() && Instant::now() >= measure_from {
            s0 = sample_proxy(pid);
        }
        let began = Instant::now();
        // The upstream greets like a VNC server (12 bytes) and then waits, so nothing of
        // one session is still in flight when the next one starts.
        let attempt = async {
            let mut ws = target.connect(Mode::Greet).await?;
            let mut greeting = Vec::new();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        greeting.extend_from_slice(&data);
                        if !RFB_GREETING.starts_with(&greeting) {
                            bail!("the first screen bytes are not the upstream's RFB greeting");
                        }
                        if greeting.len() == RFB_GREETING.len() {
                            return anyhow::Ok((Instant::now(), ws));
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => bail!("unexpected message before the screen: {other:?}"),
                    Some(Err(e)) => bail!("read failed: {e}"),
                    None => bail!("connection ended before the first screen byte"),
                }
            }
        };
        match timeout(STEP_TIMEOUT, attempt).await {
            Ok(Ok((done, ws))) => {
                if began >= measure_from {
                    latencies_us.push((done - began).as_micros() as u64);
                }
                // Dropping is what a closed browser tab does.
                drop(ws);
            }
            Ok(Err(e)) => errors.record(e),
            Err(_) => errors.record("connect and first screen byte timed out"),
        }
    }
    let s1 = sample_proxy(pid);
    latencies_us.sort_unstable();
    let n = latencies_us.len();
    let mean = latencies_us.iter().sum::<u64>() as f64 / n.max(1) as f64;
    let cpu = cpu_delta(s0, s1);
    json!({
        "scenario": "first-byte",
        "seconds": seconds,
        "ok": errors.count() == 0 && n > 0,
        "errors": errors.count(),
        "error_samples": errors.json(),
        "sessions": n,
        "mean_us": mean,
        "p50_us": percentile(&latencies_us, 50.0),
        "p90_us": percentile(&latencies_us, 90.0),
        "p99_us": percentile(&latencies_us, 99.0),
        "proxy_cpu_us_per_session": cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64),
    })
}

/// Sends a close frame and waits for the contender to finish the closing handshake.
async fn close_politely(mut ws: Ws, close_timeouts: Arc<AtomicU64>) {
    let finished = timeout(Duration::from_secs(2), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    if finished.is_err() {
        close_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

async fn idle_sessions(
    target: Arc<Target>,
    pid: Option<u32>,
    sessions: usize,
    settle: f64,
    connect_concurrency: usize,
    after_close: f64,
) -> Value {
    let errors = Arc::new(Errors::default());
    let opened = Arc::new(AtomicU64::new(0));
    let finished_opening = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let permits = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let before = sample_proxy(pid);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (target, errors, permits) = (target.clone(), errors.clone(), permits.clone());
        let (opened, finished_opening, dropped) =
            (opened.clone(), finished_opening.clone(), dropped.clone());
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let opening = async {
                let _permit = permits.acquire().await?;
                let mut ws = target.connect(Mode::Echo).await?;
                echo_once(&mut ws, probe(i, 0, 16)).await?;
                anyhow::Ok(ws)
            };
            let outcome = timeout(STEP_TIMEOUT * 3, opening).await;
            finished_opening.fetch_add(1, Ordering::Relaxed);
            let mut ws = match outcome {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => return errors.record(e),
                Err(_) => return errors.record("opening an idle session timed out"),
            };
            opened.fetch_add(1, Ordering::Relaxed);
            // Hold the session, reading so that the contender's pings are answered.
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return errors.record("idle session closed by the contender");
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
        }));
    }
    while finished_opening.load(Ordering::Relaxed) < sessions as u64 {
        sleep(Duration::from_millis(20)).await;
    }
    let open_seconds = began.elapsed().as_secs_f64();
    sleep(Duration::from_secs_f64(settle)).await;
    let after = sample_proxy(pid);
    let open = opened.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    sleep(Duration::from_secs_f64(after_close)).await;
    let after_close = sample_proxy(pid);
    let per_session = match (before, after) {
        (Some(b), Some(a)) if open > 0 => {
            Some((a.memory_kib as f64 - b.memory_kib as f64) / open as f64)
        }
        _ => None,
    };
    json!({
        "scenario": "idle",
        "sessions": sessions,
        "ok": errors.count() == 0 && open == sessions as u64,
        "errors": errors.count(),
        "error_samples": errors.json(),
        "sessions_open": open,
        "sessions_dropped": dropped.load(Ordering::Relaxed),
        "open_seconds": open_seconds,
        "opens_per_second": open as f64 / open_seconds,
        "proxy_memory_before_kib": before.map(|s| s.memory_kib),
        "proxy_memory_after_kib": after.map(|s| s.memory_kib),
        "proxy_memory_after_close_kib": after_close.map(|s| s.memory_kib),
        "proxy_processes": after.map(|s| s.processes),
        "proxy_kib_per_session": per_session,
    })
}
