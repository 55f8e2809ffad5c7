//! A soak at steady churn: does the release `labgate-gateway` stay flat (memory,
//! descriptors, tasks) while sessions come and go and labs are revoked under them?
//!
//! In process: the tests' Kubernetes/KubeVirt stand-in with `--labs` lab namespaces (one
//! owner each, labelled as a portal does), one VMI per worker whose screen and console are
//! a TCP echo server. As a child: the release gateway (TLS listener, admin listener for
//! /metrics, HMAC tokens) watching the stand-in. Then, for `--seconds`:
//!
//! - `--workers` loop: connect with a fresh token, a few echo round trips checked byte by
//!   byte against the bench pattern, hold 0–2 s, close cleanly or just drop the connection;
//! - a revoker, every `--revoke-interval`, gives a lab to someone else or deletes it, and
//!   restores it once the sessions in it had `--revoke-deadline` to be closed with 4009;
//! - every `--sample-interval` the gateway's RSS, open descriptors and threads (/proc) and
//!   its task and session gauges (/metrics) are sampled.
//!
//! After the warm-up, and again at the end, the churn pauses until no session is open and
//! an idle sample is taken: descriptors and tasks are compared there, at equal (zero)
//! sessions. Writes `results.json` and `RESULTS.md` into `--out`; exits non-zero when any
//! session misbehaved.
//!
//! `cargo build --release -p labgate-gateway -p labgate-bench && target/release/bench-soak`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use labgate_bench::contender::free_port;
use labgate_bench::http_get;
use labgate_bench::pattern::Pattern;
use labgate_bench::trend::{self, Slope, Tolerance};
use labgate_tests::standin::{StandIn, UpstreamAddr, Vmi};
use serde::Serialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

const AUDIENCE: &str = "labgate";
/// Largest echo message; each session sends 1–4 of 1 B up to this.
const MAX_ECHO: usize = 16 * 1024;
/// Longest hold between the echoes and the close.
const MAX_HOLD_MS: u64 = 2000;
/// Time for one connect, one echo round trip or a clean close.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a drain may take to reach an idle, steady gateway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Errors quoted in the report (all are counted).
const ERRORS_KEPT: usize = 30;

#[derive(Parser)]
#[command(
    about = "Soak labgate-gateway at steady churn and report the trend of RSS, fds and tasks"
)]
struct Args {
    /// Length of the run, from the first connect to the final drain (the warm-up included).
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// Samples before this are left out of the trends; then the idle baseline is taken.
    /// Runs shorter than twice this use a third of --seconds.
    #[arg(long, default_value_t = 60.0)]
    warmup: f64,
    /// Lab namespaces; worker `w` uses its own VM in lab `w mod labs`.
    #[arg(long, default_value_t = 40)]
    labs: usize,
    /// Clients looping connect, echo, hold, close.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Seconds between samples (at most a tenth of --seconds is used).
    #[arg(long, default_value_t = 5.0)]
    sample_interval: f64,
    /// Seconds between lab revocations.
    #[arg(long, default_value_t = 1.0)]
    revoke_interval: f64,
    /// A session in a revoked lab must be closed with 4009 within this many seconds.
    #[arg(long, default_value_t = 1.0)]
    revoke_deadline: f64,
    /// Lifetime of each token (`exp`); the gateway caches verified tokens until then.
    #[arg(long, default_value_t = 30)]
    token_ttl: u64,
    /// The gateway binary (default: `labgate-gateway` next to this program).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Where results.json and RESULTS.md go.
    #[arg(long, default_value = "bench/results/soak")]
    out: PathBuf,
}

// --- the labs ------------------------------------------------------------------------

fn lab_name(lab: usize) -> String {
    format!("lab-soak-{lab:02}")
}

fn owner(lab: usize) -> String {
    format!("student-{lab}@example.com")
}

fn vm_name(worker: usize) -> String {
    format!("vm-{worker}")
}

/// The stand-in and what it serves.
struct World {
    standin: StandIn,
    echo: SocketAddr,
    labs: usize,
    workers: usize,
}

impl World {
    fn put_lab(&self, lab: usize) {
        self.standin.lab_namespace(&lab_name(lab), &owner(lab), &[]);
    }

    fn put_vms(&self, lab: usize) {
        let upstream = || Some(UpstreamAddr::Tcp(self.echo));
        for worker in (lab..self.workers).step_by(self.labs) {
            self.standin.add_vmi(
                &lab_name(lab),
                &vm_name(worker),
                Vmi::running(upstream(), upstream()),
            );
        }
    }
}

/// A plain TCP echo server: the VMs' screens and consoles.
async fn start_echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((mut tcp, _)) => {
                    tokio::spawn(async move {
                        let (mut from, mut to) = tcp.split();
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                    });
                }
                // Out of descriptors or similar: do not spin.
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    });
    Ok(addr)
}

// --- tokens --------------------------------------------------------------------------

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    jti: u64,
    lab: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmi: Option<&'a str>,
}

/// Signs a fresh HS256 token for every connection (a unique `jti`, so none is a cache hit).
struct Minter {
    key: EncodingKey,
    next_id: AtomicU64,
    ttl: u64,
}

impl Minter {
    fn mint(&self, lab: usize, vmi: Option<&str>) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let (sub, lab) = (owner(lab), lab_name(lab));
        let claims = Claims {
            sub: &sub,
            aud: AUDIENCE,
            exp: now + self.ttl,
            jti: self.next_id.fetch_add(1, Ordering::Relaxed),
            lab: &lab,
            vmi,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

// --- the gateway ---------------------------------------------------------------------

struct Gateway {
    child: tokio::process::Child,
    pid: u32,
    listen: SocketAddr,
    admin: SocketAddr,
    tls: TlsConnector,
    log: PathBuf,
}

impl Gateway {
    async fn start(
        bin: &Path,
        world: &World,
        dir: &Path,
        workers: usize,
    ) -> anyhow::Result<Gateway> {
        let secret: [u8; 32] = rand::random();
        let secret_file = dir.join("hmac-secret");
        std::fs::write(&secret_file, secret)?;
        let (cert, key) = world
            .standin
            .ca()
            .write_leaf(dir, &["localhost", "127.0.0.1"]);
        let kubeconfig = world
            .standin
            .write_kubeconfig(dir, &world.standin.gateway_token());
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = dir.join("gateway.log");
        let log_file = std::fs::File::create(&log)?;
        // All clients share one address and open sessions in bursts: lift the per-user and
        // pre-authorisation caps as bench-run does for its labgate contender.
        let caps = (4 * workers).max(1024).to_string();
        let child = tokio::process::Command::new(bin)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--jwt-hmac-secret-file")
            .arg(&secret_file)
            .args(["--jwt-algorithms", "HS256", "--jwt-audience", AUDIENCE])
            .args(["--max-sessions", caps.as_str()])
            .args(["--max-sessions-per-user", caps.as_str()])
            .args(["--max-preauth-connections", caps.as_str()])
            .args(["--max-preauth-connections-per-address", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the gateway exited at once")?;
        let tls = TlsConnector::from(Arc::new(world.standin.ca().client_config()));
        let mut gateway = Gateway {
            child,
            pid,
            listen,
            admin,
            tls,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gateway.child.try_wait()? {
                bail!(
                    "the gateway exited ({status}) during start:\n{}",
                    gateway.log_tail()
                );
            }
            if let Ok((200, _)) = gateway.admin_get("/readyz").await {
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                bail!("the gateway was not ready in 30 s:\n{}", gateway.log_tail());
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let tcp = TcpStream::connect(self.admin).await?;
        http_get::get(tcp, path, None).await
    }

    /// `GET /labs/{lab}` on the client listener, as a portal's viewer page does.
    async fn listing(&self, lab: &str, token: &str) -> anyhow::Result<u16> {
        let tcp = TcpStream::connect(self.listen).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = self.tls.connect(name, tcp).await?;
        Ok(http_get::get(tls, &format!("/labs/{lab}"), Some(token))
            .await?
            .0)
    }

    async fn connect(&self, lab: &str, vm: &str, kind: &str, token: &str) -> anyhow::Result<Ws> {
        let url = format!(
            "wss://localhost:{}/labs/{lab}/{vm}/{kind}",
            self.listen.port()
        );
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let tcp = TcpStream::connect(self.listen)
            .await
            .context("TCP connect")?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .context("websocket handshake")?;
        Ok(ws)
    }
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

// --- samples -------------------------------------------------------------------------

/// One reading of the gateway process and its gauges.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    /// Seconds since the churn started.
    t: f64,
    rss_kib: f64,
    fds: f64,
    threads: f64,
    tasks: f64,
    active_sessions: f64,
    preauth_connections: f64,
}

/// The gauges this bench reads from /metrics, plus every `sessions_total` series.
struct Scrape {
    tasks: f64,
    active_sessions: f64,
    preauth: f64,
    sessions_total: BTreeMap<String, f64>,
}

fn parse_metrics(text: &str) -> anyhow::Result<Scrape> {
    let mut scrape = Scrape {
        tasks: f64::NAN,
        active_sessions: 0.0,
        preauth: f64::NAN,
        sessions_total: BTreeMap::new(),
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "labgate_gateway_runtime_alive_tasks" => scrape.tasks = value,
            "labgate_gateway_active_sessions" => scrape.active_sessions += value,
            "labgate_gateway_preauth_connections" => scrape.preauth = value,
            "labgate_gateway_sessions_total" => {
                scrape.sessions_total.insert(series.to_string(), value);
            }
            _ => {}
        }
    }
    if scrape.tasks.is_nan() || scrape.preauth.is_nan() {
        bail!("/metrics lacks labgate_gateway_runtime_alive_tasks or _preauth_connections");
    }
    Ok(scrape)
}

/// VmRSS (KiB) and Threads from /proc/PID/status, and the entries of /proc/PID/fd.
fn read_proc(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("the gateway process is gone")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("empty status field")?
            .parse()?)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    Ok((field("VmRSS:")?, field("Threads:")?, fds))
}

async fn take_sample(gateway: &Gateway, t0: Instant) -> anyhow::Result<Sample> {
    let (status, text) = gateway.admin_get("/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let scrape = parse_metrics(&text)?;
    let (rss_kib, threads, fds) = read_proc(gateway.pid)?;
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        threads,
        tasks: scrape.tasks,
        active_sessions: scrape.active_sessions,
        preauth_connections: scrape.preauth,
    })
}

// --- churn ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Run,
    Pause,
    Stop,
}

/// A lab as the workers see it. `epoch` grows at every revocation, so a worker can tell
/// whether its lab was revoked since it connected.
#[derive(Clone, Copy, Debug, Default)]
struct LabState {
    epoch: u64,
    revoked: bool,
    /// When the revocation reached the stand-in (set just after it did).
    revoked_at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    closed_clean: AtomicU64,
    closed_dropped: AtomicU64,
    /// Clean closes whose TLS connection then ended without a close_notify.
    closed_without_close_notify: AtomicU64,
    revoked: AtomicU64,
    refused_in_revoked_lab: AtomicU64,
    revocations_reown: AtomicU64,
    revocations_delete: AtomicU64,
    bytes_verified: AtomicU64,
    errors: AtomicU64,
    /// Workers inside a session right now (connect to close).
    in_session: AtomicUsize,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Churn {
    world: World,
    gateway: Gateway,
    minter: Minter,
    pattern: Pattern,
    phase: watch::Sender<Phase>,
    labs: Vec<watch::Sender<LabState>>,
    counters: Counters,
    errors: Mutex<Vec<String>>,
    /// Seconds from a revocation to the 4009 of each session it hit.
    revoke_latencies: Mutex<Vec<f64>>,
    revoke_deadline: Duration,
}

impl Churn {
    fn error(&self, message: String) {
        bump(&self.counters.errors);
        eprintln!("bench-soak: error: {message}");
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < ERRORS_KEPT {
            errors.push(message);
        }
    }
}

/// How a session ended.
enum Ended {
    /// We closed it (cleanly or by dropping the connection).
    ByUs,
    /// The gateway sent a close frame.
    Closed(u16, String),
    /// Something that is never right: lost connection, wrong bytes, a late revocation.
    Broken(String),
}

struct InSession<'a>(&'a AtomicUsize);

impl Drop for InSession<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn worker(churn: Arc<Churn>, worker: usize) {
    let lab = worker % churn.world.labs;
    let mut phase = churn.phase.subscribe();
    let mut lab_state = churn.labs[lab].subscribe();
    loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Stop => return,
            Phase::Pause => {
                let _ = phase.changed().await;
                continue;
            }
            Phase::Run => {}
        }
        if lab_state.borrow_and_update().revoked {
            tokio::select! {
                _ = lab_state.changed() => {}
                _ = phase.changed() => {}
            }
            continue;
        }
        session(&churn, worker, lab, &mut lab_state, &mut phase).await;
    }
}

/// Sends `len` pattern bytes from `offset` and checks that exactly they come back.
async fn echo(ws: &mut Ws, pattern: &Pattern, offset: u64, len: usize) -> Result<(), Ended> {
    ws.send(Message::Binary(pattern.chunk(offset, len)))
        .await
        .map_err(|e| Ended::Broken(format!("sending: {e}")))?;
    let mut got = 0usize;
    while got < len {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                if got + data.len() > len || !pattern.matches(offset + got as u64, &data) {
                    return Err(Ended::Broken(format!(
                        "echo mismatch at byte {} of {len}",
                        got
                    )));
                }
                got += data.len();
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(Ended::Closed(code, reason));
            }
            Some(Ok(Message::Text(_))) => {
                return Err(Ended::Broken("a text message during the echo".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Ended::Broken(format!("connection lost: {e}"))),
            None => {
                return Err(Ended::Broken(
                    "connection lost without a close frame".into(),
                ));
            }
        }
    }
    Ok(())
}

async fn session(
    churn: &Churn,
    worker: usize,
    lab: usize,
    lab_state: &mut watch::Receiver<LabState>,
    phase: &mut watch::Receiver<Phase>,
) {
    churn.counters.in_session.fetch_add(1, Ordering::Relaxed);
    let _in_session = InSession(&churn.counters.in_session);
    let epoch = lab_state.borrow_and_update().epoch;
    let kind = if rand::random_bool(0.5) {
        "vnc"
    } else {
        "console"
    };
    let (lab_ns, vm) = (lab_name(lab), vm_name(worker));
    let what = format!("{lab_ns}/{vm}/{kind}");
    let token = match churn.minter.mint(lab, Some(&vm)) {
        Ok(token) => token,
        Err(e) => return churn.error(format!("minting a token: {e:#}")),
    };
    let mut ws = match timeout(
        STEP_TIMEOUT,
        churn.gateway.connect(&lab_ns, &vm, kind, &token),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return churn.error(format!("{what}: connecting: {e:#}")),
        Err(_) => return churn.error(format!("{what}: no websocket within {STEP_TIMEOUT:?}")),
    };

    let mut opened = false;
    let mut offset = 0u64;
    let mut ended = None;
    for _ in 0..rand::random_range(1..=4) {
        let len = rand::random_range(1..=MAX_ECHO);
        match timeout(STEP_TIMEOUT, echo(&mut ws, &churn.pattern, offset, len)).await {
            Ok(Ok(())) => {
                if !opened {
                    opened = true;
                    bump(&churn.counters.opened);
                }
                offset += len as u64;
                churn
                    .counters
                    .bytes_verified
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            Ok(Err(end)) => {
                ended = Some(end);
                break;
            }
            Err(_) => {
                ended = Some(Ended::Broken(format!("no echo within {STEP_TIMEOUT:?}")));
                break;
            }
        }
    }
    let ended = match ended {
        Some(end) => end,
        None => hold(churn, &mut ws, epoch, lab_state, phase).await,
    };

    let state = *lab_state.borrow();
    let revoked_since = state.epoch != epoch;
    match ended {
        Ended::ByUs => {
            if rand::random_bool(0.5) {
                match timeout(STEP_TIMEOUT, close_cleanly(&mut ws)).await {
                    Ok(Ok(notified)) => {
                        bump(&churn.counters.closed_clean);
                        if !notified {
                            bump(&churn.counters.closed_without_close_notify);
                        }
                    }
                    Ok(Err(e)) => churn.error(format!("{what}: closing: {e}")),
                    Err(_) => churn.error(format!(
                        "{what}: close not answered within {STEP_TIMEOUT:?}"
                    )),
                }
            } else {
                // The browser tab that vanishes: no close frame, the TCP connection just ends.
                drop(ws);
                bump(&churn.counters.closed_dropped);
            }
        }
        Ended::Closed(4009, _) if opened && revoked_since => {
            bump(&churn.counters.revoked);
            if let Some(at) = state.revoked_at {
                let latency = at.elapsed();
                churn
                    .revoke_latencies
                    .lock()
                    .expect("latency lock")
                    .push(latency.as_secs_f64());
                if latency > churn.revoke_deadline {
                    churn.error(format!(
                        "{what}: 4009 came {:.2} s after the revocation",
                        latency.as_secs_f64()
                    ));
                }
            }
        }
        // Connected just as the lab went: refused, or ended before the first echo.
        Ended::Closed(4003 | 4005 | 4006 | 4009 | 4012, _) if !opened && revoked_since => {
            bump(&churn.counters.refused_in_revoked_lab);
        }
        Ended::Closed(code, reason) => churn.error(format!(
            "{what}: closed with {code} {reason:?} ({}, lab {})",
            if opened {
                "after echoes"
            } else {
                "before any echo"
            },
            if revoked_since {
                "revoked since the connect"
            } else {
                "not revoked"
            }
        )),
        Ended::Broken(why) => churn.error(format!("{what}: {why}")),
    }
}

/// Sends a close frame and reads until the gateway's close frame and the end of the
/// connection. Returns whether the TLS connection ended with a close_notify: the
/// websocket close handshake is complete either way (browsers do not ask for more).
async fn close_cleanly(ws: &mut Ws) -> Result<bool, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::Error;
    ws.close(None).await?;
    let mut answered = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => answered = true,
            Some(Ok(_)) => {}
            None | Some(Err(Error::ConnectionClosed)) => return Ok(true),
            Some(Err(Error::Io(e)))
                if answered && e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Ok(false);
            }
            Some(Err(e)) => return Err(e),
        }
    }
}

/// Holds an open session 0–2 s, watching for its lab's revocation: once revoked, the
/// session must be closed by the gateway (4009) before the deadline.
async fn hold(
    churn: &Churn,
    ws: &mut Ws,
    epoch: u64,
    lab_state: &mut watch::Receiver<LabState>,
    phase: &mut watch::Receiver<Phase>,
) -> Ended {
    let hold_until = Instant::now() + Duration::from_millis(rand::random_range(0..=MAX_HOLD_MS));
    // When the revocation reached the stand-in, once this session's lab was revoked.
    let mut revoked_at: Option<Instant> = None;
    loop {
        let state = *lab_state.borrow_and_update();
        let running = *phase.borrow_and_update() == Phase::Run;
        let revoked = state.epoch != epoch;
        if revoked && revoked_at.is_none() {
            revoked_at = state.revoked_at;
        }
        let now = Instant::now();
        if !revoked && (now >= hold_until || !running) {
            return Ended::ByUs;
        }
        if let Some(at) = revoked_at
            && at.elapsed() > churn.revoke_deadline
        {
            return Ended::Broken(format!(
                "still open {:.2} s after its lab was revoked",
                at.elapsed().as_secs_f64()
            ));
        }
        let wake = match (revoked, revoked_at) {
            (false, _) => hold_until,
            (true, Some(at)) => at + churn.revoke_deadline + Duration::from_millis(1),
            (true, None) => now + Duration::from_millis(100),
        };
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Ended::Closed(code, reason);
                }
                Some(Ok(Message::Binary(_) | Message::Text(_))) => {
                    return Ended::Broken("a message while nothing was sent".into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Broken(format!("connection lost: {e}")),
                None => return Ended::Broken("connection lost without a close frame".into()),
            },
            _ = sleep_until(wake) => {}
            _ = lab_state.changed() => {}
            _ = phase.changed() => {}
        }
    }
}

/// Every `--revoke-interval`, revokes a lab not already revoked, until `stop`; then waits
/// until every lab it revoked is restored.
async fn revoker(churn: Arc<Churn>, interval: Duration, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        let free: Vec<usize> = (0..churn.world.labs)
            .filter(|&lab| !churn.labs[lab].borrow().revoked)
            .collect();
        if free.is_empty() {
            continue;
        }
        let lab = free[rand::random_range(0..free.len())];
        churn.labs[lab].send_modify(|s| {
            s.epoch += 1;
            s.revoked = true;
            s.revoked_at = None;
        });
        tasks.spawn(revoke_and_restore(churn.clone(), lab));
    }
    while tasks.join_next().await.is_some() {}
}

/// Gives the lab to someone else or deletes it; after the deadline (and a margin) puts it
/// back as it was, and waits until the gateway admits its owner again.
async fn revoke_and_restore(churn: Arc<Churn>, lab: usize) {
    let name = lab_name(lab);
    let standin = &churn.world.standin;
    let delete = rand::random_bool(0.5);
    if delete {
        standin.delete_namespace(&name);
        bump(&churn.counters.revocations_delete);
    } else {
        standin.lab_namespace(&name, &format!("someone-else-{lab}@example.com"), &[]);
        bump(&churn.counters.revocations_reown);
    }
    let at = Instant::now();
    churn.labs[lab].send_modify(|s| s.revoked_at = Some(at));
    sleep(churn.revoke_deadline + Duration::from_millis(250)).await;

    if delete {
        // The namespace controller empties it, then it is gone: only then can it come back.
        let path = format!("/api/v1/namespaces/{name}");
        let deadline = Instant::now() + STEP_TIMEOUT;
        while standin.get_json(&path).is_some() {
            if Instant::now() > deadline {
                churn.error(format!(
                    "{name} was still terminating after {STEP_TIMEOUT:?}"
                ));
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
    churn.world.put_lab(lab);
    if delete {
        churn.world.put_vms(lab);
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let answer = match churn.minter.mint(lab, None) {
            Ok(token) => churn.gateway.listing(&name, &token).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(200) => break,
            _ if Instant::now() > deadline => {
                churn.error(format!(
                    "{name}: the gateway did not admit its owner again within {STEP_TIMEOUT:?} of the restore ({answer:?})"
                ));
                break;
            }
            _ => sleep(Duration::from_millis(20)).await,
        }
    }
    churn.labs[lab].send_modify(|s| {
        s.revoked = false;
        s.revoked_at = None;
    });
}

/// Samples every `interval` until `stop`.
async fn sampler(
    churn: Arc<Churn>,
    t0: Instant,
    interval: Duration,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(t0 + interval, interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return samples,
            _ = tick.tick() => {}
        }
        match take_sample(&churn.gateway, t0).await {
            Ok(s) => {
                eprintln!(
                    "bench-soak: t={:>5.0} s  rss {:>7.0} KiB  fds {:>4}  threads {:>2}  tasks {:>4}  sessions {:>3}  ({} opened, {} revoked, {} errors)",
                    s.t,
                    s.rss_kib,
                    s.fds,
                    s.threads,
                    s.tasks,
                    s.active_sessions,
                    get(&churn.counters.opened),
                    get(&churn.counters.revoked),
                    get(&churn.counters.errors)
                );
                samples.push(s);
            }
            Err(e) => churn.error(format!("sampling: {e:#}")),
        }
    }
}

/// Pauses the workers, waits until the gateway holds no session and no connection in
/// authorisation and its descriptors and tasks stop moving, and returns that idle sample.
async fn drain(churn: &Churn, t0: Instant) -> anyhow::Result<Sample> {
    churn.phase.send_replace(Phase::Pause);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while churn.counters.in_session.load(Ordering::Relaxed) > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "workers still in sessions after {DRAIN_TIMEOUT:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let mut previous: Option<Sample> = None;
    loop {
        let s = take_sample(&churn.gateway, t0).await?;
        let idle = s.active_sessions == 0.0 && s.preauth_connections == 0.0;
        if let Some(p) = &previous
            && idle
            && p.fds == s.fds
            && p.tasks == s.tasks
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the gateway did not settle within {DRAIN_TIMEOUT:?} of the pause: {s:?}");
        }
        previous = idle.then_some(s);
        sleep(Duration::from_millis(250)).await;
    }
}

// --- report --------------------------------------------------------------------------

/// One metric's trend after the warm-up.
#[derive(Serialize)]
struct MetricReport {
    name: &'static str,
    unit: &'static str,
    first: f64,
    last: f64,
    min: f64,
    max: f64,
    /// Least-squares slope over the samples, per minute.
    slope_per_minute: f64,
    /// The slope with active sessions held equal, per minute, and its standard error.
    slope_at_equal_sessions_per_minute: f64,
    slope_at_equal_sessions_std_error: f64,
    /// That slope times the measured window: the drift over the run.
    drift_over_window: f64,
    idle_baseline: f64,
    idle_end: f64,
    /// What the verdict is decided on, its limit, and the verdict.
    judged_on: &'static str,
    change: f64,
    limit: f64,
    verdict: String,
}

fn metric_report(
    name: &'static str,
    unit: &'static str,
    samples: &[Sample],
    value: fn(&Sample) -> f64,
    idle: (&Sample, &Sample),
    window: f64,
    rule: Option<(bool, Tolerance)>,
) -> MetricReport {
    let t: Vec<f64> = samples.iter().map(|s| s.t).collect();
    let sessions: Vec<f64> = samples.iter().map(|s| s.active_sessions).collect();
    let y: Vec<f64> = samples.iter().map(value).collect();
    let zero = Slope {
        per_second: 0.0,
        std_error: 0.0,
    };
    let plain = trend::slope(&t, &y).unwrap_or(zero);
    let adjusted = trend::slope_at_equal_sessions(&t, &sessions, &y).map_or(zero, |(s, _)| s);
    let (baseline, end) = (value(idle.0), value(idle.1));
    let drift = adjusted.per_second * window;
    // Either the drift of the fit (memory) or the idle samples' difference (counts).
    let (judged_on, change, verdict, limit) = match rule {
        Some((on_drift, tolerance)) => {
            let change = if on_drift { drift } else { end - baseline };
            let limit = tolerance.limit(baseline);
            let verdict = if tolerance.allows(change, baseline) {
                "flat".to_string()
            } else if change > 0.0 {
                "NOT FLAT (rising)".to_string()
            } else {
                "NOT FLAT (falling)".to_string()
            };
            let on = if on_drift {
                "drift at equal sessions over the window"
            } else {
                "idle end minus idle baseline"
            };
            (on, change, verdict, limit)
        }
        None => (
            "not judged",
            end - baseline,
            "reported only".to_string(),
            f64::NAN,
        ),
    };
    MetricReport {
        name,
        unit,
        first: y.first().copied().unwrap_or(f64::NAN),
        last: y.last().copied().unwrap_or(f64::NAN),
        min: y.iter().copied().fold(f64::INFINITY, f64::min),
        max: y.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        slope_per_minute: plain.per_second * 60.0,
        slope_at_equal_sessions_per_minute: adjusted.per_second * 60.0,
        slope_at_equal_sessions_std_error: adjusted.std_error * 60.0,
        drift_over_window: drift,
        idle_baseline: baseline,
        idle_end: end,
        judged_on,
        change,
        limit,
        verdict,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn markdown(report: &serde_json::Value, metrics: &[MetricReport]) -> String {
    let r = report;
    let mut md = String::new();
    let _ = writeln!(md, "# labgate soak at steady churn\n");
    let _ = writeln!(
        md,
        "`{}` — commit `{}`, {} to {} (UTC), {} s ({} s warm-up), {} workers over {} labs, \
         a revocation every {} s, load average (1/5/15 min) {} at the start and {} at the end, {} CPUs.\n",
        r["command"].as_str().unwrap_or(""),
        r["commit"].as_str().unwrap_or(""),
        r["start_utc"].as_str().unwrap_or(""),
        r["end_utc"].as_str().unwrap_or(""),
        r["seconds"],
        r["warmup_seconds"],
        r["workers"],
        r["labs"],
        r["revoke_interval_seconds"],
        r["load_average_start"].as_str().unwrap_or(""),
        r["load_average_end"].as_str().unwrap_or(""),
        r["cpus"],
    );
    let c = &r["counts"];
    let _ = writeln!(md, "## Sessions\n\n| | count |\n|---|---|");
    for (label, key) in [
        ("sessions opened (first echo verified)", "opened"),
        ("closed by the client with a close frame", "closed_clean"),
        (
            "… of which the gateway then ended TLS without a close_notify",
            "closed_without_close_notify",
        ),
        ("closed by dropping the TCP connection", "closed_dropped"),
        ("ended by the gateway with 4009 (lab revoked)", "revoked"),
        (
            "refused or ended before the first echo in a lab being revoked",
            "refused_in_revoked_lab",
        ),
        (
            "revocations: lab given to someone else",
            "revocations_reown",
        ),
        ("revocations: lab deleted", "revocations_delete"),
        ("payload bytes echoed and verified", "bytes_verified"),
        ("errors", "errors"),
    ] {
        let _ = writeln!(md, "| {label} | {} |", c[key]);
    }
    let l = &r["revoke_latency_seconds"];
    let _ = writeln!(
        md,
        "\nRevocation to 4009 (from the change reaching the stand-in): p50 {} s, p99 {} s, max {} s over {} sessions (deadline {} s).\n",
        l["p50"], l["p99"], l["max"], l["count"], r["revoke_deadline_seconds"]
    );
    let _ = writeln!(
        md,
        "## Trends after the warm-up ({} samples, every {} s)\n",
        r["samples_in_window"], r["sample_interval_seconds"]
    );
    let _ = writeln!(
        md,
        "| metric | first | last | min | max | slope /min | slope /min at equal sessions (± s.e.) | idle baseline | idle end | judged on | change | limit | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for m in metrics {
        let _ = writeln!(
            md,
            "| {} ({}) | {:.0} | {:.0} | {:.0} | {:.0} | {:+.3} | {:+.3} (± {:.3}) | {:.0} | {:.0} | {} | {:+.1} | {} | **{}** |",
            m.name,
            m.unit,
            m.first,
            m.last,
            m.min,
            m.max,
            m.slope_per_minute,
            m.slope_at_equal_sessions_per_minute,
            m.slope_at_equal_sessions_std_error,
            m.idle_baseline,
            m.idle_end,
            m.judged_on,
            m.change,
            if m.limit.is_nan() {
                "—".to_string()
            } else {
                format!("{:.1}", m.limit)
            },
            m.verdict
        );
    }
    let _ = writeln!(md, "\n{}\n", r["rule"].as_str().unwrap_or(""));
    if let Some(errors) = r["errors"].as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(md, "## Errors (first {})\n", errors.len());
        for e in errors {
            let _ = writeln!(md, "- {}", e.as_str().unwrap_or(""));
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Gateway counters at the end\n\n```");
    if let Some(map) = r["gateway_sessions_total"].as_object() {
        for (series, value) in map {
            if value.as_f64().unwrap_or(0.0) > 0.0 {
                let _ = writeln!(md, "{series} {value}");
            }
        }
    }
    let _ = writeln!(md, "```\n\nRaw samples: `results.json`.");
    md
}

const RULE: &str = "Rule: RSS is flat when the drift of its least-squares fit at equal active \
sessions (value = a + b·t + c·sessions; drift = b × the window after the warm-up) is within \
the larger of 1 MiB and 2 % of the idle baseline. Descriptors and tasks are compared at equal \
sessions directly: the churn pauses after the warm-up and at the end until no session is open \
and two readings agree, and the end may differ from the baseline by at most 2 (kube's client \
keeps an idle pooled API-server connection or not: one descriptor and one task). Threads are \
reported only (tokio's blocking pool starts and retires threads on demand).";

// --- main ----------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.seconds > 0.0 && args.labs > 0 && args.workers > 0,
        "--seconds, --labs and --workers must be positive"
    );
    anyhow::ensure!(
        args.sample_interval > 0.0 && args.revoke_interval > 0.0 && args.revoke_deadline > 0.0,
        "intervals and the deadline must be positive"
    );
    let warmup = if args.warmup * 2.0 <= args.seconds {
        args.warmup
    } else {
        args.seconds / 3.0
    };
    let sample_interval = args.sample_interval.min(args.seconds / 10.0);
    let gateway_bin = match &args.gateway_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory around this program")?
            .join("labgate-gateway"),
    };
    anyhow::ensure!(
        gateway_bin.exists(),
        "{} not found: build it with `cargo build --release -p labgate-gateway` or pass --gateway-bin",
        gateway_bin.display()
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let start_utc = utc_now();
    let load_start = labgate_bench::procfs::load_average();

    let standin = StandIn::start().await?;
    let world = World {
        standin,
        echo: start_echo_server().await?,
        labs: args.labs,
        workers: args.workers,
    };
    for lab in 0..args.labs {
        world.put_lab(lab);
        world.put_vms(lab);
    }
    let dir = tempfile::Builder::new().prefix("labgate-soak").tempdir()?;
    let gateway = Gateway::start(&gateway_bin, &world, dir.path(), args.workers).await?;
    eprintln!(
        "bench-soak: gateway pid {} on {} (admin {}), {} labs, {} workers, {} s",
        gateway.pid, gateway.listen, gateway.admin, args.labs, args.workers, args.seconds
    );

    let churn = Arc::new(Churn {
        world,
        gateway,
        minter: Minter {
            key: EncodingKey::from_secret(&std::fs::read(dir.path().join("hmac-secret"))?),
            next_id: AtomicU64::new(0),
            ttl: args.token_ttl,
        },
        pattern: Pattern::new(MAX_ECHO),
        phase: watch::channel(Phase::Run).0,
        labs: (0..args.labs)
            .map(|_| watch::channel(LabState::default()).0)
            .collect(),
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
        revoke_latencies: Mutex::new(Vec::new()),
        revoke_deadline: Duration::from_secs_f64(args.revoke_deadline),
    });
    let revoke_interval = Duration::from_secs_f64(args.revoke_interval);

    let t0 = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|w| tokio::spawn(worker(churn.clone(), w)))
        .collect();
    let stop_sampling = CancellationToken::new();
    let sampling = tokio::spawn(sampler(
        churn.clone(),
        t0,
        Duration::from_secs_f64(sample_interval),
        stop_sampling.clone(),
    ));

    // Warm-up, then the idle baseline.
    let stop = CancellationToken::new();
    let revoking = tokio::spawn(revoker(churn.clone(), revoke_interval, stop.clone()));
    sleep_until(t0 + Duration::from_secs_f64(warmup)).await;
    stop.cancel();
    revoking.await?;
    let baseline = drain(&churn, t0).await?;
    eprintln!("bench-soak: idle baseline {baseline:?}");

    // The measured window, then the idle end.
    churn.phase.send_replace(Phase::Run);
    let stop = CancellationToken::new();
    let revoking = tokio::spawn(revoker(churn.clone(), revoke_interval, stop.clone()));
    sleep_until(t0 + Duration::from_secs_f64(args.seconds)).await;
    stop.cancel();
    revoking.await?;
    let end = drain(&churn, t0).await?;
    eprintln!("bench-soak: idle end {end:?}");
    churn.phase.send_replace(Phase::Stop);
    for w in workers {
        w.await?;
    }
    stop_sampling.cancel();
    let samples = sampling.await?;
    let (_, metrics_text) = churn.gateway.admin_get("/metrics").await?;
    let final_scrape = parse_metrics(&metrics_text)?;
    let end_utc = utc_now();
    let load_end = labgate_bench::procfs::load_average();

    let window_samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.t >= baseline.t && s.t <= end.t)
        .cloned()
        .collect();
    let window = end.t - baseline.t;
    let counts = Tolerance {
        absolute: 2.0,
        relative: 0.0,
    };
    let idle = (&baseline, &end);
    let metrics = vec![
        metric_report(
            "RSS",
            "KiB",
            &window_samples,
            |s| s.rss_kib,
            idle,
            window,
            Some((
                true,
                Tolerance {
                    absolute: 1024.0,
                    relative: 0.02,
                },
            )),
        ),
        metric_report(
            "open fds",
            "count",
            &window_samples,
            |s| s.fds,
            idle,
            window,
            Some((false, counts)),
        ),
        metric_report(
            "tokio tasks",
            "count",
            &window_samples,
            |s| s.tasks,
            idle,
            window,
            Some((false, counts)),
        ),
        metric_report(
            "threads",
            "count",
            &window_samples,
            |s| s.threads,
            idle,
            window,
            None,
        ),
        metric_report(
            "active sessions",
            "count",
            &window_samples,
            |s| s.active_sessions,
            idle,
            window,
            None,
        ),
    ];

    let mut latencies = churn.revoke_latencies.lock().expect("latency lock").clone();
    latencies.sort_by(f64::total_cmp);
    let c = &churn.counters;
    let errors = get(&c.errors);
    let command: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "bench-soak".to_string() } else { a })
        .collect();
    let report = json!({
        "command": command.join(" "),
        "commit": commit(),
        "start_utc": start_utc,
        "end_utc": end_utc,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "seconds": args.seconds,
        "warmup_seconds": (warmup * 10.0).round() / 10.0,
        "window_seconds": (window * 10.0).round() / 10.0,
        "labs": args.labs,
        "workers": args.workers,
        "revoke_interval_seconds": args.revoke_interval,
        "revoke_deadline_seconds": args.revoke_deadline,
        "token_ttl_seconds": args.token_ttl,
        "sample_interval_seconds": sample_interval,
        "samples_in_window": window_samples.len(),
        "counts": {
            "opened": get(&c.opened),
            "closed_clean": get(&c.closed_clean),
            "closed_dropped": get(&c.closed_dropped),
            "closed_without_close_notify": get(&c.closed_without_close_notify),
            "revoked": get(&c.revoked),
            "refused_in_revoked_lab": get(&c.refused_in_revoked_lab),
            "revocations_reown": get(&c.revocations_reown),
            "revocations_delete": get(&c.revocations_delete),
            "bytes_verified": get(&c.bytes_verified),
            "errors": errors,
        },
        "revoke_latency_seconds": {
            "count": latencies.len(),
            "p50": (quantile(&latencies, 0.5) * 1000.0).round() / 1000.0,
            "p99": (quantile(&latencies, 0.99) * 1000.0).round() / 1000.0,
            "max": (latencies.last().copied().unwrap_or(f64::NAN) * 1000.0).round() / 1000.0,
        },
        "metrics": metrics,
        "rule": RULE,
        "idle_baseline": baseline,
        "idle_end": end,
        "gateway_sessions_total": final_scrape.sessions_total,
        "errors": churn.errors.lock().expect("errors lock").clone(),
        "samples": samples,
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let md = markdown(&report, &metrics);
    std::fs::write(args.out.join("RESULTS.md"), &md)?;
    println!("{md}");
    eprintln!("bench-soak: wrote {}", args.out.display());

    let Churn { mut gateway, .. } = Arc::try_unwrap(churn)
        .map_err(|_| anyhow::anyhow!("a task still holds the churn state"))?;
    if let Some(status) = gateway.child.try_wait()? {
        bail!(
            "the gateway exited during the run ({status}):\n{}",
            gateway.log_tail()
        );
    }
    let _ = gateway.child.start_kill();
    let _ = gateway.child.wait().await;
    if errors > 0 {
        let kept = dir.keep();
        bail!(
            "{errors} errors (the gateway's log is kept in {})",
            kept.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn reads_the_gauges_and_sums_sessions_over_kinds() {
        let text = "# HELP labgate_gateway_active_sessions Sessions currently open, by kind.\n\
            labgate_gateway_active_sessions{kind=\"console\"} 3\n\
            labgate_gateway_active_sessions{kind=\"vnc\"} 4\n\
            labgate_gateway_preauth_connections 1\n\
            labgate_gateway_runtime_alive_tasks 57\n\
            labgate_gateway_sessions_total{kind=\"vnc\",outcome=\"revoked\"} 12\n";
        let scrape = parse_metrics(text).unwrap();
        assert_eq!(scrape.active_sessions, 7.0);
        assert_eq!(scrape.preauth, 1.0);
        assert_eq!(scrape.tasks, 57.0);
        assert_eq!(
            scrape.sessions_total["labgate_gateway_sessions_total{kind=\"vnc\",outcome=\"revoked\"}"],
            12.0
        );
        // A gateway without the task gauge cannot be soaked: say so.
        assert!(parse_metrics("labgate_gateway_preauth_connections 0\n").is_err());
    }
}
