//! The demo binary as a user runs it: it prints the viewer URL with a token,
//! a websocket client reaches the desktop's RFB greeting and a shell's echo
//! through it, and Ctrl-C (SIGINT) or SIGTERM stops every process it started.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every process's parent, from /proc.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
            && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok())
        {
            map.insert(pid, ppid);
        }
    }
    map
}

fn descendants(root: u32) -> HashSet<u32> {
    let parents = parents();
    let mut found = HashSet::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (&pid, &ppid) in &parents {
            if (ppid == root || found.contains(&ppid)) && found.insert(pid) {
                grew = true;
            }
        }
    }
    found
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
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

struct Demo {
    child: Child,
    url: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the demo binary and waits for its viewer URL.
fn start_demo() -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labgate-gateway"))
        .args(["--demo", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Owned by `Demo` from here on, so it is killed and reaped even if this fails.
    let mut demo = Demo {
        child,
        url: String::new(),
        lines,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match demo.lines.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim().to_string();
                if line.starts_with("http://") && line.contains("/view/demo#token=") {
                    demo.url = line;
                    return demo;
                }
                seen.push(line);
            }
            Err(_) => panic!("the demo printed no viewer URL; it printed: {seen:#?}"),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session the way the viewer page does: token in the bearer subprotocol.
async fn open(base: &str, token: &str, vm: &str, kind: &str) -> Ws {
    let url = format!(
        "{}/labs/demo/{vm}/{kind}",
        base.replacen("http://", "ws://", 1)
    );
    let mut req = url.into_client_request().unwrap();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("base64url.bearer.authorization.k8s.io.{encoded}, binary")
            .parse()
            .unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn read_until(ws: &mut Ws, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if seen.windows(needle.len()).any(|w| w == needle) {
            return seen;
        }
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "waiting for {:?}: {other:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops the demo with `sig` and checks that it exits and that none of
/// `children` (processes it started) outlives it.
fn stop_and_check(mut demo: Demo, sig: &str, children: &HashSet<u32>) {
    signal(demo.child.id(), sig);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit on SIG{sig}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "SIG{sig}: exit status {status}");
    // Children are reaped by init once their parent is gone: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<String> = children
            .iter()
            .filter(|&&p| running(p))
            .map(|&p| format!("{p} {}", command_name(p)))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after SIG{sig}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest: Vec<String> = demo.lines.try_iter().collect();
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_desktop_and_shells_and_stops_everything_it_started() {
    let demo = start_demo();
    let (base, token) = demo.url.split_once("/view/demo#token=").unwrap();
    let (base, token) = (base.to_string(), token.to_string());

    // The desktop's screen: Xvnc's RFB greeting.
    let mut screen = open(&base, &token, "desktop", "vnc").await;
    read_until(&mut screen, b"RFB 003.008\n").await;
    // Both VMs' consoles are real shells on PTYs.
    let mut shells = Vec::new();
    for vm in ["desktop", "shell"] {
        let mut ws = open(&base, &token, vm, "console").await;
        ws.send(Message::Binary(Bytes::from_static(b"echo demo-$((6*7))\r")))
            .await
            .unwrap();
        read_until(&mut ws, b"demo-42").await;
        shells.push(ws);
    }
    // The shell VM has no screen.
    let mut none = open(&base, &token, "shell", "vnc").await;
    match tokio::time::timeout(Duration::from_secs(5), none.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 4017),
        other => panic!("{other:?}"),
    }

    let children = descendants(demo.child.id());
    let names: HashSet<String> = children.iter().map(|&p| command_name(p)).collect();
    for expected in ["Xvnc", "xterm"] {
        assert!(
            names.contains(expected),
            "{expected} not running: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "bash" || n == "sh"),
        "no shell running: {names:?}"
    );
    // Sessions are still open: stopping must end them and their shells too.
    stop_and_check(demo, "INT", &children);
    drop((screen, shells));

    // SIGTERM (how a service manager stops it) does the same.
    let demo = start_demo();
    let (base, token) = demo.url.split_once("/view/demo#token=").unwrap();
    let mut ws = open(base, token, "shell", "console").await;
    ws.send(Message::Binary(Bytes::from_static(
        b"echo again-$((6*7))\r",
    )))
    .await
    .unwrap();
    read_until(&mut ws, b"again-42").await;
    let children = descendants(demo.child.id());
    assert!(children.len() >= 3, "Xvnc, xterm and a shell: {children:?}");
    stop_and_check(demo, "TERM", &children);
}
