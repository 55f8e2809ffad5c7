//! End-to-end tests of the gateway against the Kubernetes stand-in, a real
//! Xvnc and a real PTY shell, over real TLS with real websocket clients.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn subresource_count(env: &Env) -> usize {
    env.standin.subresource_requests().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_query_tokens_reach_xvnc() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);

    let mut ws = env.open("lab-alice", "vm1", "vnc", &token).await;
    let (w, h) = rfb_handshake(&mut ws).await;
    assert_eq!((w, h), (800, 600));
    ws.close(None).await.unwrap();

    let (mut ws, _) = env
        .ws(&format!("/labs/lab-alice/vm1/vnc?token={token}"), None, &[])
        .await
        .unwrap();
    rfb_handshake(&mut ws).await;

    // The member of the lab is let in too, with the header token.
    let tutor = env.token(TUTOR);
    let (mut ws, _) = env
        .ws(
            "/labs/lab-alice/vm1/vnc",
            None,
            &[("authorization", &format!("Bearer {tutor}"))],
        )
        .await
        .unwrap();
    rfb_handshake(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_are_negotiated_like_novnc_expects() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);
    let path = format!("/labs/lab-alice/vm1/vnc/{token}");
    // noVNC <= 1.1 asks for "binary".
    let (mut ws, res) = env.ws(&path, Some("binary"), &[]).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "binary");
    rfb_handshake(&mut ws).await;
    drop(ws);
    // noVNC >= 1.2 asks for none: none is echoed.
    let (_ws, res) = env.ws(&path, None, &[]).await.unwrap();
    assert!(res.headers().get("sec-websocket-protocol").is_none());
    // The Kubernetes bearer-subprotocol idiom carries the token; it is never echoed.
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&token);
    let (mut ws, res) = env
        .ws(
            "/labs/lab-alice/vm1/vnc",
            Some(&format!(
                "base64url.bearer.authorization.k8s.io.{encoded}, plain.kubevirt.io"
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "plain.kubevirt.io");
    rfb_handshake(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_round_trips_text_frames_as_binary() {
    let env = start(Options::default()).await.unwrap();
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    // xterm.js' attach addon sends keystrokes as text frames; KubeVirt (and
    // the stand-in) drop text, so this only works if the gateway converts.
    ws.send(Message::Text("echo labgate-$((6*7))-ok\r".into()))
        .await
        .unwrap();
    let mut reader = ByteReader::new();
    reader
        .read_until(&mut ws, "labgate-42-ok", Duration::from_secs(10))
        .await;
    ws.close(None).await.unwrap();
    // Bytes were counted both ways.
    let (_, metrics) = env.http("/metrics", &[]).await.unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "labgate_gateway_bytes_total{direction=\"client_to_upstream\",kind=\"console\"}",
            )
        })
        .unwrap();
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= "echo labgate-$((6*7))-ok\r".len() as u64, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_visible_to_websocket_and_http_clients() {
    let env = start(Options::default()).await.unwrap();
    let alice = env.token(ALICE);
    // (path, websocket close code, HTTP status)
    let cases = [
        (format!("/labs/lab-bob/vm1/vnc/{alice}"), 4003, 403),
        (format!("/labs/no-such-lab/vm1/vnc/{alice}"), 4003, 403),
        ("/labs/lab-alice/vm1/vnc".to_string(), 4001, 401),
        (format!("/labs/Lab-Alice/vm1/vnc/{alice}"), 4000, 400),
        (format!("/labs/lab-alice/vm1/screenshot/{alice}"), 4000, 400),
    ];
    for (path, code, status) in &cases {
        let (mut ws, _) = env.ws(path, None, &[]).await.unwrap();
        assert_refused(&mut ws, *code).await;
        let (got, body) = env.http(path, &[]).await.unwrap();
        assert_eq!(got, *status, "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["closeCode"], *code);
    }
    assert_eq!(
        subresource_count(&env),
        0,
        "no refused request reached KubeVirt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_never_reach_the_upstream() {
    let env = start(Options::default()).await.unwrap();
    let base = json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600});
    let with = |patch: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(base.to_string())
    );
    let cases = [
        (
            "expired",
            env.sign(with(json!({"exp": now() - 120}))),
            4002,
            401,
        ),
        (
            "not yet valid",
            env.sign(with(json!({"nbf": now() + 600}))),
            4001,
            401,
        ),
        (
            "wrong key",
            env.sign_with(
                base.clone(),
                b"some-other-secret-entirely",
                Algorithm::HS256,
            ),
            4001,
            401,
        ),
        (
            "wrong audience",
            env.sign(with(json!({"aud": "another-app"}))),
            4001,
            401,
        ),
        (
            "unpinned algorithm",
            env.sign_with(base.clone(), &env.secret, Algorithm::HS384),
            4001,
            401,
        ),
        ("alg none", alg_none, 4001, 401),
    ];
    for (what, token, code, status) in &cases {
        let path = format!("/labs/lab-alice/vm1/vnc/{token}");
        let (mut ws, _) = env.ws(&path, None, &[]).await.unwrap();
        let reason = assert_refused(&mut ws, *code).await;
        assert!(!reason.is_empty(), "{what}");
        let (got, _) = env.http(&path, &[]).await.unwrap();
        assert_eq!(got, *status, "{what}");
    }
    assert_eq!(subresource_count(&env), 0, "a bad token reached KubeVirt");
    // Sanity: a good token does reach it.
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
    assert_eq!(subresource_count(&env), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_stopped_vms_get_clear_errors() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);
    // Each cause its own code and sentence: stopped, paused, no screen.
    for (vm, kind, code, words) in [
        ("ghost", "vnc", 4005, "no such VM"),
        ("stopped", "vnc", 4006, "not running"),
        ("stopped", "console", 4006, "not running"),
        ("failed", "vnc", 4006, "not running"),
        ("failed", "console", 4006, "not running"),
        ("paused", "vnc", 4016, "paused"),
        ("paused", "console", 4016, "paused"),
        ("headless", "vnc", 4017, "no screen"),
    ] {
        let mut ws = env.open("lab-alice", vm, kind, &token).await;
        let reason = assert_refused(&mut ws, code).await;
        assert!(reason.contains(words), "{vm}/{kind}: {reason}");
    }
    // Each of them was asked of the stand-in (these are KubeVirt's answers,
    // not the gateway's guesses), and none reached an upstream.
    let calls = env.standin.requests();
    for vm in ["ghost", "stopped", "failed", "paused", "headless"] {
        assert!(
            calls
                .iter()
                .any(|r| r.path.contains(&format!("/virtualmachineinstances/{vm}/"))),
            "no subresource request for {vm}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_relabelling_the_lab_closes_sessions_within_a_second() {
    let env = start(Options::default()).await.unwrap();
    // Owner change: bob's lab given to carol. Keeping bob on as a member does
    // not keep his session: the lab changed hands.
    let mut bob_vnc = env.open("lab-bob", "vm1", "vnc", &env.token(BOB)).await;
    rfb_handshake(&mut bob_vnc).await;
    let t0 = Instant::now();
    env.standin
        .lab_namespace("lab-bob", "carol@example.com", &[BOB]);
    let frame = expect_close(&mut bob_vnc, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(u16::from(frame.code), 4009);
    assert!(t0.elapsed() < Duration::from_secs(1));

    // Deletion: the namespace turns Terminating, then disappears.
    let mut console = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    console
        .send(Message::Binary(Bytes::from_static(
            b"echo still-$((1+1))\r",
        )))
        .await
        .unwrap();
    ByteReader::new()
        .read_until(&mut console, "still-2", Duration::from_secs(10))
        .await;
    let t0 = Instant::now();
    env.standin.delete_namespace("lab-alice");
    let frame = expect_close(&mut console, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(u16::from(frame.code), 4009);
    assert!(frame.reason.contains("revoked"), "{}", frame.reason);
    assert!(t0.elapsed() < Duration::from_secs(1));

    // Removing the lab label un-labels (watch sees DELETED): also revoked.
    env.standin.lab_namespace("lab-bob", BOB, &[]);
    wait_until_admitted(&env, "lab-bob", BOB, Duration::from_secs(5)).await;
    let mut again = env.open("lab-bob", "vm1", "console", &env.token(BOB)).await;
    again
        .send(Message::Binary(Bytes::from_static(b"echo back-$((2+2))\r")))
        .await
        .unwrap();
    ByteReader::new()
        .read_until(&mut again, "back-4", Duration::from_secs(10))
        .await;
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("lab-bob".into());
    let t0 = Instant::now();
    env.standin.put_namespace(ns);
    let frame = expect_close(&mut again, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(u16::from(frame.code), 4009);
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// Waits until the gateway's index lets `user` into `lab` (a plain request
/// then gets 426 "open this as a websocket" instead of a refusal).
async fn wait_until_admitted(env: &Env, lab: &str, user: &str, within: Duration) {
    let path = format!("/labs/{lab}/vm1/console/{}", env.token(user));
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = env.http(&path, &[]).await.unwrap();
        if status == 426 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} still not admitted to {lab}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_index_and_watch_recovers_from_410() {
    // The gateway's API token is unknown at first: list fails with 401.
    let late_token = "late-gateway-token";
    let env = start(Options {
        gateway_kube_token: Some(late_token.into()),
        wait_ready: false,
        ..Options::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = env.http("/readyz", &[]).await.unwrap();
    assert_eq!(status, 503, "{body}");
    // Nothing indexed yet: "retry", not a misleading "no such lab".
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    let reason = assert_refused(&mut ws, 4015).await;
    assert!(reason.contains("retry"), "{reason}");
    let (status, body) = env
        .http(
            &format!("/labs/lab-alice/vm1/vnc/{}", env.token(ALICE)),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_ready"), "{body}");

    env.standin.add_token(
        late_token,
        labgate_tests::standin::UserInfo::service_account("labgate", "labgate-gateway"),
    );
    env.wait_ready(Duration::from_secs(15)).await.unwrap();

    let restarts_before = watch_restarts(&env).await;
    let lists_before = namespace_lists(&env);

    // Cut the watch and forget history: the re-watch from the last
    // resourceVersion gets 200 + ERROR 410, and the gateway must relist.
    env.standin.compact_history();
    env.standin.drop_watches();
    env.standin.lab_namespace("lab-new", ALICE, &[]);
    wait_until_admitted(&env, "lab-new", ALICE, Duration::from_secs(15)).await;
    assert!(
        namespace_lists(&env) > lists_before,
        "the gateway did not relist after 410"
    );
    assert!(
        watch_restarts(&env).await > restarts_before,
        "the 410 was not counted as a watch restart"
    );
    // Labs indexed before the cut are still there.
    let (status, _) = env
        .http(
            &format!("/labs/lab-alice/vm1/vnc/{}", env.token(ALICE)),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 426);
}

/// Namespace list (not watch) requests the stand-in has served.
fn namespace_lists(env: &Env) -> usize {
    env.standin
        .requests()
        .iter()
        .filter(|r| {
            r.path == "/api/v1/namespaces" && !r.query.contains("watch=") && r.user.is_some()
        })
        .count()
}

async fn watch_restarts(env: &Env) -> f64 {
    let (_, metrics) = env.http("/metrics", &[]).await.unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("labgate_gateway_index_watch_restarts_total "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_viewer_takes_over_and_the_first_is_told() {
    let env = start(Options::default()).await.unwrap();
    let mut first = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut first).await;
    let mut second = env.open("lab-alice", "vm1", "vnc", &env.token(TUTOR)).await;
    rfb_handshake(&mut second).await;
    let frame = expect_close(&mut first, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(u16::from(frame.code), 4007, "{}", frame.reason);
    assert!(frame.reason.contains("taken over"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_idle_and_token_expiry_end_sessions() {
    let env = start(Options {
        extra_args: vec![
            "--max-sessions-per-user".into(),
            "1".into(),
            "--idle-timeout".into(),
            "1s".into(),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    let token = env.token(ALICE);
    let mut held = env.open("lab-alice", "vm1", "console", &token).await;
    let mut second = env.open("lab-alice", "vm1", "vnc", &token).await;
    assert_refused(&mut second, 4008).await;
    // The held session is idle: closed after ~1 s with the idle code.
    let frame = expect_close(&mut held, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(u16::from(frame.code), 4011);

    // A token that expires mid-session ends it.
    let short = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 3}));
    let mut ws = env.open("lab-alice", "vm1", "vnc", &short).await;
    rfb_handshake(&mut ws).await;
    // Keep data flowing so idleness is not the cause.
    let frame = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let req = [3u8, 1, 0, 0, 0, 0, 0, 8, 0, 8];
            let _ = ws.send(Message::Binary(req.to_vec().into())).await;
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f,
                Ok(None) | Ok(Some(Err(_))) => return None,
                _ => {}
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(u16::from(frame.code), 4010, "{}", frame.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let env = start(Options::default()).await.unwrap();
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut ws).await;
    ws.close(None).await.unwrap();
    let mut refused = env.open("lab-bob", "vm1", "vnc", &env.token(ALICE)).await;
    assert_refused(&mut refused, 4003).await;
    // The closed session is counted once its splice has finished closing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (status, text) = env.http("/metrics", &[]).await.unwrap();
        assert_eq!(status, 200);
        if text.contains("labgate_gateway_sessions_total{kind=\"vnc\",outcome=\"ok\"}")
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    labgate_tests::promtool::assert_clean(&text);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("labgate_gateway_sessions_total{kind=\"vnc\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("labgate_gateway_sessions_total{kind=\"vnc\",outcome=\"forbidden\"}"),
        1.0
    );
    assert!(
        value("labgate_gateway_bytes_total{direction=\"upstream_to_client\",kind=\"vnc\"}")
            > 1000.0
    );
    assert_eq!(value("labgate_gateway_index_labs "), 2.0);
    assert_eq!(value("labgate_gateway_active_sessions{kind=\"vnc\"}"), 0.0);
    assert!(value("labgate_gateway_authorization_duration_seconds_count ") >= 2.0);
    assert!(value("labgate_gateway_upstream_connect_duration_seconds_count ") >= 1.0);
    assert!(value("labgate_gateway_token_cache_misses_total ") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_rotates_without_dropping_sessions() {
    let env = start(Options::default()).await.unwrap();
    let mut console = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    let before = peer_cert(&env).await;

    // A new certificate from a different CA: new clients must trust it.
    let new_ca = labgate_tests::certs::TestCa::new();
    let (cert, key) = new_ca.leaf(&["localhost", "127.0.0.1"]);
    std::fs::write(&env.key_path, key).unwrap();
    std::fs::write(&env.cert_path, cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tcp = tokio::net::TcpStream::connect(env.addr).await.unwrap();
        let connector =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(new_ca.client_config()));
        if let Ok(tls) = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
        {
            break tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        }
        assert!(Instant::now() < deadline, "new certificate not served");
    };
    assert_ne!(before, after);
    // The session opened before the rotation still works.
    console
        .send(Message::Binary(Bytes::from_static(
            b"echo rotated-$((3*3))\r",
        )))
        .await
        .unwrap();
    ByteReader::new()
        .read_until(&mut console, "rotated-9", Duration::from_secs(10))
        .await;
}

/// After a clean websocket close the gateway ends TLS with close_notify, so
/// the client can tell a finished session from a cut connection (rustls,
/// like other TLS stacks, reports a missing close_notify as an unexpected
/// end of file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_ends_tls_with_close_notify() {
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let env = start(Options::default()).await.unwrap();
    let tls = env.tls_connect().await.unwrap();
    let path = format!("/labs/lab-alice/vm1/console/{}", env.token(ALICE));
    let req = format!("wss://localhost:{}{path}", env.addr.port())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no close reply: {other:?}"),
        }
    }
    let mut tls = ws.into_inner();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("the gateway kept the connection open after the close handshake");
    assert!(
        read.is_ok(),
        "the gateway ended TLS without close_notify: {read:?}"
    );
}

async fn peer_cert(env: &Env) -> rustls::pki_types::CertificateDer<'static> {
    let tls = env.tls_connect().await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Lab names often embed user ids: a non-member's token gets the same code,
/// sentence, status and body for someone else's lab and for no lab at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_cannot_tell_missing_labs_from_foreign_ones() {
    let env = start(Options::default()).await.unwrap();
    let mallory = env.token("mallory@example.com");
    let mut answers = Vec::new();
    for lab in ["lab-bob", "no-such-lab"] {
        let path = format!("/labs/{lab}/vm1/vnc/{mallory}");
        let (mut ws, _) = env.ws(&path, None, &[]).await.unwrap();
        let frame = expect_close(&mut ws, Duration::from_secs(5)).await.unwrap();
        let (status, body) = env.http(&path, &[]).await.unwrap();
        answers.push((
            u16::from(frame.code),
            frame.reason.to_string(),
            status,
            body,
        ));
    }
    assert_eq!(answers[0], answers[1]);
    // The owner still gets precise answers inside their lab.
    let mut ws = env
        .open("lab-alice", "ghost", "vnc", &env.token(ALICE))
        .await;
    assert_refused(&mut ws, 4005).await;
}

/// A token within --jwt-leeway past its `exp` used to be admitted, dial the
/// VM (KubeVirt kicks the current viewer) and end at once with 4010.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_expired_token_neither_dials_nor_kicks_the_viewer() {
    let env = start(Options {
        extra_args: vec!["--jwt-leeway".into(), "60s".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let mut viewer = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    let (w, h) = rfb_handshake(&mut viewer).await;
    assert_eq!(subresource_count(&env), 1);
    let stale = env.sign(json!({"sub": TUTOR, "aud": AUDIENCE, "exp": now() - 5}));
    let mut late = env.open("lab-alice", "vm1", "vnc", &stale).await;
    assert_refused(&mut late, 4002).await;
    assert_eq!(
        subresource_count(&env),
        1,
        "the stale token reached KubeVirt"
    );
    // The viewer still has the screen: a full update request is answered.
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    viewer.send(Message::Binary(req.into())).await.unwrap();
    let update = ByteReader::new().read_exact(&mut viewer, 4).await;
    assert_eq!(update[0], 0, "FramebufferUpdate after the stale attempt");
}

/// Two different tokens in one request are refused (4000/400) before any
/// upstream request; the same token twice, and `bearer` in any case, work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_credentials_are_refused() {
    let env = start(Options::default()).await.unwrap();
    let good = env.token(ALICE);
    let bad = env.token(BOB);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let proto = |t: &str| {
        format!(
            "base64url.bearer.authorization.k8s.io.{}, binary",
            b64.encode(t)
        )
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let base = "/labs/lab-alice/vm1/vnc";
    // (path, subprotocols, headers)
    type Case<'a> = (String, Option<String>, Vec<(&'a str, String)>);
    let cases: Vec<Case<'_>> = vec![
        (format!("{base}?token={good}&token={bad}"), None, vec![]),
        (format!("{base}/{good}?token={bad}"), None, vec![]),
        (
            base.into(),
            Some(proto(&bad)),
            vec![("authorization", bearer(&good))],
        ),
    ];
    for (path, protocols, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (mut ws, _) = env.ws(path, protocols.as_deref(), &headers).await.unwrap();
        assert_refused(&mut ws, 4000).await;
        let mut http_headers = headers.clone();
        let protocol_header;
        if let Some(p) = protocols {
            protocol_header = p.clone();
            http_headers.push(("sec-websocket-protocol", &protocol_header));
        }
        let (status, body) = env.http(path, &http_headers).await.unwrap();
        assert_eq!(status, 400, "{body}");
    }
    // Two Authorization headers (the ws helper sets one header per name).
    let (status, body) = env
        .http(
            base,
            &[
                ("authorization", &bearer(&good)),
                ("authorization", &bearer(&bad)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "two Authorization headers: {body}");
    assert_eq!(
        subresource_count(&env),
        0,
        "a conflicting request reached KubeVirt"
    );

    for scheme in ["bearer", "BEARER"] {
        let (status, body) = env
            .http(base, &[("authorization", &format!("{scheme} {good}"))])
            .await
            .unwrap();
        assert_eq!(status, 426, "{scheme}: {body}");
    }
    let (status, body) = env
        .http(
            &format!("{base}/{good}?token={good}"),
            &[("authorization", &bearer(&good))],
        )
        .await
        .unwrap();
    assert_eq!(status, 426, "the same token twice: {body}");
}

/// A class opening its screens at once: once the gateway holds tickets, every
/// upstream TLS handshake of a burst resumes. rustls' default cache keeps 8
/// tickets per server, so a burst beyond 8 paid full handshakes (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sessions_resumes_every_upstream_tls_handshake() {
    const BURST: usize = 24;
    let env = start(Options {
        extra_args: vec!["--max-sessions-per-user".into(), BURST.to_string()],
        ..Options::default()
    })
    .await
    .unwrap();
    // One echoing VM console per session, so no session takes over another's.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    for i in 0..BURST {
        env.standin.add_vmi(
            "lab-alice",
            &format!("burst-{i}"),
            labgate_tests::standin::Vmi::running(
                None,
                Some(labgate_tests::standin::UpstreamAddr::Tcp(echo_addr)),
            ),
        );
    }
    let token = env.token(ALICE);
    // All sessions of a burst are open at once before any closes.
    let burst = || async {
        let sessions = futures::future::join_all((0..BURST).map(|i| {
            let (env, token) = (&env, &token);
            async move {
                let mut ws = env
                    .open("lab-alice", &format!("burst-{i}"), "console", token)
                    .await;
                ws.send(Message::Binary(Bytes::from_static(b"ping")))
                    .await
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], b"ping"),
                    other => panic!("session {i}: {other:?}"),
                }
                ws
            }
        }))
        .await;
        for mut ws in sessions {
            ws.close(None).await.unwrap();
        }
    };
    const BURSTS: usize = 8;
    let mut per_burst = Vec::new();
    for _ in 0..BURSTS {
        let (full_before, resumed_before) = env.standin.tls_handshakes();
        burst().await;
        let (full, resumed) = env.standin.tls_handshakes();
        per_burst.push((full - full_before, resumed - resumed_before));
    }
    // A handshake uses at most one ticket and earns one, so with a store that
    // keeps them all, full handshakes happen only while the tickets in hand
    // are fewer than the sessions opening at once: BURST in all, however
    // many bursts follow. A store of 8 pays again in every burst.
    let full: u64 = per_burst.iter().map(|b| b.0).sum();
    assert!(
        full <= BURST as u64,
        "upstream TLS handshakes (full, resumed) in {BURSTS} bursts of {BURST} sessions: {per_burst:?}"
    );
}

/// The API server (Go's crypto/tls) hands out session tickets; the gateway must keep them
/// and resume, or every screen costs the API server a full TLS handshake (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_sessions_are_resumed() {
    let env = start(Options::default()).await.unwrap();
    let token = env.token(ALICE);
    let mut ws = env.open("lab-alice", "vm1", "vnc", &token).await;
    rfb_handshake(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let (full_before, resumed_before) = env.standin.tls_handshakes();
    for _ in 0..3 {
        let mut ws = env.open("lab-alice", "vm1", "vnc", &token).await;
        rfb_handshake(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    // A session may also ride a pooled connection kube opened earlier (no
    // handshake at all), so count what matters: no new connection was a full
    // handshake, and new ones did happen (so resumption was exercised).
    let (full, resumed) = env.standin.tls_handshakes();
    assert!(
        full == full_before && resumed > resumed_before,
        "upstream TLS handshakes for three sessions: {} full, {} resumed",
        full - full_before,
        resumed - resumed_before
    );
}
