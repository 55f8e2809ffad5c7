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
use driver::Browser;
use labgate_gateway::Refusal;
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

async fn stage(scenario: &str) -> Stage {
    let turn = ONE_BROWSER_AT_A_TIME.lock().await;
    clear_old_screenshots(scenario);
    let env = start(Options::default()).await.expect("test environment");
    let display = env.xvnc.as_ref().expect("Xvnc runs").display();
    let picture = Picture::draw(&display).expect("drawing the known picture");
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, env.standin.ca().ca_pem()).unwrap();
    let browser = Browser::launch(&ca, scenario)
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
