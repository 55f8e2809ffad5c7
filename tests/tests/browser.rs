//! Real clients end to end: noVNC (newest and 1.1) and xterm.js with its attach addon, running
//! in headless Chromium, through the gateway over TLS to a real Xvnc and a real PTY shell behind
//! the Kubernetes stand-in. Screenshots go to `target/browser-test-output/`.
//!
//! Needs `npm ci` in tests/browser, and the Debian packages nodejs, chromium, libnss3-tools,
//! xterm, x11-xserver-utils (plus the harness's tigervnc-standalone-server and socat).

mod support;

#[path = "browser/driver.rs"]
mod driver;
#[path = "browser/x11.rs"]
mod x11;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use driver::Browser;
use labgate_gateway::Refusal;
use labgate_tests::standin::{UpstreamAddr, Vmi};
use serde_json::{Value, json};
use support::*;
use x11::{Picture, Rect};

/// One Chromium at a time: the tests share two cores with the gateway, Xvnc and each other.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far a channel may drift from the drawn colour (noVNC may get lossy Tight/JPEG data).
const TOLERANCE: u8 = 10;
/// Functional deadline for the screen to show what was drawn or typed.
const SCREEN_DEADLINE: Duration = Duration::from_secs(10);

/// A started environment, its picture and a browser, ready for one scenario.
struct Stage {
    env: Env,
    browser: Browser,
    _picture: Picture,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Everything the in-process gateways of this test binary logged, at debug level.
static GATEWAY_LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogCapture;

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        GATEWAY_LOG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per test binary, before the harness's own subscriber) a subscriber that
/// keeps the gateway's debug log, request lines included, for the token-leak check.
fn capture_gateway_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,labgate=debug,labgate_gateway=debug,hyper=debug,tungstenite=debug,tokio_tungstenite=debug",
        ))
        .with_ansi(false)
        .with_writer(|| LogCapture)
        .try_init();
}

fn gateway_log() -> String {
    String::from_utf8_lossy(&GATEWAY_LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

async fn stage(scenario: &str) -> Stage {
    capture_gateway_log();
    let turn = ONE_BROWSER_AT_A_TIME.lock().await;
    clear_old_screenshots(scenario);
    let env = start(Options::default()).await.expect("test environment");
    let display = env.xvnc.as_ref().expect("Xvnc runs").display();
    let picture = Picture::draw(&display).expect("drawing the known picture");
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, env.standin.ca().ca_pem()).unwrap();
    let browser = Browser::launch(Some(&ca), scenario)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    Stage {
        env,
        browser,
        _picture: picture,
        _turn: turn,
    }
}

fn clear_old_screenshots(scenario: &str) {
    let Ok(entries) = std::fs::read_dir(driver::output_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(scenario) && name.ends_with(".png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn url(env: &Env, lab: &str, vm: &str, kind: &str, token: &str) -> String {
    format!(
        "wss://localhost:{}/labs/{lab}/{vm}/{kind}/{token}",
        env.addr.port()
    )
}

fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn random_word() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The page's last websocket record (see tests/browser/pages/record.js).
fn last_socket(state: &Value) -> anyhow::Result<&Value> {
    state["sockets"]
        .as_array()
        .and_then(|s| s.last())
        .with_context(|| format!("the page opened no websocket: {state}"))
}

fn colours(value: &Value) -> Vec<[u8; 3]> {
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

async fn region(browser: &mut Browser, page: &str, rect: Rect) -> anyhow::Result<(u64, u64)> {
    let r = browser
        .call("region", json!({"name": page, "rect": rect}))
        .await?;
    Ok((
        r["hash"].as_u64().unwrap_or(0),
        r["dark"].as_u64().unwrap_or(0),
    ))
}

/// Waits until the noVNC canvas of `page` shows the known picture: the root colour at points
/// away from the window, the window's white where no text is, and dark text pixels on its first row.
async fn wait_for_picture(browser: &mut Browser, page: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SCREEN_DEADLINE;
    loop {
        let root = colours(
            &browser
                .call("pixels", json!({"name": page, "points": x11::ROOT_POINTS}))
                .await?,
        );
        let blank = colours(
            &browser
                .call(
                    "pixels",
                    json!({"name": page, "points": x11::WINDOW_BLANK_POINTS}),
                )
                .await?,
        );
        let (_, text_pixels) = region(browser, page, x11::FIRST_ROW).await?;
        let root_ok = root
            .iter()
            .all(|c| x11::close_to(*c, x11::ROOT_COLOUR, TOLERANCE));
        let window_ok = blank
            .iter()
            .all(|c| x11::close_to(*c, x11::WINDOW_COLOUR, TOLERANCE));
        // "LABGATE KNOWN PICTURE" in 6x13 `fixed` is a few hundred dark pixels.
        let text_ok = text_pixels >= 100;
        if root_ok && window_ok && text_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the canvas does not show the known picture within {SCREEN_DEADLINE:?}: root \
                 samples {root:?} (want {:?}), window samples {blank:?} (want {:?}), {text_pixels} \
                 dark pixels on the text row (want >= 100)",
                x11::ROOT_COLOUR,
                x11::WINDOW_COLOUR
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `rect` stops changing (e.g. after the xterm's cursor reacts to focus).
async fn settled_region(
    browser: &mut Browser,
    page: &str,
    rect: Rect,
) -> anyhow::Result<(u64, u64)> {
    let mut last = region(browser, page, rect).await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = region(browser, page, rect).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// noVNC `lib` connects through wss://, shows the known picture, and typing into the xterm
/// through noVNC changes the pixels where the keys are echoed.
async fn novnc_scenario(
    stage: &mut Stage,
    scenario: &str,
    lib: &str,
    asks_for: &[&str],
) -> anyhow::Result<()> {
    let Stage { env, browser, .. } = stage;
    let state = browser
        .call(
            "open",
            json!({"name": "vnc", "kind": "vnc", "lib": lib,
                   "url": url(env, "lab-alice", "vm1", "vnc", &env.token(ALICE))}),
        )
        .await?;
    ensure!(
        state["connected"] == true,
        "noVNC {lib} did not connect: {state}"
    );
    let socket = last_socket(&state)?;
    // What this noVNC asked for, and what the gateway's handshake answer gave the browser.
    ensure!(
        socket["requested"] == json!(asks_for),
        "noVNC {lib} requested {} (expected {asks_for:?})",
        socket["requested"]
    );
    let negotiated = asks_for.first().copied().unwrap_or("");
    ensure!(
        socket["protocol"] == negotiated,
        "negotiated subprotocol {} (expected {negotiated:?})",
        socket["protocol"]
    );

    wait_for_picture(browser, "vnc").await?;
    browser
        .screenshot("vnc", &format!("{scenario}-picture"))
        .await?;

    // Put the X pointer over the xterm (no window manager: focus follows the pointer), let
    // the cursor settle, then type.
    browser
        .call("type", json!({"name": "vnc", "text": "", "at": [300, 150]}))
        .await?;
    let (before_hash, before_dark) = settled_region(browser, "vnc", x11::SECOND_ROW).await?;
    let typed = format!("typed-through-novnc-{}", random_word());
    browser
        .call("type", json!({"name": "vnc", "text": typed}))
        .await?;
    let deadline = Instant::now() + SCREEN_DEADLINE;
    loop {
        let (hash, dark) = region(browser, "vnc", x11::SECOND_ROW).await?;
        // Each 6x13 glyph adds a dozen or more dark pixels; the cursor alone cannot do this.
        if hash != before_hash && dark >= before_dark + 8 * typed.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "typing {} characters did not change the echo row: dark pixels {before_dark} -> {dark}",
                typed.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rest of the picture is untouched.
    wait_for_picture(browser, "vnc").await?;
    browser
        .screenshot("vnc", &format!("{scenario}-typed"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novnc_newest_shows_the_screen_and_takes_keys() {
    let scenario = "novnc-newest";
    let mut stage = stage(scenario).await;
    let result = novnc_scenario(&mut stage, scenario, "1.7", &[]).await;
    stage.browser.finish(scenario, result).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novnc_1_1_asks_for_binary_and_works() {
    let scenario = "novnc-1.1";
    let mut stage = stage(scenario).await;
    let result = novnc_scenario(&mut stage, scenario, "1.1", &["binary"]).await;
    stage.browser.finish(scenario, result).await;
}

/// Waits for the shell's first prompt (`PS1="$ "` in the fixture), as a student would before
/// typing: keys sent while socat is still setting up the PTY may be flushed with its settings.
async fn wait_for_prompt(browser: &mut Browser, page: &str) -> anyhow::Result<()> {
    browser
        .call("waitReceived", json!({"name": page, "needle": "$ "}))
        .await
        .map(drop)
        .context("no shell prompt on the console")
}

/// xterm.js types a command into the PTY shell and sees its output; a large output arrives whole.
async fn console_scenario(stage: &mut Stage, scenario: &str) -> anyhow::Result<()> {
    let Stage { env, browser, .. } = stage;
    let state = browser
        .call(
            "open",
            json!({"name": "console", "kind": "console",
                   "url": url(env, "lab-alice", "vm1", "console", &env.token(ALICE))}),
        )
        .await?;
    ensure!(
        state["connected"] == true,
        "xterm.js did not connect: {state}"
    );

    wait_for_prompt(browser, "console").await?;
    let marker = format!("labgate-{}", random_word());
    browser
        .call(
            "type",
            json!({"name": "console", "text": format!("echo {marker}"), "enter": true}),
        )
        .await?;
    // The shell's output line is exactly the marker (the echoed command line has `echo ` too).
    let lines = browser
        .call("waitLine", json!({"name": "console", "line": marker}))
        .await?;
    ensure!(
        lines.as_array().into_iter().flatten().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains(&format!("echo {marker}")))),
        "the typed command line was not echoed: {lines}"
    );
    browser
        .screenshot("console", &format!("{scenario}-echo"))
        .await?;

    // A large output: every number from 1 to 200000, in order, none missing.
    let count = 200_000;
    let done = format!("seq-done-{}", random_word());
    browser
        .call(
            "type",
            json!({"name": "console", "text": format!("seq 1 {count}; echo {done}"), "enter": true}),
        )
        .await?;
    browser
        .call(
            "waitReceived",
            json!({"name": "console", "needle": format!("\n{done}"), "timeoutMs": 30000}),
        )
        .await?;
    let received = browser.call("received", json!({"name": "console"})).await?;
    let received = received.as_str().unwrap_or_default();
    let start = received
        .find(&format!("seq 1 {count}; echo {done}\r\n"))
        .context("the seq command line is not in the received bytes")?;
    let numbers: Vec<&str> = received[start..]
        .lines()
        .skip(1)
        .map(|l| l.trim_end_matches('\r'))
        .take_while(|l| !l.contains(&done))
        .collect();
    ensure!(
        numbers.len() == count,
        "received {} lines of seq output, expected {count}",
        numbers.len()
    );
    for (i, n) in numbers.iter().enumerate() {
        ensure!(
            *n == (i + 1).to_string(),
            "seq output line {} is {n:?}",
            i + 1
        );
    }
    // And the terminal itself rendered the end of it.
    browser
        .call("waitLine", json!({"name": "console", "line": done}))
        .await?;
    let lines = browser.call("lines", json!({"name": "console"})).await?;
    ensure!(
        lines
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l.as_str().map(str::trim) == Some("200000")),
        "the terminal does not show the last number"
    );
    browser
        .screenshot("console", &format!("{scenario}-seq"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xterm_console_echoes_and_streams_large_output() {
    let scenario = "xterm-console";
    let mut stage = stage(scenario).await;
    let result = console_scenario(&mut stage, scenario).await;
    stage.browser.finish(scenario, result).await;
}

/// Checks that the browser saw the close `refusal` on the page's socket.
fn assert_closed_with(state: &Value, refusal: Refusal) -> anyhow::Result<()> {
    let close = &last_socket(state)?["close"];
    ensure!(
        close["code"] == refusal.close_code() && close["reason"] == refusal.reason(),
        "the browser's close event was {close}, expected {} {:?}",
        refusal.close_code(),
        refusal.reason()
    );
    Ok(())
}

/// Refused sessions: each client reports the gateway's reason.
async fn refusals_scenario(stage: &mut Stage, scenario: &str) -> anyhow::Result<()> {
    let Stage { env, browser, .. } = stage;
    let expired = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() - 120}));
    let bobs = env.token(BOB);
    let alices = env.token(ALICE);
    let cases = [
        ("expired", "vm1", expired.as_str(), Refusal::TokenExpired),
        ("not-yours", "vm1", bobs.as_str(), Refusal::NotYours),
        ("stopped", "stopped", alices.as_str(), Refusal::VmNotRunning),
    ];
    for (case, vm, token, refusal) in cases {
        for lib in ["1.7", "1.1"] {
            let page = format!("novnc-{lib}-{case}");
            browser
                .call(
                    "open",
                    json!({"name": page, "kind": "vnc", "lib": lib,
                           "url": url(env, "lab-alice", vm, "vnc", token)}),
                )
                .await?;
            let state = browser.call("waitClosed", json!({"name": page})).await?;
            assert_closed_with(&state, refusal).with_context(|| page.clone())?;
            ensure!(
                state["connected"] == false && state["disconnected"]["clean"] == false,
                "{page}: noVNC should report an unclean disconnect: {state}"
            );
            // noVNC's own error report carries the code and the reason text.
            let expected = format!(
                "(code: {}, reason: {})",
                refusal.close_code(),
                refusal.reason()
            );
            ensure!(
                state["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e.as_str().is_some_and(|e| e.contains(&expected))),
                "{page}: noVNC did not report {expected:?}: {}",
                state["errors"]
            );
            browser
                .screenshot(&page, &format!("{scenario}-{page}"))
                .await?;
        }

        let page = format!("xterm-{case}");
        browser
            .call(
                "open",
                json!({"name": page, "kind": "console",
                       "url": url(env, "lab-alice", vm, "console", token)}),
            )
            .await?;
        let state = browser.call("waitClosed", json!({"name": page})).await?;
        assert_closed_with(&state, refusal).with_context(|| page.clone())?;
        let event = &state["closeEvent"];
        ensure!(
            event["code"] == refusal.close_code() && event["reason"] == refusal.reason(),
            "{page}: xterm.js page's close event was {event}"
        );
        // The page writes the reason into the terminal, where the student reads it.
        let shown = format!("closed ({}): {}", refusal.close_code(), refusal.reason());
        let lines = browser.call("lines", json!({"name": page})).await?;
        ensure!(
            lines.to_string().contains(&shown),
            "{page}: the terminal does not show {shown:?}"
        );
        browser
            .screenshot(&page, &format!("{scenario}-{page}"))
            .await?;
        // Token and ownership refusals are decided before KubeVirt is asked (a stopped VM is
        // for KubeVirt to report).
        if refusal != Refusal::VmNotRunning {
            ensure!(
                env.standin.subresource_requests().is_empty(),
                "a session refused as {refusal:?} reached KubeVirt"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_by_both_clients() {
    let scenario = "refusals";
    let mut stage = stage(scenario).await;
    let result = refusals_scenario(&mut stage, scenario).await;
    stage.browser.finish(scenario, result).await;
}

/// A second viewer of the same VM kicks the first, which is told why; same for consoles.
async fn takeover_scenario(stage: &mut Stage, scenario: &str) -> anyhow::Result<()> {
    let Stage { env, browser, .. } = stage;
    for (kind, client) in [("vnc", "1.7"), ("console", "")] {
        let first = format!("{kind}-first");
        let second = format!("{kind}-second");
        let open = |name: &str, who: &str| {
            json!({"name": name, "kind": kind, "lib": if client.is_empty() { Value::Null } else { client.into() },
                   "url": url(env, "lab-alice", "vm1", kind, &env.token(who))})
        };
        let state = browser.call("open", open(&first, ALICE)).await?;
        ensure!(
            state["connected"] == true,
            "{first} did not connect: {state}"
        );
        if kind == "vnc" {
            wait_for_picture(browser, &first).await?;
        }
        let state = browser.call("open", open(&second, TUTOR)).await?;
        ensure!(
            state["connected"] == true,
            "{second} did not connect: {state}"
        );
        let state = browser
            .call("waitClosed", json!({"name": first}))
            .await
            .context("the first viewer was not told it was taken over")?;
        assert_closed_with(&state, Refusal::TakenOver).with_context(|| first.clone())?;
        ensure!(
            state["status"]
                .as_str()
                .is_some_and(|s| s.contains(Refusal::TakenOver.reason())),
            "{first}: the page does not show the reason: {}",
            state["status"]
        );
        browser
            .screenshot(&first, &format!("{scenario}-{first}"))
            .await?;
        // The newcomer keeps working.
        let state = browser.call("state", json!({"name": second})).await?;
        ensure!(
            last_socket(&state)?["close"].is_null(),
            "{second} was closed too: {state}"
        );
        if kind == "vnc" {
            wait_for_picture(browser, &second).await?;
        } else {
            wait_for_prompt(browser, &second).await?;
            let marker = format!("labgate-{}", random_word());
            browser
                .call(
                    "type",
                    json!({"name": second, "text": format!("echo {marker}"), "enter": true}),
                )
                .await?;
            browser
                .call("waitLine", json!({"name": second, "line": marker}))
                .await?;
        }
        browser
            .screenshot(&second, &format!("{scenario}-{second}"))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_viewer_takes_over_and_the_first_is_told() {
    let scenario = "takeover";
    let mut stage = stage(scenario).await;
    let result = takeover_scenario(&mut stage, scenario).await;
    stage.browser.finish(scenario, result).await;
}

/// Deleting the lab's namespace closes the screen and the console within a second, and both
/// clients say why.
async fn revocation_scenario(stage: &mut Stage, scenario: &str) -> anyhow::Result<()> {
    let Stage { env, browser, .. } = stage;
    let state = browser
        .call(
            "open",
            json!({"name": "vnc", "kind": "vnc", "lib": "1.7",
                   "url": url(env, "lab-alice", "vm1", "vnc", &env.token(ALICE))}),
        )
        .await?;
    ensure!(state["connected"] == true, "noVNC did not connect: {state}");
    wait_for_picture(browser, "vnc").await?;
    let state = browser
        .call(
            "open",
            json!({"name": "console", "kind": "console",
                   "url": url(env, "lab-alice", "vm1", "console", &env.token(ALICE))}),
        )
        .await?;
    ensure!(
        state["connected"] == true,
        "xterm.js did not connect: {state}"
    );

    let deleted_at = epoch_millis();
    env.standin.delete_namespace("lab-alice");
    for page in ["vnc", "console"] {
        let state = browser
            .call("waitClosed", json!({"name": page}))
            .await
            .with_context(|| format!("{page} was not closed after the lab was deleted"))?;
        assert_closed_with(&state, Refusal::Revoked).with_context(|| page.to_string())?;
        // Both clocks are this machine's wall clock.
        let closed_at = last_socket(&state)?["close"]["at"].as_u64().unwrap_or(0);
        let after = closed_at.saturating_sub(deleted_at);
        eprintln!("{page} closed {after} ms after the lab was deleted");
        ensure!(
            after < 1000,
            "{page} closed {after} ms after the namespace was deleted (want < 1000)"
        );
        ensure!(
            state["status"]
                .as_str()
                .is_some_and(|s| s.contains(Refusal::Revoked.reason())),
            "{page}: the page does not show the reason: {}",
            state["status"]
        );
        browser
            .screenshot(page, &format!("{scenario}-{page}"))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_lab_closes_both_sessions_within_a_second() {
    let scenario = "revocation";
    let mut stage = stage(scenario).await;
    let result = revocation_scenario(&mut stage, scenario).await;
    stage.browser.finish(scenario, result).await;
}

/// The gateway's own viewer page (`/view/{lab}#token=…`), opened as a student opens the portal's
/// link: it shows the desktop's known picture, takes typing on the console, switches between
/// screen and console and between two VMs without a reload, and tells the student in a sentence
/// when the link has expired or the VM was taken over in another window. The token never
/// appears in a URL the page requests, in a Referer, or in the gateway's log.
async fn viewer_scenario(stage: &mut Stage, scenario: &str) -> anyhow::Result<()> {
    ensure!(
        labgate_gateway::viewer::is_built(),
        "the viewer page is not built into this gateway: run scripts/build-viewer.sh, then the tests"
    );
    let Stage { env, browser, .. } = stage;
    // A second running VM on the same real upstreams, to switch to.
    let screen = env.xvnc.as_ref().context("Xvnc")?.socket();
    let console = env.console.as_ref().context("console")?.socket();
    env.standin.add_vmi(
        "lab-alice",
        "vm2",
        Vmi::running(
            Some(UpstreamAddr::Unix(screen)),
            Some(UpstreamAddr::Unix(console)),
        ),
    );
    let token = env.token(ALICE);
    let expired = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() - 120}));
    let base = format!("https://localhost:{}", env.addr.port());
    // The lab listing's contract (GET labs/{lab}), used only if this gateway has no listing.
    let vm =
        |name: &str| json!({"name": name, "phase": "Running", "screen": true, "console": true});
    let listing = json!({"lab": "lab-alice", "vms": [vm("vm1"), vm("vm2")]});
    let link = |token: &str, vm: &str, kind: &str| {
        format!("{base}/view/lab-alice#token={token}&vm={vm}&kind={kind}")
    };

    // The screen of vm1.
    let state = browser
        .call(
            "openViewer",
            json!({"name": "viewer", "url": link(&token, "vm1", "vnc"), "fallbackListing": listing}),
        )
        .await?;
    let href = state["href"].as_str().unwrap_or_default();
    ensure!(
        href == format!("{base}/view/lab-alice"),
        "the address bar still shows the fragment: {href}"
    );
    let names: Vec<&str> = state["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"vm1") && names.contains(&"vm2"),
        "the page lists {names:?}"
    );
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "vm1", "kind": "vnc"}),
        )
        .await?;
    wait_for_picture(browser, "viewer").await?;
    browser
        .screenshot("viewer", &format!("{scenario}-screen"))
        .await?;

    // Its console, without a reload: type and read the echo.
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": "#tab-console"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "vm1", "kind": "console"}),
        )
        .await?;
    browser
        .call("waitViewerLine", json!({"name": "viewer", "line": "$"}))
        .await
        .context("no shell prompt on the viewer's console")?;
    let marker = format!("viewer-{}", random_word());
    browser
        .call(
            "typeViewer",
            json!({"name": "viewer", "text": format!("echo {marker}"), "enter": true}),
        )
        .await?;
    browser
        .call("waitViewerLine", json!({"name": "viewer", "line": marker}))
        .await?;
    // The paste box: its text reaches the console as if typed, newline as Enter.
    let pasted = format!("pasted-{}", random_word());
    browser
        .call("click", json!({"name": "viewer", "selector": "#btn-paste"}))
        .await?;
    browser
        .call(
            "fill",
            json!({"name": "viewer", "selector": "#paste-text", "text": format!("echo {pasted}\n")}),
        )
        .await?;
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": "#paste-send"}),
        )
        .await?;
    browser
        .call("waitViewerLine", json!({"name": "viewer", "line": pasted}))
        .await
        .context("pasted text did not reach the console")?;
    browser
        .screenshot("viewer", &format!("{scenario}-console"))
        .await?;

    // The other VM: its console, then its screen.
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": ".vm[data-vm=\"vm2\"]"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "vm2", "kind": "console"}),
        )
        .await?;
    browser
        .call("click", json!({"name": "viewer", "selector": "#tab-vnc"}))
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "vm2", "kind": "vnc"}),
        )
        .await?;
    wait_for_picture(browser, "viewer").await?;
    let seen = browser.call("requests", json!({"name": "viewer"})).await?;
    let sockets: Vec<String> = seen["websockets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str())
        .map(|u| u.replace(&format!("wss://localhost:{}", env.addr.port()), ""))
        .collect();
    ensure!(
        sockets
            == [
                "/labs/lab-alice/vm1/vnc",
                "/labs/lab-alice/vm1/console",
                "/labs/lab-alice/vm2/console",
                "/labs/lab-alice/vm2/vnc"
            ],
        "the page opened these websockets: {sockets:?}"
    );

    // The same VM's screen in a second window takes it over; the first says so and waits for
    // the student instead of taking it back by itself.
    browser
        .call(
            "openViewer",
            json!({"name": "second", "url": link(&token, "vm2", "vnc"), "fallbackListing": listing}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "second", "state": "connected", "vm": "vm2", "kind": "vnc"}),
        )
        .await?;
    let state = browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "ended", "closeCode": Refusal::TakenOver.close_code()}),
        )
        .await
        .context("the first window was not told it was taken over")?;
    ensure!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.contains("You opened this machine in another window")),
        "the taken-over window says {state}"
    );
    ensure!(
        state["action"] == "Use it in this window",
        "the taken-over window offers {}",
        state["action"]
    );
    browser
        .screenshot("viewer", &format!("{scenario}-taken-over"))
        .await?;
    // No reconnect by itself: the second window keeps the screen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = browser
        .call("viewerState", json!({"name": "viewer"}))
        .await?;
    let second = browser
        .call("viewerState", json!({"name": "second"}))
        .await?;
    ensure!(
        first["state"] == "ended" && second["state"] == "connected",
        "after a takeover: first {first}, second {second}"
    );
    wait_for_picture(browser, "second").await?;
    // At a phone's width the machines go above the screen, which still fits.
    browser
        .call(
            "viewport",
            json!({"name": "second", "width": 390, "height": 780}),
        )
        .await?;
    wait_for_picture(browser, "second").await?;
    browser
        .screenshot("second", &format!("{scenario}-phone"))
        .await?;

    // An expired link: the sentence, and no retry.
    browser
        .call(
            "openViewer",
            json!({"name": "expired", "url": link(&expired, "vm1", "vnc"), "fallbackListing": listing}),
        )
        .await?;
    let state = browser
        .call(
            "waitViewer",
            json!({"name": "expired", "state": "ended", "closeCode": Refusal::TokenExpired.close_code()}),
        )
        .await?;
    ensure!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("This link has expired.")),
        "the expired link's page says {state}"
    );
    ensure!(
        state["action"].is_null(),
        "an expired link offers {}",
        state["action"]
    );
    browser
        .screenshot("expired", &format!("{scenario}-expired"))
        .await?;

    // A gateway mounted under a prefix it is not stripped of (a portal embedding it, see
    // gateway/examples/embed.rs): the same page works below /labgate/.
    let mounted = env.replica(&["--base-path", "/labgate"]).await?;
    let prefixed = format!(
        "https://localhost:{}/labgate/view/lab-alice#token={token}&vm=vm1&kind=vnc",
        mounted.env.addr.port()
    );
    browser
        .call(
            "openViewer",
            json!({"name": "mounted", "url": prefixed, "fallbackListing": listing}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "mounted", "state": "connected", "vm": "vm1", "kind": "vnc"}),
        )
        .await?;
    wait_for_picture(browser, "mounted").await?;
    let seen = browser.call("requests", json!({"name": "mounted"})).await?;
    ensure!(
        seen["websockets"][0]
            .as_str()
            .is_some_and(|u| u.ends_with("/labgate/labs/lab-alice/vm1/vnc")),
        "the mounted page opened {}",
        seen["websockets"]
    );
    browser
        .screenshot("mounted", &format!("{scenario}-mounted"))
        .await?;

    // The first window takes its VM back with the button; now the second is told.
    browser
        .call(
            "click",
            json!({"name": "viewer", "selector": "#message-action"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "viewer", "state": "connected", "vm": "vm2", "kind": "vnc"}),
        )
        .await?;
    browser
        .call(
            "waitViewer",
            json!({"name": "second", "state": "ended", "closeCode": Refusal::TakenOver.close_code()}),
        )
        .await?;

    // A gateway going away (1001) is worth reconnecting to: the page says so and retries.
    let mut mounted = mounted;
    mounted.env.shutdown();
    let state = browser
        .call(
            "waitViewer",
            json!({"name": "mounted", "state": "retrying", "closeCode": 1001}),
        )
        .await?;
    ensure!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The gateway is restarting."))
            && state["action"] == "Reconnect now",
        "a page whose gateway went away shows {state}"
    );
    browser
        .screenshot("mounted", &format!("{scenario}-gateway-restarting"))
        .await?;

    // Neither token in any URL or Referer the pages sent, nor in the gateway's log; no CSP
    // violation on the way.
    let mut assets = 0;
    for page in ["viewer", "second", "expired", "mounted"] {
        let seen = browser.call("requests", json!({"name": page})).await?;
        let requests = seen["requests"].as_array().cloned().unwrap_or_default();
        for request in &requests {
            for field in ["url", "referer"] {
                let value = request[field].as_str().unwrap_or_default();
                ensure!(
                    !value.contains(&token) && !value.contains(&expired),
                    "{page}: a request's {field} carries the token: {value}"
                );
                ensure!(
                    !value.contains("token="),
                    "{page}: a request's {field} carries a token parameter: {value}"
                );
            }
            if request["url"]
                .as_str()
                .is_some_and(|u| u.contains("/assets/"))
            {
                assets += 1;
            }
        }
        for socket in seen["websockets"].as_array().into_iter().flatten() {
            let url = socket.as_str().unwrap_or_default();
            ensure!(
                !url.contains(&token) && !url.contains(&expired) && !url.contains("token"),
                "{page}: a websocket URL carries the token: {url}"
            );
        }
        ensure!(
            seen["csp"].as_array().is_none_or(|c| c.is_empty()),
            "{page}: Content-Security-Policy complaints: {}",
            seen["csp"]
        );
    }
    ensure!(assets >= 2, "the pages loaded {assets} assets");
    let log = gateway_log();
    ensure!(
        log.contains("path=/view/lab-alice") && log.contains("path=/assets/viewer."),
        "the gateway's log lacks the page's request lines"
    );
    for (name, secret) in [("token", &token), ("expired token", &expired)] {
        // As sent (Authorization), its signature alone, and as the bearer subprotocol sends it.
        let signature = secret.rsplit('.').next().unwrap_or(secret);
        let subprotocol = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        for (form, shown) in [
            ("itself", secret.as_str()),
            ("its signature", signature),
            ("in the subprotocol", &subprotocol),
        ] {
            ensure!(
                !log.contains(shown),
                "the gateway's log shows the {name} ({form})"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_page_shows_screen_console_switches_and_explains_endings() {
    let scenario = "viewer";
    let mut stage = stage(scenario).await;
    let result = viewer_scenario(&mut stage, scenario).await;
    stage.browser.finish(scenario, result).await;
}
