//! Gateway limits and edge cases end to end: header and message sizes,
//! handshake timeout, pings, session duration, upstream refusals, VM-side
//! closes and the preserve-session mode.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_slow_clients_are_cut_off() {
    let env = start(Options {
        extra_args: args(&["--handshake-timeout", "1s", "--max-header-bytes", "8192"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let big = "x".repeat(20_000);
    let err = env.http("/healthz", &[("x-padding", big.as_str())]).await;
    match err {
        Ok((status, _)) => assert_eq!(status, 431),
        Err(e) => panic!("expected 431, got {e}"),
    }
    // A client that completes TLS but never sends its request is dropped.
    let mut tls = env.tls_connect().await.unwrap();
    tls.write_all(b"GET /labs/lab-alice/vm1/vnc HTTP/1.1\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("server should hang up on a stalled request head")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t0.elapsed() >= Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009_and_pings_flow() {
    let env = start(Options {
        extra_args: args(&["--max-message-bytes", "4096", "--ping-interval", "200ms"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    // The gateway pings the client (KubeVirt sends none).
    let pinged = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(pinged.is_ok(), "no ping from the gateway");
    let _ = ws
        .send(Message::Binary(Bytes::from(vec![b'a'; 8192])))
        .await;
    let frame = expect_close(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(u16::from(frame.code), 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_session_duration_ends_sessions() {
    let env = start(Options {
        extra_args: args(&["--max-session-duration", "1s"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    let frame = expect_close(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(u16::from(frame.code), 4014, "{}", frame.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_rbac_is_reported_as_the_gateways_problem() {
    let env = start(Options {
        kube_user: Some(labgate_tests::standin::UserInfo::service_account(
            "labgate",
            "no-subresource-rights",
        )),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    // The API server's 403 is about the gateway's RBAC, not the VM.
    let reason = assert_refused(&mut ws, 4020).await;
    assert!(reason.contains("not authorised"), "{reason}");
    // The stand-in answered 403 to the subresource request (no retry: only 401 re-reads the token).
    assert_eq!(env.standin.subresource_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_side_closing_reaches_the_client_with_a_reason() {
    let env = start(Options::default()).await.unwrap();
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    ws.send(Message::Binary(Bytes::from_static(b"exit\r")))
        .await
        .unwrap();
    let frame = expect_close(&mut ws, Duration::from_secs(10))
        .await
        .expect("a close frame with a status");
    assert_eq!(u16::from(frame.code), 1000);
    assert!(frame.reason.contains("VM"), "{}", frame.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_session_refuses_a_second_viewer() {
    let env = start(Options {
        extra_args: args(&["--vnc-preserve-session"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut first = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    rfb_handshake(&mut first).await;
    let mut second = env.open("lab-alice", "vm1", "vnc", &env.token(TUTOR)).await;
    let reason = assert_refused(&mut second, 4013).await;
    assert!(reason.contains("busy"), "{reason}");
    // The first viewer is undisturbed: ask for another update.
    first
        .send(Message::Binary(Bytes::from_static(&[
            3, 0, 0, 0, 0, 0, 0, 16, 0, 16,
        ])))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.next().await {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => return true,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(got, "first viewer lost its screen");
}
