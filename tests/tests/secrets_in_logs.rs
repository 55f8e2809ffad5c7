//! Secrets stay secret (issue 12): the gateway runs with every target at
//! `debug` and its own at `trace` through sessions and refusals of every
//! kind; no token, no part of one, no path holding one, no HMAC secret, no
//! TLS key and no API-server token appears in any log line, panic message or
//! metric.

mod support;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::SinkExt;
use labgate_tests::log_capture::LogCapture;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const FILTER: &str = "debug,labgate_gateway=trace,labgate=trace,labgate_tests=trace";

/// Each token as the places it travels in: whole, its payload and signature
/// (either alone is a leak), and the bearer subprotocol's encoding.
fn token_secrets(name: &str, token: &str, out: &mut Vec<(String, String)>) {
    out.push((format!("{name} token"), token.to_string()));
    let parts: Vec<&str> = token.split('.').collect();
    if let [_, payload, signature] = parts.as_slice() {
        out.push((format!("{name} payload"), payload.to_string()));
        if signature.len() >= 8 {
            out.push((format!("{name} signature"), signature.to_string()));
        }
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    out.push((format!("{name} as a subprotocol"), b64.encode(token)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_a_panic_or_a_metric() {
    let capture = LogCapture::install(FILTER);
    let env = start(Options::default()).await.unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let alice = env.token(ALICE);
    let alice_query = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 601}));
    let alice_header = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 602}));
    let tutor_proto = env.token(TUTOR);
    let bob = env.token(BOB);
    let expired = env.sign(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() - 60}));
    let forged = env.sign_with(
        json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600}),
        b"a-forger-secret-a-forger-secret-0",
        jsonwebtoken::Algorithm::HS256,
    );
    let unsigned = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none"}"#),
        b64.encode(json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600}).to_string())
    );
    let huge = format!(
        "{}.{}.{}",
        b64.encode("{}"),
        "Q".repeat(64 * 1024),
        "sig0sig0sig0"
    );
    let proto = |t: &str| {
        format!(
            "base64url.bearer.authorization.k8s.io.{}, binary",
            b64.encode(t)
        )
    };

    // Sessions, with the token in each place it may travel.
    let mut ws = env.open("lab-alice", "vm1", "vnc", &alice).await;
    rfb_handshake(&mut ws).await;
    ws.close(None).await.unwrap();
    let (mut ws, _) = env
        .ws(
            &format!("/labs/lab-alice/vm1/console?token={alice_query}"),
            None,
            &[],
        )
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"echo hi\r")))
        .await
        .unwrap();
    ByteReader::new()
        .read_until(&mut ws, "hi", Duration::from_secs(10))
        .await;
    ws.close(None).await.unwrap();
    let (mut ws, _) = env
        .ws(
            "/labs/lab-alice/vm1/vnc",
            None,
            &[("authorization", &format!("Bearer {alice_header}"))],
        )
        .await
        .unwrap();
    rfb_handshake(&mut ws).await;
    drop(ws); // vanishes without a close
    let (mut ws, _) = env
        .ws("/labs/lab-alice/vm1/vnc", Some(&proto(&tutor_proto)), &[])
        .await
        .unwrap();
    rfb_handshake(&mut ws).await;
    // Taken over by alice: the tutor's session ends with 4007.
    let mut again = env.open("lab-alice", "vm1", "vnc", &alice).await;
    assert_refused(&mut ws, 4007).await;
    rfb_handshake(&mut again).await;
    drop(again);

    // Refusals of every kind, as websockets and as plain HTTP.
    let refusals: Vec<(String, u16)> = vec![
        (format!("/labs/lab-alice/vm1/vnc/{forged}"), 4001),
        (format!("/labs/lab-alice/vm1/vnc/{unsigned}"), 4001),
        (format!("/labs/lab-alice/vm1/vnc/{expired}"), 4002),
        (format!("/labs/lab-alice/vm1/vnc/{bob}"), 4003),
        (format!("/labs/lab-alice/nope/vnc/{alice}"), 4005),
        (format!("/labs/lab-alice/stopped/console/{alice}"), 4006),
        (format!("/labs/lab-alice/vm1/vnc/{alice}?token={bob}"), 4000),
        (format!("/labs/Lab-Alice/vm1/vnc/{alice}"), 4000),
        (format!("/labs/lab-alice/vm1/screen/{alice}"), 4000),
    ];
    for (path, code) in &refusals {
        let (mut ws, _) = env.ws(path, None, &[]).await.unwrap();
        assert_refused(&mut ws, *code).await;
        env.http(path, &[]).await.unwrap();
    }
    for (path, headers) in [
        (format!("/elsewhere/{alice}"), vec![]),
        (format!("/metrics?token={alice}"), vec![]),
        (format!("/healthz/{alice}"), vec![]),
        (
            "/labs/lab-alice/vm1/vnc".to_string(),
            vec![
                ("authorization", format!("Bearer {forged}")),
                ("sec-websocket-protocol", proto(&bob)),
            ],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.http(&path, &headers).await.unwrap();
    }
    // Heads over the limit, a broken upgrade, garbage instead of TLS.
    for head in [
        format!("GET /labs/lab-alice/vm1/vnc/{huge} HTTP/1.1\r\nhost: x\r\n\r\n"),
        format!(
            "GET /labs/lab-alice/vm1/vnc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {huge}\r\n\r\n"
        ),
        format!(
            "GET /labs/lab-alice/vm1/vnc/{alice} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {alice}\r\n\r\n"
        ),
        format!(
            "GET /labs/lab-alice/vm1/vnc/{alice} HTTP/1.1\r\nhost: x\r\nx-\u{1}: {alice}\r\n\r\n"
        ),
    ] {
        let mut tls = env.tls_connect().await.unwrap();
        let _ = tls.write_all(head.as_bytes()).await;
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await;
    }
    let mut raw = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    raw.write_all(format!("GET /labs/lab-alice/vm1/vnc/{alice} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut [0u8; 64])).await;

    // A rejected reload of the HMAC secret names the file, never its bytes.
    let secret_path = env.dir.path().join("hmac-secret");
    let weak = "weak-new-secret-material";
    std::fs::write(&secret_path, weak).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !capture.text().contains("token key reload failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload error logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&secret_path, &env.secret).unwrap();

    let (_, metrics) = env.http("/metrics", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // last audit lines
    let logs = capture.text();

    // The capture works: audit lines with users, debug lines, dependencies.
    assert!(
        logs.contains("session ended") && logs.contains(ALICE),
        "{logs}"
    );
    assert!(
        logs.contains("session refused"),
        "no refusal lines captured"
    );
    assert!(logs.contains("DEBUG"), "debug lines were not captured");

    let mut secrets: Vec<(String, String)> = Vec::new();
    for (name, token) in [
        ("alice (path)", &alice),
        ("alice (query)", &alice_query),
        ("alice (header)", &alice_header),
        ("tutor (subprotocol)", &tutor_proto),
        ("bob", &bob),
        ("expired", &expired),
        ("forged", &forged),
        ("unsigned", &unsigned),
    ] {
        token_secrets(name, token, &mut secrets);
    }
    secrets.push(("64 KiB token".into(), "Q".repeat(64)));
    let secret = String::from_utf8(env.secret.clone()).unwrap();
    secrets.push(("HMAC secret".into(), secret.clone()));
    secrets.push(("HMAC secret, base64".into(), b64.encode(&secret)));
    secrets.push(("HMAC secret, rejected".into(), weak.to_string()));
    secrets.push((
        "gateway's API-server token".into(),
        env.standin.gateway_token(),
    ));
    let key_pem = std::fs::read_to_string(&env.key_path).unwrap();
    for (i, line) in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .enumerate()
    {
        if line.len() >= 16 {
            secrets.push((format!("TLS key line {i}"), line.to_string()));
        }
    }
    LogCapture::assert_free_of("the logs", &logs, &secrets);
    LogCapture::assert_free_of("/metrics", &metrics, &secrets);
}
