//! Faults around a running gateway (issue 12, "Faults"): the API server
//! absent at start and restarted with changes made while the gateway was
//! blind, a hanging subresource upgrade, the VM side dying mid-frame, clients
//! vanishing without a close, garbage on the TLS port, and broken certificate
//! files. Each case is one test; together they stay well under a minute.
//!
//! Covered elsewhere, not repeated here: watch cut / 410 / outage catch-up
//! and a forbidden watch (`gateway_index.rs`), slow-loris heads and slow TLS
//! handshakes and the pre-auth caps (`gateway_hostile.rs`,
//! `gateway_limits.rs`), the VM side closing cleanly
//! (`gateway_limits::the_vm_side_closing_reaches_the_client_with_a_reason`).

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use labgate_tests::log_capture::LogCapture;
use labgate_tests::standin::{UpgradeFault, UpstreamAddr, Vmi};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every log line of this test binary (the first subscriber; `start` then adds none).
fn logs() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| LogCapture::install("warn"))
}

/// No panic outside the test functions themselves (whose failures the
/// harness reports anyway) was captured in this process.
fn assert_no_gateway_panic() {
    let text = logs().text();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("PANIC: ") {
            let place = lines.next().unwrap_or_default();
            assert!(
                line.contains("tests/tests/") || place.contains("tests/tests/"),
                "{line}\n{place}"
            );
        }
    }
}

/// The descriptor counts are the whole process's: the tests that count them
/// run alone (write), the others together (read).
fn fd_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: OnceLock<tokio::sync::RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until `probe` holds; returns how long that took.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if probe().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A GET on a connection that closes after the answer (so probing leaves no
/// keep-alive connection, task or descriptor behind): status and body.
async fn get(env: &Env, plain: bool, path: &str) -> (u16, String) {
    let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    let mut raw = Vec::new();
    if plain {
        let mut tcp = TcpStream::connect(env.addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.read_to_end(&mut raw).await.unwrap();
    } else {
        let mut tls = env.tls_connect().await.unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        // The gateway may skip close_notify; what arrived is enough.
        let _ = tls.read_to_end(&mut raw).await;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The sum of every sample of `metric`.
async fn metric(env: &Env, plain: bool, metric: &str) -> f64 {
    let (_, text) = get(env, plain, "/metrics").await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `user` is let into `lab` now (426 "open this as a websocket").
async fn admitted(env: &Env, lab: &str, user: &str) -> bool {
    let path = format!("/labs/{lab}/vm1/console/{}", env.token(user));
    get(env, false, &path).await.0 == 426
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_absent_at_start_leaves_the_gateway_unready_until_it_appears() {
    logs();
    let _shared = fd_lock().read().await;
    let env = start(Options {
        standin_down: true,
        wait_ready: false,
        ..Options::default()
    })
    .await
    .unwrap();
    // Nothing listens on the kubeconfig's address: unready, sessions refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, why) = get(&env, false, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    assert_refused(&mut ws, 4015).await;
    assert_eq!(get(&env, false, "/healthz").await.0, 200, "alive all along");
    assert!(env.standin.subresource_requests().is_empty());

    // The API server appears on that address: ready, and sessions reach the VM.
    env.standin.resume_serving().await.unwrap();
    let took = wait_for(Duration::from_secs(5), "ready", || async {
        get(&env, false, "/readyz").await.0 == 200
    })
    .await;
    println!("ready {took:?} after the API server appeared");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_with_changes_made_while_blind_converges_within_a_second() {
    logs();
    let _shared = fd_lock().read().await;
    let env = start(Options::default()).await.unwrap();
    env.standin.lab_namespace("lab-moved", ALICE, &[]);
    wait_for(Duration::from_secs(5), "lab-moved", || async {
        admitted(&env, "lab-moved", ALICE).await
    })
    .await;
    let mut session = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut session).await;

    // The API server goes away; while it is down a lab is created, one is
    // deleted and one changes owner, and its watch history is lost (restart).
    env.standin.stop_serving().await;
    // The proxied session went with it, and the client is told.
    let frame = expect_close(&mut session, Duration::from_secs(5))
        .await
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 4012, "{}", frame.reason);
    env.standin.lab_namespace("lab-new", ALICE, &[]);
    env.standin.delete_json("/api/v1/namespaces/lab-bob");
    env.standin.lab_namespace("lab-moved", BOB, &[]);
    env.standin.compact_history();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    env.standin.resume_serving().await.unwrap();
    let took = wait_for(Duration::from_secs(5), "converged", || async {
        admitted(&env, "lab-new", ALICE).await
            && !admitted(&env, "lab-bob", BOB).await
            && !admitted(&env, "lab-moved", ALICE).await
            && admitted(&env, "lab-moved", BOB).await
    })
    .await;
    println!("index converged {took:?} after the API server came back");
    assert!(
        took < Duration::from_secs(1),
        "grants outlived the changes by {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upgrade_is_refused_with_4012_within_the_connect_timeout() {
    logs();
    let _shared = fd_lock().read().await;
    let env = start(Options {
        extra_args: args(&["--upstream-connect-timeout", "1s"]),
        ..Options::default()
    })
    .await
    .unwrap();
    // Warm up (token cache, API client pool), then take the baseline.
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
    drop(ws);
    wait_for(Duration::from_secs(5), "no session", || async {
        metric(&env, false, "labgate_gateway_active_sessions").await == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tasks = alive_tasks();

    env.standin.set_upgrade_fault(Some(UpgradeFault::Hang));
    let t0 = Instant::now();
    let token = env.token(ALICE);
    let mut ws = tokio::time::timeout(
        Duration::from_secs(5),
        env.open("lab-alice", "vm1", "vnc", &token),
    )
    .await
    .expect("the gateway answers within its upstream connect timeout");
    let reason = assert_refused(&mut ws, 4012).await;
    let took = t0.elapsed();
    println!("hanging upgrade refused after {took:?}: {reason}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(ws);
    // The gateway gave up on the hung request: nothing of it is left running
    // (the stand-in's handler ends when the gateway closes that connection).
    wait_for(Duration::from_secs(5), "tasks back to baseline", || async {
        alive_tasks() <= tasks
    })
    .await;
    assert_eq!(
        metric(&env, false, "labgate_gateway_active_sessions").await,
        0.0
    );

    env.standin.set_upgrade_fault(None);
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_side_dying_mid_frame_is_reported_with_4012() {
    logs();
    let _shared = fd_lock().read().await;
    let env = start(Options::default()).await.unwrap();
    env.standin.set_upgrade_fault(Some(UpgradeFault::HalfFrame));
    for kind in ["vnc", "console"] {
        let mut ws = env.open("lab-alice", "vm1", kind, &env.token(ALICE)).await;
        let frame = expect_close(&mut ws, Duration::from_secs(5))
            .await
            .expect("a close frame with a code");
        assert_eq!(u16::from(frame.code), 4012, "{kind}: {}", frame.reason);
    }
    wait_for(Duration::from_secs(5), "no session", || async {
        metric(&env, false, "labgate_gateway_active_sessions").await == 0.0
    })
    .await;
    assert_no_gateway_panic();
    env.standin.set_upgrade_fault(None);
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
}

/// The VM side of the vanishing clients: greets like an RFB server, then
/// holds the connection until the gateway closes it. (Xvnc would blacklist a
/// client address after a few that leave during its handshake and then close
/// on its own, hiding whether the gateway noticed.)
struct Screen {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Screen {
    async fn start() -> Screen {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = conn.write_all(b"RFB 003.008\n").await;
                    let mut sink = [0u8; 1024];
                    while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
                    counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Screen { addr, open, task }
    }

    /// Connections from the gateway's side still open.
    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sessions in all; WORKERS run at once, each on its own VM.
const VANISHING: usize = 1000;
const WORKERS: usize = 8;

/// A live session, kept open by holding it.
type Held = Box<dyn Send>;

/// Opens `lab-alice/{vm}/vnc` on `stream` and reads the RFB greeting (the VM
/// side is live); dropping what it returns drops the
/// connection without a close.
async fn session<S>(
    stream: S,
    port: u16,
    scheme: &str,
    vm: &str,
    token: &str,
) -> Result<Held, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = format!("{scheme}://localhost:{port}/labs/lab-alice/{vm}/vnc/{token}")
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while got.len() < 12 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed: {f:?}")),
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{other:?}")),
        }
    }
    if !got.starts_with(b"RFB 003.") {
        return Err(format!("not an RFB greeting: {got:?}"));
    }
    Ok(Box::new(ws))
}

/// Opens sessions and vanishes, over TLS or plain HTTP.
#[derive(Clone)]
struct Client {
    addr: std::net::SocketAddr,
    plain: bool,
    connector: tokio_rustls::TlsConnector,
    token: Arc<str>,
}

impl Client {
    /// A session that is dropped at once: no close frame, no TLS
    /// close_notify, just the socket closing.
    async fn vanish(&self, vm: &str) -> Result<(), String> {
        self.open(vm).await.map(drop)
    }

    async fn open(&self, vm: &str) -> Result<Held, String> {
        let port = self.addr.port();
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        if self.plain {
            session(tcp, port, "ws", vm, &self.token).await
        } else {
            let tls = self
                .connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            session(tls, port, "wss", vm, &self.token).await
        }
    }
}

async fn clients_vanishing(plain: bool) {
    logs();
    let _alone = fd_lock().write().await;
    let limit = (2 * WORKERS).to_string();
    let env = start(Options {
        plain,
        // No watch restarts during the run: a restart may open one more
        // keep-alive connection to the API server (its watches' pool keeps it
        // for 90 s), which would count as left behind.
        extra_args: args(&[
            "--max-sessions",
            &limit,
            "--max-sessions-per-user",
            &limit,
            "--watch-timeout",
            "300s",
        ]),
        // The harness waits for readiness over TLS only.
        wait_ready: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let screen = Screen::start().await;
    let vms: Vec<String> = (0..2 * WORKERS).map(|i| format!("vm-{i}")).collect();
    for vm in &vms {
        env.standin.add_vmi(
            "lab-alice",
            vm,
            Vmi::running(Some(UpstreamAddr::Tcp(screen.addr)), None),
        );
    }
    wait_for(Duration::from_secs(10), "ready", || async {
        get(&env, plain, "/readyz").await.0 == 200
    })
    .await;
    let client = Client {
        addr: env.addr,
        plain,
        connector: tokio_rustls::TlsConnector::from(Arc::new(env.standin.ca().client_config())),
        token: Arc::from(env.token(ALICE)),
    };
    let settled = || async {
        wait_for(Duration::from_secs(10), "sessions ended", || async {
            metric(&env, plain, "labgate_gateway_active_sessions").await == 0.0
        })
        .await;
    };

    // Warm-up, then the baseline.
    for vm in vms.iter().take(WORKERS) {
        client.vanish(vm).await.unwrap();
    }
    settled().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, tasks, rss) = (open_fds(), alive_tasks(), rss_kib());

    let t0 = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let vm = vms[w].clone();
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..VANISHING / WORKERS {
                    if let Err(e) = client.vanish(&vm).await {
                        return Err(format!("{vm} session {i}: {e}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let took = t0.elapsed();
    settled().await;
    let back = wait_for(Duration::from_secs(10), "fds and tasks back", || async {
        open_fds() <= fds && alive_tasks() <= tasks && screen.open() == 0
    })
    .await;
    println!(
        "{} vanishing clients ({}) in {took:?}; back to baseline {back:?} later: fds {fds} -> {}, \
         tasks {tasks} -> {}, RSS {rss} KiB -> {} KiB",
        VANISHING / WORKERS * WORKERS,
        if plain { "plain" } else { "TLS" },
        open_fds(),
        alive_tasks(),
        rss_kib()
    );
    assert!(
        metric(&env, plain, "labgate_gateway_preauth_connections").await <= 1.0,
        "only the metrics request itself may wait for authorisation"
    );

    // Every slot is free again: the whole per-user (and total) allowance at once.
    let mut held = Vec::new();
    for vm in &vms {
        held.push(
            client
                .open(vm)
                .await
                .unwrap_or_else(|e| panic!("{vm}: {e}")),
        );
    }
    assert_eq!(
        metric(&env, plain, "labgate_gateway_active_sessions").await,
        vms.len() as f64
    );
    assert_eq!(screen.open(), vms.len(), "VM-side connections");
    drop(held);
    wait_for(Duration::from_secs(5), "VM side closed", || async {
        screen.open() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_vanishing_tls_clients_leave_nothing_behind() {
    clients_vanishing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_vanishing_plain_clients_leave_nothing_behind() {
    clients_vanishing(true).await;
}

/// Reads until the gateway hangs up; how long that took.
async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(t0.elapsed()), stream.read(&mut buf)).await
        {
            Ok(Ok(0) | Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tls_port_is_closed_while_others_are_served() {
    logs();
    let _shared = fd_lock().read().await;
    let env = start(Options {
        extra_args: args(&["--handshake-timeout", "1s"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut open = Vec::new();
    for _ in 0..20 {
        // Random bytes.
        let mut tcp = TcpStream::connect(env.addr).await.unwrap();
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let _ = tcp.write_all(&noise).await;
        until_closed(&mut tcp, Duration::from_secs(3)).await;
        // An HTTP request in clear text.
        let mut tcp = TcpStream::connect(env.addr).await.unwrap();
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        until_closed(&mut tcp, Duration::from_secs(3)).await;
        // A ClientHello, then silence: kept open for now, checked below.
        let mut tcp = TcpStream::connect(env.addr).await.unwrap();
        let mut tls = rustls::ClientConnection::new(
            Arc::new(env.standin.ca().client_config()),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        tls.write_tls(&mut hello).unwrap();
        tcp.write_all(&hello).await.unwrap();
        open.push(tcp);
    }
    // Meanwhile others are served: a probe and a whole session.
    let t0 = Instant::now();
    assert_eq!(get(&env, false, "/healthz").await.0, 200);
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
    // The silent handshakes end with the handshake timeout.
    for tcp in &mut open {
        let left = Duration::from_secs(3).saturating_sub(t0.elapsed());
        until_closed(tcp, left.max(Duration::from_millis(100))).await;
    }
    let took = t0.elapsed();
    println!("20 silent TLS handshakes cut within {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The session opened before is unaffected.
    ws.send(Message::Binary(vec![3, 1, 0, 0, 0, 0, 0, 8, 0, 8].into()))
        .await
        .unwrap();
    assert_no_gateway_panic();
}

async fn peer_cert(env: &Env) -> Vec<u8> {
    let tls = env.tls_connect().await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_keep_the_old_pair_until_valid_ones_return() {
    let logs = logs();
    let _shared = fd_lock().read().await;
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let old = peer_cert(&env).await;
    let (new_cert, new_key) = env.standin.ca().leaf(&["localhost", "127.0.0.1"]);
    let cert_path = env.cert_path.clone();
    let key_path = env.key_path.clone();
    let failures = || {
        logs.text()
            .lines()
            .filter(|l| l.contains("TLS certificate reload failed"))
            .count()
    };
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let breakages: [Breakage<'_>; 4] = [
        (
            "invalid",
            Box::new(|| {
                std::fs::write(&cert_path, "not a certificate\n").unwrap();
                std::fs::write(&key_path, "not a key\n").unwrap();
            }),
        ),
        (
            "truncated",
            Box::new(|| {
                std::fs::write(&cert_path, &new_cert[..new_cert.len() / 2]).unwrap();
                std::fs::write(&key_path, &new_key[..new_key.len() / 2]).unwrap();
            }),
        ),
        (
            "mismatched",
            Box::new(|| {
                let (_, other_key) = env.standin.ca().leaf(&["localhost"]);
                std::fs::write(&cert_path, &new_cert).unwrap();
                std::fs::write(&key_path, other_key).unwrap();
            }),
        ),
        (
            "deleted",
            Box::new(|| {
                std::fs::remove_file(&cert_path).unwrap();
                std::fs::remove_file(&key_path).unwrap();
            }),
        ),
    ];
    for (what, breakage) in breakages {
        let before = failures();
        breakage();
        wait_for(Duration::from_secs(3), what, || async {
            failures() > before
        })
        .await;
        assert_eq!(peer_cert(&env).await, old, "{what}: the old pair serves");
        assert_eq!(get(&env, false, "/healthz").await.0, 200, "{what}");
    }

    // Valid files return (written elsewhere, moved into place): used at once.
    let staging = env.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("key"), &new_key).unwrap();
    std::fs::write(staging.join("cert"), &new_cert).unwrap();
    std::fs::rename(staging.join("key"), &key_path).unwrap();
    std::fs::rename(staging.join("cert"), &cert_path).unwrap();
    let new_der = {
        use base64::Engine as _;
        let body: String = new_cert
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    wait_for(Duration::from_secs(3), "new certificate served", || async {
        peer_cert(&env).await == new_der
    })
    .await;
}
