//! End-to-end tests of the lab listing (`GET /labs/{lab}`) and screenshots
//! (`GET /labs/{lab}/{vm}/screenshot`) against the stand-in, whose
//! `vnc/screenshot` subresource captures the real Xvnc behind `vm1`.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use labgate_tests::standin::ScreenshotMode;
use serde_json::{Value, json};
use support::*;

/// The root colour painted on the Xvnc screen (depth 24: exact in a Raw capture).
const ROOT: [u8; 3] = [0x3a, 0x7b, 0xd5];

/// A plain HTTPS GET: status, headers and the raw body.
async fn get(env: &Env, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Bytes) {
    let tls = env.tls_connect().await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The listing once the VM index has synced (503 "not ready" before).
async fn listing(env: &Env, lab: &str, token: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = get(
            env,
            &format!("/labs/{lab}"),
            &[("authorization", &bearer(token))],
        )
        .await;
        let value: Value = serde_json::from_slice(&body).unwrap();
        if status != 503 || Instant::now() > deadline {
            return (status, value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (name, phase, screen, console) of each listed VM.
fn vms(listing: &Value) -> Vec<(String, String, bool, bool)> {
    listing["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap().to_string(),
                vm["phase"].as_str().unwrap().to_string(),
                vm["screen"].as_bool().unwrap(),
                vm["console"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn row(name: &str, phase: &str, screen: bool, console: bool) -> (String, String, bool, bool) {
    (name.to_string(), phase.to_string(), screen, console)
}

/// Polls the listing until `vm` shows `phase`; fails after `within`.
async fn wait_phase(env: &Env, token: &str, vm: &str, phase: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, listed) = listing(env, "lab-alice", token).await;
        if vms(&listed)
            .iter()
            .any(|(n, p, _, _)| n == vm && p == phase)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} not {phase} within {within:?}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn paint_root(env: &Env) {
    let display = env.xvnc.as_ref().unwrap().display();
    let colour = format!("#{:02x}{:02x}{:02x}", ROOT[0], ROOT[1], ROOT[2]);
    let status = std::process::Command::new("xsetroot")
        .args(["-display", &display, "-solid", &colour])
        .status()
        .expect("xsetroot (x11-xserver-utils) runs");
    assert!(status.success(), "xsetroot on {display}");
}

/// Decodes a PNG; returns width, height and the RGB of pixel (x, y).
fn pixel(png_bytes: &[u8], x: u32, y: u32) -> (u32, u32, [u8; 3]) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let at = ((y * info.width + x) as usize) * channels;
    (info.width, info.height, [buf[at], buf[at + 1], buf[at + 2]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_listing_for_owner_member_and_stranger() {
    let env = start(Options::default()).await.unwrap();
    // A stopped VM: a VirtualMachine without a VMI, no serial console in its template.
    env.standin
        .add_vm("lab-alice", "halted", "Halted", true, false);
    env.standin.add_vm("lab-alice", "vm1", "Always", true, true);
    let expected = vec![
        row("failed", "Failed", true, true),
        row("halted", "Stopped", true, false),
        row("headless", "Running", false, true),
        row("paused", "Paused", true, true),
        row("stopped", "Scheduled", true, true),
        row("vm1", "Running", true, true),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    for user in [ALICE, TUTOR] {
        let token = env.token(user);
        loop {
            let (status, listed) = listing(&env, "lab-alice", &token).await;
            assert_eq!(status, 200, "{user}: {listed}");
            assert_eq!(listed["lab"], "lab-alice");
            if vms(&listed) == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{user}: {listed}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, headers, _) = get(
        &env,
        &format!("/labs/lab-alice?token={}", env.token(ALICE)),
        &[],
    )
    .await;
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");

    // A stranger gets the session refusal, body and all, for this lab and for a missing one.
    let bob = env.token(BOB);
    let (session_status, _, session_body) = get(
        &env,
        "/labs/lab-alice/vm1/vnc",
        &[("authorization", &bearer(&bob))],
    )
    .await;
    assert_eq!(session_status, 403);
    for lab in ["lab-alice", "no-such-lab"] {
        let (status, _, body) = get(
            &env,
            &format!("/labs/{lab}"),
            &[("authorization", &bearer(&bob))],
        )
        .await;
        assert_eq!(status, 403, "{lab}");
        assert_eq!(body, session_body, "{lab}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["closeCode"], 4003);
    }
    // Bob's own lab lists his VM only.
    let (status, listed) = listing(&env, "lab-bob", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(vms(&listed), vec![row("vm1", "Running", true, true)]);
    assert!(env.standin.subresource_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_claims_filter_the_listing() {
    let env = start(Options::default()).await.unwrap();
    let scoped = |extra: Value| {
        let mut claims = json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        env.sign(claims)
    };
    let (status, listed) = listing(&env, "lab-alice", &scoped(json!({"vmi": "vm1"}))).await;
    assert_eq!(status, 200);
    assert_eq!(vms(&listed), vec![row("vm1", "Running", true, true)]);

    // A console-only token cannot open any screen: none is offered.
    let (_, listed) = listing(&env, "lab-alice", &scoped(json!({"kind": "console"}))).await;
    let rows = vms(&listed);
    assert_eq!(rows.len(), 5, "{listed}");
    assert!(rows.iter().all(|(_, _, screen, _)| !screen), "{listed}");
    assert!(rows.iter().any(|(n, _, _, console)| n == "vm1" && *console));

    // A token for another lab gets the one "not yours".
    let (status, body) = listing(&env, "lab-alice", &scoped(json!({"lab": "lab-bob"}))).await;
    assert_eq!((status, body["closeCode"].as_u64()), (403, Some(4003)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_vmi_state_within_a_second() {
    let env = start(Options::default()).await.unwrap();
    env.standin.add_vm("lab-alice", "vm1", "Always", true, true);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let second = Duration::from_secs(1);
    env.standin.set_vmi_paused("lab-alice", "vm1", true);
    wait_phase(&env, &token, "vm1", "Paused", second).await;
    env.standin.set_vmi_paused("lab-alice", "vm1", false);
    wait_phase(&env, &token, "vm1", "Running", second).await;
    env.standin.set_vmi_phase("lab-alice", "vm1", "Succeeded");
    wait_phase(&env, &token, "vm1", "Succeeded", second).await;
    // The VMI goes; the VirtualMachine stays: stopped.
    env.standin.delete_vmi("lab-alice", "vm1");
    wait_phase(&env, &token, "vm1", "Stopped", second).await;
    // A VMI without a VirtualMachine disappears with it.
    env.standin.delete_vmi("lab-alice", "failed");
    let deadline = Instant::now() + second;
    loop {
        let (_, listed) = listing(&env, "lab-alice", &token).await;
        if !vms(&listed).iter().any(|(n, ..)| n == "failed") {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A namespace that becomes a lab after its VMs exist lists them too (the
/// watches relist, since the VMs' events were ignored while it was no lab).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lab_lists_the_vms_it_already_had() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let mut plain = k8s_openapi::api::core::v1::Namespace::default();
    plain.metadata.name = Some("lab-late".into());
    env.standin.put_namespace(plain);
    env.standin.add_vmi(
        "lab-late",
        "early",
        labgate_tests::standin::Vmi::running(None, None),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.standin.lab_namespace("lab-late", ALICE, &[]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, listed) = listing(&env, "lab-late", &token).await;
        if status == 200 && vms(&listed) == vec![row("early", "Running", false, false)] {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_shows_the_screen_through_the_subresource() {
    let env = start(Options::default()).await.unwrap();
    paint_root(&env);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let cold = Instant::now();
    let (status, headers, png) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &bearer(&token))],
    )
    .await;
    let cold = cold.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["cache-control"], "no-store");
    let (w, h, rgb) = pixel(&png, 5, 5);
    assert_eq!((w, h), (800, 600));
    assert_eq!(rgb, ROOT);
    let requests = env.standin.screenshot_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].path,
        "/apis/subresources.kubevirt.io/v1/namespaces/lab-alice/virtualmachineinstances/vm1/vnc/screenshot"
    );
    assert_eq!(
        requests[0].user.as_deref(),
        Some(labgate_tests::standin::GATEWAY_USER)
    );
    // The member may take it too, with the query token (served from the cache).
    let cached = Instant::now();
    let (status, _, again) = get(
        &env,
        &format!("/labs/lab-alice/vm1/screenshot?token={}", env.token(TUTOR)),
        &[],
    )
    .await;
    let cached = cached.elapsed();
    assert_eq!(status, 200);
    assert_eq!(again, png);
    eprintln!("screenshot latency: cold {cold:?}, cached {cached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_are_cached_and_taken_once_for_concurrent_requests() {
    let env = start(Options {
        extra_args: vec!["--screenshot-cache-ttl".into(), "700ms".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    paint_root(&env);
    // Captures take 300 ms, so the grid's requests overlap.
    env.standin
        .set_screenshot_mode(ScreenshotMode::Libvirt, Duration::from_millis(300));
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let auth = bearer(&token);
    let header = [("authorization", auth.as_str())];
    let grid = (0..8).map(|_| get(&env, "/labs/lab-alice/vm1/screenshot", &header));
    let answers = futures::future::join_all(grid).await;
    for (status, _, png) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(png, &answers[0].2);
    }
    assert_eq!(
        env.standin.screenshot_requests().len(),
        1,
        "one capture for the grid"
    );
    let (status, _, _) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.standin.screenshot_requests().len(),
        1,
        "served from the cache"
    );
    // Another VM is another capture.
    let (status, _, _) = get(
        &env,
        &format!("/labs/lab-bob/vm1/screenshot?token={}", env.token(BOB)),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(env.standin.screenshot_requests().len(), 2);
    // Once the TTL has passed, the next request captures again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, _, _) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(env.standin.screenshot_requests().len(), 3);
}

/// A request (path, headers) and the expected HTTP status and close code.
type Case = (String, Vec<(&'static str, String)>, u16, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_reach_the_upstream() {
    let env = start(Options::default()).await.unwrap();
    let alice = env.token(ALICE);
    wait_phase(&env, &alice, "vm1", "Running", Duration::from_secs(5)).await;
    let expired = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() - 60}));
    let wrong_key = env.sign_with(
        json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600}),
        b"another-secret-another-secret-000",
        jsonwebtoken::Algorithm::HS256,
    );
    let console_only =
        env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600, "kind": "console"}));
    let shot = "/labs/lab-alice/vm1/screenshot";
    let cases: Vec<Case> = vec![
        (shot.into(), vec![], 401, 4001),
        (format!("{shot}?token=not-a-jwt"), vec![], 401, 4001),
        (
            shot.into(),
            vec![("authorization", bearer(&wrong_key))],
            401,
            4001,
        ),
        (
            shot.into(),
            vec![("authorization", bearer(&expired))],
            401,
            4002,
        ),
        // Two different tokens: refused whichever is good.
        (
            format!("{shot}?token={alice}"),
            vec![("authorization", bearer(&wrong_key))],
            400,
            4000,
        ),
        (
            shot.into(),
            vec![("authorization", bearer(&env.token(BOB)))],
            403,
            4003,
        ),
        (
            shot.into(),
            vec![("authorization", bearer(&console_only))],
            403,
            4003,
        ),
        // The VM index answers for VMs that cannot be captured.
        (
            "/labs/lab-alice/paused/screenshot".into(),
            vec![("authorization", bearer(&alice))],
            409,
            4016,
        ),
        (
            "/labs/lab-alice/headless/screenshot".into(),
            vec![("authorization", bearer(&alice))],
            409,
            4017,
        ),
        (
            "/labs/lab-alice/stopped/screenshot".into(),
            vec![("authorization", bearer(&alice))],
            409,
            4006,
        ),
        (
            "/labs/lab-alice/nope/screenshot".into(),
            vec![("authorization", bearer(&alice))],
            404,
            4005,
        ),
        ("/labs/lab-alice".into(), vec![], 401, 4001),
        (
            "/labs/lab-alice".into(),
            vec![("authorization", bearer(&expired))],
            401,
            4002,
        ),
        (
            format!("/labs/lab-alice?token={alice}"),
            vec![("authorization", bearer(&wrong_key))],
            400,
            4000,
        ),
    ];
    for (path, headers, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, _, body) = get(&env, &path, &headers).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (got, body["closeCode"].as_u64()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    assert!(
        env.standin.subresource_requests().is_empty(),
        "{:?}",
        env.standin.subresource_requests()
    );
}

/// On KubeVirt < 1.6.3 a capture drops the live viewer; without
/// `--vnc-preserve-session` the gateway will not capture a screen it relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_in_use_is_not_captured_where_that_would_take_it_over() {
    let env = start(Options::default()).await.unwrap();
    env.standin
        .set_screenshot_mode(ScreenshotMode::TakesOver, Duration::ZERO);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let mut viewer = env.open("lab-alice", "vm1", "vnc", &token).await;
    rfb_handshake(&mut viewer).await;
    let (status, _, body) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &bearer(&token))],
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["closeCode"].as_u64()),
        (409, Some(4013)),
        "{body}"
    );
    assert!(env.standin.screenshot_requests().is_empty());
    still_open(&mut viewer).await;
    viewer.close(None).await.unwrap();
    drop(viewer);
    // Without a viewer, the capture goes ahead.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _, _) = get(
            &env,
            "/labs/lab-alice/vm1/screenshot",
            &[("authorization", &bearer(&token))],
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// KubeVirt 1.6.3+ refuses the capture while someone views the screen; the
/// gateway reports the screen busy and the viewer keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_session_kubevirt_reports_a_busy_screen() {
    let env = start(Options {
        extra_args: vec!["--vnc-preserve-session".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    env.standin
        .set_screenshot_mode(ScreenshotMode::PreserveSession, Duration::ZERO);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let mut viewer = env.open("lab-alice", "vm1", "vnc", &token).await;
    rfb_handshake(&mut viewer).await;
    let (status, _, body) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &bearer(&token))],
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["closeCode"].as_u64()),
        (409, Some(4013)),
        "{body}"
    );
    assert_eq!(env.standin.screenshot_requests().len(), 1);
    // KubeVirt >= 1.7 (libvirt) captures while the viewer stays.
    env.standin
        .set_screenshot_mode(ScreenshotMode::Libvirt, Duration::ZERO);
    let (status, _, _) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(status, 200);
    still_open(&mut viewer).await;
}

/// The viewer's session was not dropped: for half a second only screen
/// bytes arrive, no close and no end.
async fn still_open(viewer: &mut Ws) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match viewer.next().await {
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the viewer's session ended: {quiet:?}");
}

/// The VM index keeps at most `--vm-index-max-per-lab` VMs of a lab; the rest
/// are counted, and the other labs are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_index_is_capped_per_lab_with_a_metric() {
    let env = start(Options {
        extra_args: vec!["--vm-index-max-per-lab".into(), "3".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let (status, listed) = listing(&env, "lab-alice", &env.token(ALICE)).await;
    assert_eq!(status, 200);
    // lab-alice has five VMIs: three are kept, in the order the list gave them.
    assert_eq!(vms(&listed).len(), 3, "{listed}");
    let (status, listed) = listing(&env, "lab-bob", &env.token(BOB)).await;
    assert_eq!((status, vms(&listed).len()), (200, 1));
    let (_, metrics) = env.http("/metrics", &[]).await.unwrap();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("labgate_gateway_vm_index_dropped_total{cap=\"per_lab\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(dropped >= 2, "{dropped}");
    assert!(
        metrics.contains("labgate_gateway_vm_index_vms 4"),
        "{metrics}"
    );
}

/// Without `get` on `virtualmachineinstances/vnc/screenshot` the screenshot is
/// the gateway's permission problem (4020), not the VM's; listings still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_screenshot_permission_is_reported_as_the_gateways() {
    let env = start(Options::default()).await.unwrap();
    env.standin
        .deny_subresource(labgate_tests::standin::GATEWAY_USER, "vnc/screenshot", true);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let (status, _, body) = get(
        &env,
        "/labs/lab-alice/vm1/screenshot",
        &[("authorization", &bearer(&token))],
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["closeCode"].as_u64()),
        (502, Some(4020)),
        "{body}"
    );
}

/// VMI and VM list requests (not watches) the stand-in has served.
fn vm_lists(env: &Env) -> usize {
    env.standin
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/apis/kubevirt.io/v1/") && !r.query.contains("watch="))
        .count()
}

/// Listings and screenshots read the VM index: polling them costs the API
/// server nothing, and a burst of new labs costs a few relists, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_load_does_not_grow_with_requests() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    // Let the start-up relists (labs arriving after the first list) settle.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = vm_lists(&env);
    for _ in 0..20 {
        let (status, _) = listing(&env, "lab-alice", &token).await;
        assert_eq!(status, 200);
        let (status, _, _) = get(
            &env,
            "/labs/lab-alice/paused/screenshot",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(status, 409);
    }
    assert_eq!(
        vm_lists(&env),
        before,
        "listings and screenshots listed VMs"
    );
    assert!(env.standin.subresource_requests().is_empty());

    // A class's labs created at once.
    for i in 0..10 {
        env.standin.lab_namespace(&format!("class-{i}"), ALICE, &[]);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _) = listing(&env, "class-9", &token).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "class-9 not listed: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let relists = vm_lists(&env) - before;
    // Two kinds, each relisting once or twice (the burst straddling a list).
    assert!(relists <= 4, "{relists} lists for 10 new labs");
}

/// A capture is bounded in size and time: too big or too slow is "VM
/// connection failed" (4012/502), and the failure is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_are_bounded_in_size_and_time() {
    let env = start(Options {
        extra_args: vec![
            "--screenshot-max-bytes".into(),
            "200".into(),
            "--screenshot-timeout".into(),
            "300ms".into(),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    paint_root(&env);
    let token = env.token(ALICE);
    wait_phase(&env, &token, "vm1", "Running", Duration::from_secs(5)).await;
    let auth = [("authorization", bearer(&token))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // An 800x600 PNG of one colour is well over 200 bytes.
    let (status, _, body) = get(&env, "/labs/lab-alice/vm1/screenshot", &auth).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["closeCode"].as_u64()),
        (502, Some(4012)),
        "{body}"
    );
    env.standin
        .set_screenshot_mode(ScreenshotMode::Libvirt, Duration::from_secs(1));
    let started = Instant::now();
    let (status, _, _) = get(&env, "/labs/lab-alice/vm1/screenshot", &auth).await;
    assert_eq!(status, 502);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        env.standin.screenshot_requests().len(),
        2,
        "failures are not cached"
    );
}
