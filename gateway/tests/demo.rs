//! The demo binary as a user runs it: it prints the viewer URL with a token,
//! a websocket client reaches the desktop's RFB greeting and a shell's echo
//! through it, and Ctrl-C (SIGINT) or SIGTERM stops every process it started.
//! Then the same in headless Chromium: the printed viewer URL shows the desktop,
//! takes typing on the consoles, switches VMs, and explains an expired link and
//! a takeover (screenshots under the browser tests' output folder).
//!
//! The browser test lives here, not in tests/tests/browser.rs, because only the
//! gateway's own tests get its binary (`CARGO_BIN_EXE_…`) freshly built; it
//! shares that file's driver (tests/tests/browser/driver.rs).

#[path = "../../tests/tests/browser/driver.rs"]
mod driver;

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
    /// What it printed up to its "Press Ctrl-C" line.
    printed: Vec<String>,
    lines: mpsc::Receiver<String>,
    /// The demo's `HOME`: start-up files that leave a mark when a shell reads them.
    home: tempfile::TempDir,
}

/// The file a shell start-up file in the demo's `HOME` creates when read.
const RC_MARK: &str = "a-start-up-file-was-read";

impl Demo {
    /// Whether any shell the demo started read the user's start-up files.
    fn shell_read_start_up_files(&self) -> bool {
        self.home.path().join(RC_MARK).exists()
    }
}

impl Drop for Demo {
    /// A test that fails midway still stops the demo as Ctrl-C does, so its Xvnc, xterm and
    /// shells do not outlive the test; SIGKILL only if it does not exit.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the demo binary and waits for its instructions (the viewer URL and
/// the rest, up to "Press Ctrl-C").
fn start_demo() -> Demo {
    // A user's ~/.bashrc may be slow or stateful (pyenv's takes a lock that a
    // hung-up shell leaves behind, and later shells wait 60 s for it): the
    // demo's shells must not read it. These mark that they were read.
    let home = tempfile::tempdir().unwrap();
    for rc in [".bashrc", ".bash_profile", ".profile"] {
        std::fs::write(home.path().join(rc), format!("touch \"$HOME/{RC_MARK}\"\n")).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_labgate-gateway"))
        .args(["--demo", "--listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        // Its shells start here: a neutral place, not the source tree.
        .current_dir(std::env::temp_dir())
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
        printed: Vec::new(),
        lines,
        home,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match demo.lines.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim().to_string();
                if line.starts_with("http://") && line.contains("/view/demo#token=") {
                    demo.url = line.clone();
                }
                let done = line.starts_with("Press Ctrl-C");
                demo.printed.push(line);
                if done && !demo.url.is_empty() {
                    return demo;
                }
            }
            Err(_) => panic!(
                "the demo printed no viewer URL and instructions; it printed: {:#?}",
                demo.printed
            ),
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
    // By now the xterm's shell has started too.
    assert!(
        !demo.shell_read_start_up_files(),
        "a demo shell read the user's start-up files"
    );
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
    assert!(
        !demo.shell_read_start_up_files(),
        "a demo shell read the user's start-up files"
    );
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

/// The desktop's background (`demo::DEMO_BACKGROUND`, #336699) as RGB.
const BACKGROUND: [u8; 3] = [0x33, 0x66, 0x99];
/// Points of the 1024x768 desktop away from the xterm (at +40+40, about 560x420).
const BACKGROUND_POINTS: [[u32; 2]; 5] =
    [[1010, 12], [12, 750], [900, 700], [700, 600], [1000, 380]];
/// A point inside the xterm window.
const WINDOW_POINT: [u32; 2] = [300, 300];
/// The inside of the xterm window (x, y, width, height), where typed text shows.
const WINDOW_INSIDE: [u32; 4] = [44, 44, 530, 380];
/// How far a channel may drift (noVNC may get lossy JPEG rectangles).
const TOLERANCE: u8 = 12;

fn close_to(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= TOLERANCE)
}

fn colours(value: &serde_json::Value) -> Vec<[u8; 3]> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let c: Vec<u8> = p
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_u64().unwrap_or(0) as u8)
                .collect();
            [c[0], c[1], c[2]]
        })
        .collect()
}

/// Waits until the viewer page `page` shows the demo desktop on its noVNC canvas: the
/// background colour away from the window, and something else (the xterm) inside it.
async fn wait_for_desktop(browser: &mut driver::Browser, page: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut points: Vec<[u32; 2]> = BACKGROUND_POINTS.to_vec();
    points.push(WINDOW_POINT);
    loop {
        let seen = colours(
            &browser
                .call(
                    "pixels",
                    serde_json::json!({"name": page, "points": points}),
                )
                .await?,
        );
        let (window, background) = seen.split_last().unwrap_or((&[0, 0, 0], &[]));
        if background.len() == BACKGROUND_POINTS.len()
            && background.iter().all(|c| close_to(*c, BACKGROUND))
            && !close_to(*window, BACKGROUND)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the canvas does not show the demo desktop: background samples {background:?} \
             (want {BACKGROUND:?}), window sample {window:?} (want anything else)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dark (text) pixels inside the desktop's xterm.
async fn dark_in_window(browser: &mut driver::Browser) -> anyhow::Result<u64> {
    let region = browser
        .call(
            "region",
            serde_json::json!({"name": "viewer", "rect": WINDOW_INSIDE}),
        )
        .await?;
    Ok(region["dark"].as_u64().unwrap_or(0))
}

/// Types a line into the desktop's xterm through noVNC and sees its text appear on the canvas.
async fn type_on_desktop(browser: &mut driver::Browser) -> anyhow::Result<()> {
    // Wait for the xterm's shell prompt to be drawn, so new text is the typing's.
    let mut before = dark_in_window(browser).await?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = dark_in_window(browser).await?;
        if now == before && now > 0 {
            break;
        }
        before = now;
    }
    let typed = "echo Hello from the labgate demo";
    browser
        .call(
            "typeScreen",
            serde_json::json!({"name": "viewer", "at": WINDOW_POINT, "text": typed, "enter": true}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The line and its output: each 6x13 glyph is a dozen or more dark pixels.
        let dark = dark_in_window(browser).await?;
        if dark >= before + 8 * typed.len() as u64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "typing on the desktop did not show: dark pixels in the xterm {before} -> {dark}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `echo <marker>-$((6*7))` on the viewer's console and waits for its output line.
async fn echo_on_console(browser: &mut driver::Browser, marker: &str) -> anyhow::Result<()> {
    browser
        .call(
            "typeViewer",
            serde_json::json!({"name": "viewer", "text": format!("echo {marker}-$((6*7))"), "enter": true}),
        )
        .await?;
    browser
        .call(
            "waitViewerLine",
            serde_json::json!({"name": "viewer", "line": format!("{marker}-42")}),
        )
        .await?;
    Ok(())
}

/// A token for the demo's user signed with the secret in the file the demo printed.
fn expired_token(printed: &[String]) -> anyhow::Result<String> {
    let path = printed
        .iter()
        .find_map(|l| l.split("--hmac-secret-file ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("the demo printed no secret file: {printed:#?}"))?;
    let secret = std::fs::read(path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": labgate_gateway::demo::DEMO_USER,
        "aud": labgate_gateway::demo::DEMO_AUDIENCE,
        "exp": now - 120,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )?)
}

async fn demo_in_the_browser(
    browser: &mut driver::Browser,
    demo: &Demo,
    started: Instant,
) -> anyhow::Result<()> {
    use anyhow::{Context as _, ensure};
    use serde_json::json;
    let shot = |name: &str| format!("demo-{name}");

    // The URL exactly as printed.
    let state = browser
        .call("openViewer", json!({"name": "viewer", "url": demo.url}))
        .await?;
    // The static backend lists both VMs with phase Unknown: no badge for that.
    let vms: Vec<(String, String)> = state["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["phaseText"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    ensure!(
        vms == [
            ("desktop".to_string(), String::new()),
            ("shell".to_string(), String::new())
        ],
        "the page lists (VM, state shown): {vms:?}"
    );
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "desktop", "kind": "vnc"}),
        )
        .await?;
    wait_for_desktop(browser, "viewer").await?;
    eprintln!(
        "demo: {} ms from starting the binary to the desktop on the page's canvas",
        started.elapsed().as_millis()
    );
    browser.screenshot("viewer", &shot("desktop")).await?;
    // Keys reach the desktop; the README's picture (docs/viewer-demo.png) is this one.
    type_on_desktop(browser).await?;
    browser
        .call(
            "viewport",
            json!({"name": "viewer", "width": 1000, "height": 680}),
        )
        .await?;
    wait_for_desktop(browser, "viewer").await?;
    browser.screenshot("viewer", &shot("readme")).await?;

    // The desktop VM's console: a shell that echoes.
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": "#tab-console"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "desktop", "kind": "console"}),
        )
        .await?;
    echo_on_console(browser, "desktop").await?;
    browser
        .screenshot("viewer", &shot("desktop-console"))
        .await?;

    // The other VM (console only), then back to the desktop's screen, without a reload.
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": ".vm[data-vm=\"shell\"]"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "shell", "kind": "console"}),
        )
        .await?;
    echo_on_console(browser, "shell").await?;
    browser.screenshot("viewer", &shot("shell")).await?;
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": ".vm[data-vm=\"desktop\"]"}),
        )
        .await?;
    browser
        .call("click", json!({"name": "viewer", "selector": "#tab-vnc"}))
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "desktop", "kind": "vnc"}),
        )
        .await?;
    wait_for_desktop(browser, "viewer").await?;

    // The same link in a second tab takes the desktop's screen over; the first says so.
    browser
        .call("openViewer", json!({"name": "second", "url": demo.url}))
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "second", "state": "connected", "vm": "desktop", "kind": "vnc"}),
        )
        .await?;
    let state = browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "ended", "closeCode": 4007}),
        )
        .await
        .context("the first tab was not told it was taken over")?;
    ensure!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("You opened this machine in another window")),
        "the taken-over tab says {state}"
    );
    browser.screenshot("viewer", &shot("taken-over")).await?;
    wait_for_desktop(browser, "second").await?;

    // A link whose token has expired: the sentence, and nothing to retry.
    let (base, _) = demo
        .url
        .split_once('#')
        .context("no fragment in the printed URL")?;
    let expired = format!("{base}#token={}", expired_token(&demo.printed)?);
    browser
        .call("openViewer", json!({"name": "expired", "url": expired}))
        .await?;
    let state = browser
        .call(
            "waitViewer",
            json!({"name": "expired", "state": "ended", "closeCode": 4002}),
        )
        .await?;
    ensure!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("This link has expired."))
            && state["action"].is_null(),
        "the expired link's page shows {state}"
    );
    browser.screenshot("expired", &shot("expired")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_url_shows_the_desktop_and_shells_in_a_browser() {
    assert!(
        labgate_gateway::viewer::is_built(),
        "the viewer page is not built into this gateway: run scripts/build-viewer.sh, then the tests"
    );
    for entry in std::fs::read_dir(driver::output_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("demo-") && name.ends_with(".png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut browser = driver::Browser::launch(None, "demo")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let demo = start_demo();
    let result = demo_in_the_browser(&mut browser, &demo, started).await;
    browser.finish("demo", result).await;
    let children = descendants(demo.child.id());
    stop_and_check(demo, "INT", &children);
}
