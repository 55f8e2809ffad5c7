//! The static backend end to end, against real upstreams: TigerVNC `Xvnc` over
//! `tcp:` and `unix:`, a QEMU-style unix-socket serial line (socat with a PTY
//! shell), a `pty:` command; removal from the file, unreachable and dropped
//! targets, takeover, and a bad token that must never reach a target.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use labgate_tests::upstreams::{SerialConsole, Xvnc};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const AUDIENCE: &str = "labgate";
const ALICE: &str = "alice@example.com";
const TUTOR: &str = "tutor@example.com";
const SECRET: &[u8] = b"static-backend-test-secret-0123456789";

/// An in-process gateway on the static backend, plain HTTP on 127.0.0.1.
struct Gateway {
    addr: std::net::SocketAddr,
    file: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The file for lab `lab-a` (owner alice, member tutor) with `vms` (YAML list items).
fn targets_yaml(members: &[&str], vms: &str) -> String {
    format!(
        "labs:\n  - name: lab-a\n    owner: {ALICE}\n    members: [{}]\n    vms:\n{vms}",
        members.join(", ")
    )
}

fn vm(name: &str, screen: Option<String>, console: Option<String>) -> String {
    let mut s = format!("      - name: {name}\n");
    if let Some(t) = screen {
        s += &format!("        screen: \"{t}\"\n");
    }
    if let Some(t) = console {
        s += &format!("        console: \"{t}\"\n");
    }
    s
}

/// Rewrites the file so the reload notices (a new length or modification time).
fn rewrite(path: &Path, yaml: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn start(yaml: &str, extra: &[&str]) -> Gateway {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    std::fs::write(&file, yaml).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut args = vec![
        "labgate-gateway".to_string(),
        "--insecure-plain-http".into(),
        "--jwt-hmac-secret-file".into(),
        secret.display().to_string(),
        "--jwt-audience".into(),
        AUDIENCE.into(),
        "--static-targets-file".into(),
        file.display().to_string(),
        "--reload-interval".into(),
        "100ms".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = <labgate_gateway::Config as clap::Parser>::try_parse_from(args).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(labgate_gateway::run_with_listener(
        config,
        listener,
        async {
            let _ = rx.await;
        },
    ));
    Gateway {
        addr,
        file,
        _dir: dir,
        shutdown: Some(tx),
        task,
    }
}

fn token(user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": user, "aud": AUDIENCE, "exp": exp}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

impl Gateway {
    /// A plain HTTP GET; returns the whole answer.
    async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn open(&self, vm: &str, kind: &str, token: &str) -> Ws {
        let url = format!("ws://{}/labs/lab-a/{vm}/{kind}/{token}", self.addr);
        tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket handshake")
            .0
    }
}

async fn expect_close(ws: &mut Ws, within: Duration) -> CloseFrame {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return frame,
                Some(Ok(Message::Close(None))) => panic!("close frame without a status"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("no close frame in time")
}

async fn assert_closed_with(ws: &mut Ws, code: u16, within: Duration) -> String {
    let frame = expect_close(ws, within).await;
    assert_eq!(u16::from(frame.code), code, "reason: {}", frame.reason);
    frame.reason.to_string()
}

/// Reads binary messages until `needle` shows up.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => panic!("text frame from the gateway: {t}"),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("ended while waiting for {needle:?}: {other:?}; got {text:?}"),
            Err(_) => panic!("{needle:?} not seen; got {text:?}"),
        }
    }
}

async fn read_exact(ws: &mut Ws, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while buf.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for RFB bytes")
        {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Close(f))) => panic!("closed early: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    buf.drain(..n).collect()
}

/// RFB 3.8 with security None up to the server's first framebuffer update;
/// returns the screen size.
async fn rfb_handshake(ws: &mut Ws) -> (u16, u16) {
    let mut buf = Vec::new();
    assert_eq!(read_exact(ws, &mut buf, 12).await, b"RFB 003.008\n");
    ws.send(Message::Binary(Bytes::from_static(b"RFB 003.008\n")))
        .await
        .unwrap();
    let n = read_exact(ws, &mut buf, 1).await[0] as usize;
    assert!(
        read_exact(ws, &mut buf, n).await.contains(&1),
        "security None offered"
    );
    ws.send(Message::Binary(Bytes::from_static(&[1])))
        .await
        .unwrap();
    assert_eq!(read_exact(ws, &mut buf, 4).await, vec![0, 0, 0, 0]);
    ws.send(Message::Binary(Bytes::from_static(&[1])))
        .await
        .unwrap();
    let init = read_exact(ws, &mut buf, 24).await;
    let (w, h) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    read_exact(ws, &mut buf, name_len).await;
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    ws.send(Message::Binary(req.into())).await.unwrap();
    assert_eq!(read_exact(ws, &mut buf, 4).await[0], 0, "FramebufferUpdate");
    (w, h)
}

/// Types a command whose output differs from its echo, and waits for the output.
async fn shell_answers(ws: &mut Ws) {
    ws.send(Message::Binary(Bytes::from_static(
        b"echo labgate-$((6*7))\r",
    )))
    .await
    .unwrap();
    read_until(ws, "labgate-42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xvnc_screens_over_tcp_and_unix() {
    let xvnc = Xvnc::start_with_tcp().unwrap();
    let port = xvnc.tcp_port().unwrap();
    let vms = vm("over-tcp", Some(format!("tcp:127.0.0.1:{port}")), None)
        + &vm(
            "over-unix",
            Some(format!("unix:{}", xvnc.socket().display())),
            None,
        );
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    for name in ["over-tcp", "over-unix"] {
        let mut ws = gw.open(name, "vnc", &token(ALICE)).await;
        assert_eq!(rfb_handshake(&mut ws).await, (800, 600), "{name}");
        ws.close(None).await.unwrap();
    }
    // No console in the file: KubeVirt's answer for a VM without one.
    let mut ws = gw.open("over-tcp", "console", &token(ALICE)).await;
    assert_closed_with(&mut ws, 4018, Duration::from_secs(5)).await;
    let mut ws = gw.open("nope", "vnc", &token(ALICE)).await;
    assert_closed_with(&mut ws, 4005, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_consoles_over_a_unix_socket_and_a_pty_command() {
    let serial = SerialConsole::start().unwrap();
    let vms = vm(
        "qemu",
        None,
        Some(format!("unix:{}", serial.socket().display())),
    ) + &vm("local", None, Some("pty:/bin/sh -i".into()));
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    let mut ws = gw.open("qemu", "console", &token(ALICE)).await;
    shell_answers(&mut ws).await;
    ws.close(None).await.unwrap();

    let mut ws = gw.open("local", "console", &token(ALICE)).await;
    shell_answers(&mut ws).await;
    // The program exiting ends the session cleanly, with a reason.
    ws.send(Message::Binary(Bytes::from_static(b"exit\r")))
        .await
        .unwrap();
    let reason = assert_closed_with(&mut ws, 1000, Duration::from_secs(5)).await;
    assert!(reason.contains("exited"), "{reason}");
    // No screen in the file.
    let mut ws = gw.open("local", "vnc", &token(ALICE)).await;
    assert_closed_with(&mut ws, 4017, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_from_the_file_closes_live_sessions_within_a_second() {
    let shell = || vm("vm1", None, Some("pty:/bin/sh -i".into()));
    let both = shell() + &vm("vm2", None, Some("pty:/bin/sh -i".into()));
    let gw = start(&targets_yaml(&[TUTOR], &both), &[]).await;
    let mut tutor = gw.open("vm1", "console", &token(TUTOR)).await;
    shell_answers(&mut tutor).await;
    let mut alice = gw.open("vm2", "console", &token(ALICE)).await;
    shell_answers(&mut alice).await;

    // The tutor leaves the members: their session ends, alice's goes on.
    rewrite(&gw.file, &targets_yaml(&[], &both));
    let t0 = Instant::now();
    assert_closed_with(&mut tutor, 4009, Duration::from_secs(3)).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    shell_answers(&mut alice).await;

    // vm2 leaves the file: alice's session on it ends.
    rewrite(&gw.file, &targets_yaml(&[], &shell()));
    let t0 = Instant::now();
    assert_closed_with(&mut alice, 4009, Duration::from_secs(3)).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // And new sessions to it are refused as unknown.
    let mut again = gw.open("vm2", "console", &token(ALICE)).await;
    assert_closed_with(&mut again, 4005, Duration::from_secs(5)).await;
    // Both ends are counted as revocations.
    let metrics = gw.get("/metrics").await;
    assert!(
        metrics.contains(r#"labgate_gateway_sessions_total{kind="console",outcome="revoked"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_refused_and_dropped_targets_get_4012_without_hanging() {
    // Nothing listens on this port any more.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A target that accepts, then hangs up mid-stream.
    let dir = tempfile::tempdir().unwrap();
    let flaky = dir.path().join("flaky.sock");
    let listener = tokio::net::UnixListener::bind(&flaky).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"RFB 003.008\n").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(s);
        }
    });
    let vms = vm("refused", Some(format!("tcp:127.0.0.1:{closed_port}")), None)
        // TEST-NET-1 (RFC 5737): never routed; either unreachable at once or the connect times out.
        + &vm("blackhole", Some("tcp:192.0.2.1:5900".into()), None)
        + &vm("nosocket", None, Some(format!("unix:{}", dir.path().join("none.sock").display())))
        + &vm("flaky", Some(format!("unix:{}", flaky.display())), None);
    let gw = start(
        &targets_yaml(&[], &vms),
        &["--upstream-connect-timeout", "1s"],
    )
    .await;
    for (name, kind) in [
        ("refused", "vnc"),
        ("blackhole", "vnc"),
        ("nosocket", "console"),
    ] {
        let t0 = Instant::now();
        let mut ws = gw.open(name, kind, &token(ALICE)).await;
        assert_closed_with(&mut ws, 4012, Duration::from_secs(5)).await;
        // Bounded by the connect timeout, not by TCP's minutes of retries.
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{name}: {:?}",
            t0.elapsed()
        );
    }
    let mut ws = gw.open("flaky", "vnc", &token(ALICE)).await;
    read_until(&mut ws, "RFB").await;
    assert_closed_with(&mut ws, 4012, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_viewer_takes_the_screen_over() {
    let xvnc = Xvnc::start().unwrap();
    let vms = vm(
        "vm1",
        Some(format!("unix:{}", xvnc.socket().display())),
        None,
    );
    let gw = start(&targets_yaml(&[TUTOR], &vms), &[]).await;
    let mut first = gw.open("vm1", "vnc", &token(ALICE)).await;
    rfb_handshake(&mut first).await;
    let mut second = gw.open("vm1", "vnc", &token(TUTOR)).await;
    assert_closed_with(&mut first, 4007, Duration::from_secs(5)).await;
    rfb_handshake(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_never_dials_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("counted.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
    }
    let vms = vm("vm1", None, Some(format!("unix:{}", sock.display())));
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    let forged = {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": ALICE, "aud": AUDIENCE, "exp": exp}),
            &EncodingKey::from_secret(b"not-the-gateway-secret-0123456789"),
        )
        .unwrap()
    };
    let mut ws = gw.open("vm1", "console", &forged).await;
    assert_closed_with(&mut ws, 4001, Duration::from_secs(5)).await;
    let mut ws = gw.open("vm1", "console", "not-a-token").await;
    assert_closed_with(&mut ws, 4001, Duration::from_secs(5)).await;
    // Someone else's valid token: refused before the backend too.
    let mut ws = gw
        .open("vm1", "console", &token("mallory@example.com"))
        .await;
    assert_closed_with(&mut ws, 4003, Duration::from_secs(5)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused session reached the target"
    );
    // The counter works: a valid session does dial.
    let _ws = gw.open("vm1", "console", &token(ALICE)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "a valid session never dialled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_at_start_and_ignored_on_reload() {
    let vms = vm("vm1", None, Some("pty:/bin/sh -i".into()));
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    let mut ws = gw.open("vm1", "console", &token(ALICE)).await;
    shell_answers(&mut ws).await;
    // A broken edit keeps the previous targets (and the session).
    rewrite(
        &gw.file,
        "labs:\n  - name: lab-a\n    owner: x\n    vms:\n      - {name: vm1, screen: 'pty:/bin/sh'}\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    shell_answers(&mut ws).await;

    let bad = start("labs: [{name: Bad_Name, owner: a}]\n", &[]).await;
    let mut bad = bad;
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut bad.task)
        .await
        .expect("a gateway with a bad file should stop at once");
    let err = ended.unwrap().expect_err("a bad file must not start");
    assert!(format!("{err:#}").contains("Bad_Name"), "{err:#}");
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_session_that_ends_hangs_up_on_its_program_and_its_jobs() {
    let vms = vm("vm1", None, Some("pty:/bin/bash --norc -i".into()));
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    let mut ws = gw.open("vm1", "console", &token(ALICE)).await;
    ws.send(Message::Binary(Bytes::from_static(
        b"sleep 1234 & echo job-pid=$!; echo shell-pid=$$ m$((40+2))\r",
    )))
    .await
    .unwrap();
    // The output, not the echo of the typed line, says m42.
    let text = read_until(&mut ws, " m42").await;
    let pid_after = |label: &str| -> u32 {
        let start = text.rfind(label).unwrap() + label.len();
        text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let (job, shell) = (pid_after("job-pid="), pid_after("shell-pid="));
    assert!(running(job) && running(shell));
    ws.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(job) || running(shell) {
        assert!(
            Instant::now() < deadline,
            "still running after the session ended: job {} shell {}",
            running(job),
            running(shell)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- screenshots: a short shared RFB capture of the screen -------------------

/// A plain HTTP GET; returns the status and the body's bytes.
async fn get_bytes(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, out[end + 4..].to_vec())
}

fn screenshot_path(vm: &str) -> String {
    format!("/labs/lab-a/{vm}/screenshot?token={}", token(ALICE))
}

fn set_background(display: &str, colour: &str) {
    let status = std::process::Command::new("xsetroot")
        .args(["-display", display, "-solid", colour])
        .status()
        .expect("xsetroot (x11-xserver-utils) runs");
    assert!(status.success(), "xsetroot on {display}");
}

/// Decodes a PNG; returns its size and the share of its pixels that are `rgb`.
fn share_of(png_bytes: &[u8], rgb: [u8; 3]) -> (u32, u32, f64) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = (info.width * info.height) as usize;
    let matching = buf[..pixels * channels]
        .chunks_exact(channels)
        .filter(|p| p[..3] == rgb)
        .count();
    (info.width, info.height, matching as f64 / pixels as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_xvnc_over_tcp_and_unix_show_its_background() {
    let xvnc = Xvnc::start_with_tcp().unwrap();
    set_background(&xvnc.display(), "#336699");
    let port = xvnc.tcp_port().unwrap();
    let vms = vm("over-tcp", Some(format!("tcp:127.0.0.1:{port}")), None)
        + &vm(
            "over-unix",
            Some(format!("unix:{}", xvnc.socket().display())),
            None,
        )
        + &vm("console-only", None, Some("pty:/bin/true".into()));
    // A 1 ms cache: every request below is a capture of its own.
    let gw = start(&targets_yaml(&[], &vms), &["--screenshot-cache-ttl", "1ms"]).await;
    let mut took = Vec::new();
    for round in 0..5 {
        for name in ["over-tcp", "over-unix"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t0 = Instant::now();
            let (status, png) = get_bytes(gw.addr, &screenshot_path(name)).await;
            took.push(t0.elapsed());
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&png));
            if round == 0 {
                let (w, h, share) = share_of(&png, [0x33, 0x66, 0x99]);
                assert_eq!((w, h), (800, 600), "{name}");
                // All but the cursor, which Xvnc may draw into a Raw-only client's frame.
                assert!(share > 0.99, "{name}: {share} of the screen is #336699");
            }
        }
    }
    took.sort();
    eprintln!(
        "screenshot latency against Xvnc 800x600 (gateway, RFB capture, PNG; {} captures): min {:?}, median {:?}, max {:?}",
        took.len(),
        took[0],
        took[took.len() / 2],
        took[took.len() - 1]
    );
    // The background changes: a new capture shows it.
    set_background(&xvnc.display(), "#cc3300");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, png) = get_bytes(gw.addr, &screenshot_path("over-unix")).await;
    assert_eq!(status, 200);
    assert!(share_of(&png, [0xcc, 0x33, 0x00]).2 > 0.99);
    // KubeVirt's answers for a VM without a screen, and for no VM at all.
    assert_eq!(
        get_bytes(gw.addr, &screenshot_path("console-only")).await.0,
        409
    );
    assert_eq!(get_bytes(gw.addr, &screenshot_path("nope")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_leaves_the_live_session_of_that_screen_open() {
    // No -AlwaysShared: an exclusive (non-shared) client would disconnect the viewer.
    let xvnc = Xvnc::start_sharing_on_request().unwrap();
    set_background(&xvnc.display(), "#336699");
    let vms = vm(
        "vm1",
        Some(format!("unix:{}", xvnc.socket().display())),
        None,
    );
    let gw = start(&targets_yaml(&[], &vms), &[]).await;
    let mut viewer = gw.open("vm1", "vnc", &token(ALICE)).await;
    let (w, h) = rfb_handshake(&mut viewer).await;
    // The screen is relayed here: the static backend's capture is shared, so it is taken.
    let (status, png) = get_bytes(gw.addr, &screenshot_path("vm1")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert!(share_of(&png, [0x33, 0x66, 0x99]).2 > 0.99);
    // The viewer still has its screen: the rest of its first update arrives
    // without a close, and a new full update request is answered.
    let mut quiet = 0;
    while quiet < 3 {
        match tokio::time::timeout(Duration::from_millis(200), viewer.next()).await {
            Err(_) => quiet += 1,
            Ok(Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)))) => quiet = 0,
            other => panic!("the viewer lost its screen during a capture: {other:?}"),
        }
    }
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    viewer
        .send(Message::Binary(req.into()))
        .await
        .expect("the viewer's session is still open");
    match tokio::time::timeout(Duration::from_secs(5), viewer.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(b[0], 0, "a FramebufferUpdate"),
        other => panic!("the viewer lost its screen during a capture: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_password_protected_screens_fail_in_time_with_502() {
    let dir = tempfile::tempdir().unwrap();
    // Greets, then never says anything again.
    let hangs = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hangs_port = hangs.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = hangs.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"RFB 003.008\n").await;
            held.push(s);
        }
    });
    // Asks for a VNC password (security type 2 only).
    let locked = dir.path().join("locked.sock");
    let listener = tokio::net::UnixListener::bind(&locked).unwrap();
    let dialled = Arc::new(AtomicUsize::new(0));
    let seen = dialled.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"RFB 003.008\n\x01\x02").await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        }
    });
    let vms = vm("hangs", Some(format!("tcp:127.0.0.1:{hangs_port}")), None)
        + &vm("locked", Some(format!("unix:{}", locked.display())), None);
    let gw = start(&targets_yaml(&[], &vms), &["--screenshot-timeout", "500ms"]).await;
    for name in ["hangs", "locked"] {
        let t0 = Instant::now();
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            get_bytes(gw.addr, &screenshot_path(name)),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: no answer within 5 s"));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 502, "{name}: {body}");
        assert!(
            body.contains(r#""error":"upstream_error""#),
            "{name}: {body}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{name}: {:?}",
            t0.elapsed()
        );
    }
    assert_eq!(dialled.load(Ordering::SeqCst), 1);
}
