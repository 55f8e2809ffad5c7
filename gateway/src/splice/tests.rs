//! The splice alone, over in-memory pipes with real tungstenite peers:
//! framing, closes, pings, limits, backpressure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::*;

type Peer = WebSocketStream<DuplexStream>;

const MAX_MESSAGE: usize = 256 * 1024;

/// The peers' own settings: they accept larger messages than the gateway.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(4 * MAX_MESSAGE))
        .max_frame_size(Some(4 * MAX_MESSAGE))
}

/// (the browser, the gateway's client-side connection after the handshake)
async fn browser_pair() -> (Peer, DuplexStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await,
        b,
    )
}

/// (the VM side, the gateway's upstream connection after the handshake)
async fn vm_pair() -> (Peer, DuplexStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        WebSocketStream::from_raw_socket(a, Role::Server, Some(config())).await,
        b,
    )
}

fn settings() -> SpliceSettings {
    SpliceSettings {
        ping_interval: Duration::from_secs(30),
        idle_timeout: None,
        close_timeout: Duration::from_secs(1),
        max_message_bytes: MAX_MESSAGE,
    }
}

/// Pings every 50 ms, so ping behaviour shows within a test's time.
fn fast_pings() -> SpliceSettings {
    SpliceSettings {
        ping_interval: Duration::from_millis(50),
        ..settings()
    }
}

fn byte_metrics() -> ByteMetrics {
    ByteMetrics {
        client_to_upstream: IntCounter::new("c2u", "test").unwrap(),
        upstream_to_client: IntCounter::new("u2c", "test").unwrap(),
    }
}

struct Running {
    browser: Peer,
    vm: Peer,
    counts: Arc<ByteCounts>,
    stop: Option<tokio::sync::oneshot::Sender<Refusal>>,
    end: tokio::task::JoinHandle<SpliceEnd>,
}

async fn run(settings: SpliceSettings) -> Running {
    let (vm, upstream) = vm_pair().await;
    let (browser, counts, stop, end) = run_with_upstream(settings, upstream).await;
    Running {
        browser,
        vm,
        counts,
        stop: Some(stop),
        end,
    }
}

/// Starts a splice whose VM side is `upstream`'s other end, driven by the
/// caller (as raw bytes if it likes).
async fn run_with_upstream(
    settings: SpliceSettings,
    upstream: DuplexStream,
) -> (
    Peer,
    Arc<ByteCounts>,
    tokio::sync::oneshot::Sender<Refusal>,
    tokio::task::JoinHandle<SpliceEnd>,
) {
    let (browser, client) = browser_pair().await;
    let counts = Arc::new(ByteCounts::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<Refusal>();
    let task_counts = counts.clone();
    let end = tokio::spawn(async move {
        let stop = async move { rx.await.unwrap_or(Refusal::ShuttingDown) };
        splice(
            client,
            upstream,
            settings,
            stop,
            &|| Refusal::TakenOver,
            &task_counts,
            &byte_metrics(),
            &[],
        )
        .await
    });
    (browser, counts, tx, end)
}

/// The first half of a binary frame of `len` bytes of 7s, as KubeVirt
/// would send it (unmasked), cut where a read might end.
fn half_a_frame(len: usize) -> Vec<u8> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let frame = Frame::message(vec![7u8; len], OpCode::Data(Data::Binary), true);
    let mut bytes = Vec::new();
    frame.format(&mut bytes).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// The browser receives one message of `len` bytes (the cut-off frame,
/// finished with filler) and then a close frame, which is returned.
async fn message_then_close(browser: &mut Peer, len: usize) -> CloseFrame {
    match next_data(browser).await {
        Message::Binary(b) => {
            assert_eq!(b.len(), len);
            assert!(
                b[..len / 4].iter().all(|&x| x == 7),
                "the data sent is intact"
            );
        }
        other => panic!("expected the cut-off message, got {other:?}"),
    }
    match next_data(browser).await {
        Message::Close(Some(f)) => f,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn next_data(peer: &mut Peer) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), peer.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_becomes_binary_and_bytes_are_counted() {
    let mut s = run(settings()).await;
    s.browser.send(Message::Text("ls\r".into())).await.unwrap();
    s.browser
        .send(Message::Binary(Bytes::from_static(&[0, 255, 7])))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut s.vm).await,
        Message::Binary(Bytes::from_static(b"ls\r"))
    );
    assert_eq!(
        next_data(&mut s.vm).await,
        Message::Binary(Bytes::from_static(&[0, 255, 7]))
    );
    s.vm.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        next_data(&mut s.browser).await,
        Message::Binary(Bytes::from_static(b"hello"))
    );
    assert_eq!(s.counts.client_to_upstream.load(Ordering::Relaxed), 6);
    assert_eq!(s.counts.upstream_to_client.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn close_frames_pass_both_ways() {
    let mut s = run(settings()).await;
    let bye = CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    };
    s.browser
        .send(Message::Close(Some(bye.clone())))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut s.vm).await,
        Message::Close(Some(bye.clone()))
    );
    assert_eq!(s.end.await.unwrap(), SpliceEnd::ClientClosed(Some(bye)));

    let mut s = run(settings()).await;
    let gone = CloseFrame {
        code: CloseCode::from(4100),
        reason: "vm says bye".into(),
    };
    s.vm.send(Message::Close(Some(gone.clone()))).await.unwrap();
    assert_eq!(next_data(&mut s.browser).await, Message::Close(Some(gone)));

    // KubeVirt closes without a status: the browser still gets a reason.
    let mut s = run(settings()).await;
    s.vm.send(Message::Close(None)).await.unwrap();
    match next_data(&mut s.browser).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Normal);
            assert!(f.reason.contains("VM"));
        }
        other => panic!("{other:?}"),
    }
}

async fn first_ping(peer: &mut Peer) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = peer.next().await {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn both_sides_are_pinged() {
    let mut s = run(fast_pings()).await;
    // Read both sides at once (reading is what answers pings with pongs).
    let (browser, vm) = tokio::join!(first_ping(&mut s.browser), first_ping(&mut s.vm));
    assert!(browser.is_ok(), "no ping to the browser");
    assert!(vm.is_ok(), "no ping to the VM side");
}

#[tokio::test]
async fn a_browser_that_answers_no_pings_is_dropped() {
    let mut s = run(fast_pings()).await;
    // The VM side keeps reading (answering pings); the browser never reads,
    // so it never answers: like a laptop that went to sleep.
    let vm = tokio::spawn(async move { while let Some(Ok(_)) = s.vm.next().await {} });
    let end = tokio::time::timeout(Duration::from_secs(2), s.end)
        .await
        .expect("a silent browser is dropped after a few unanswered pings")
        .unwrap();
    assert_eq!(end, SpliceEnd::ClientGone);
    vm.abort();
}

#[tokio::test]
async fn a_browser_that_answers_pings_stays_connected() {
    let mut s = run(fast_pings()).await;
    // Both peers read (and so answer pings) but send no data for 20 pings.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tokio::join!(
            async { while let Some(Ok(_)) = s.browser.next().await {} },
            async { while let Some(Ok(_)) = s.vm.next().await {} },
        )
    })
    .await;
    assert!(!s.end.is_finished(), "a live, quiet browser was dropped");
}

#[tokio::test]
async fn stop_closes_the_client_with_the_reason_and_the_vm_normally() {
    let mut s = run(settings()).await;
    s.stop.take().unwrap().send(Refusal::Revoked).unwrap();
    match next_data(&mut s.browser).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4009),
        other => panic!("{other:?}"),
    }
    match next_data(&mut s.vm).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.end.await.unwrap(), SpliceEnd::Stopped(Refusal::Revoked));
}

#[tokio::test]
async fn a_vanished_vm_side_is_reported_with_the_loss_reason() {
    let mut s = run(settings()).await;
    drop(s.vm);
    match next_data(&mut s.browser).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4007),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.end.await.unwrap(),
        SpliceEnd::UpstreamGone(Refusal::TakenOver)
    );
}

#[tokio::test]
async fn oversized_messages_get_1009() {
    let mut s = run(settings()).await;
    let big = Bytes::from(vec![b'x'; MAX_MESSAGE + 1]);
    let _ = s.browser.send(Message::Binary(big)).await;
    match next_data(&mut s.browser).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.end.await.unwrap(),
        SpliceEnd::MessageTooBig { from_client: true }
    );
}

#[tokio::test]
async fn idle_sessions_end() {
    let mut s = run(SpliceSettings {
        idle_timeout: Some(Duration::from_millis(600)),
        ..settings()
    })
    .await;
    // Activity pushes the deadline out: 900 ms in, the session still runs.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.browser
            .send(Message::Binary(Bytes::from_static(b"k")))
            .await
            .unwrap();
    }
    assert!(!s.end.is_finished());
    match next_data(&mut s.browser).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4011),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.end.await.unwrap(), SpliceEnd::Idle);
}

#[tokio::test]
async fn a_slow_reader_holds_back_the_sender_instead_of_growing_memory() {
    let mut s = run(settings()).await;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    // The browser reads nothing: the VM side must soon be unable to send.
    let mut sent = 0usize;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            s.vm.send(Message::Binary(chunk.clone())).await.unwrap();
            sent += 1;
        }
    })
    .await;
    // Pipes (2 x 64 KiB) plus one queued message per websocket, roughly.
    assert!(
        sent < 32,
        "{sent} messages of 64 KiB accepted without a reader"
    );
    // Nothing is lost: the browser gets them all, in order.
    let mut got = 0usize;
    while got < sent * chunk.len() {
        match next_data(&mut s.browser).await {
            Message::Binary(b) => {
                assert!(b.iter().all(|&x| x == 7));
                got += b.len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, sent * chunk.len());
}

#[tokio::test]
async fn a_session_stopped_mid_frame_still_tells_the_browser_why() {
    use tokio::io::AsyncWriteExt;
    let (mut vm, upstream) = tokio::io::duplex(1024 * 1024);
    let (mut browser, _counts, stop, end) = run_with_upstream(settings(), upstream).await;
    // A screen update is half relayed when the lab is revoked.
    vm.write_all(&half_a_frame(100_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.send(Refusal::Revoked).unwrap();
    let frame = message_then_close(&mut browser, 100_000).await;
    assert_eq!(u16::from(frame.code), 4009, "{}", frame.reason);
    assert_eq!(end.await.unwrap(), SpliceEnd::Stopped(Refusal::Revoked));
}

#[tokio::test]
async fn a_vm_side_lost_mid_frame_is_still_reported() {
    use tokio::io::AsyncWriteExt;
    let (mut vm, upstream) = tokio::io::duplex(1024 * 1024);
    let (mut browser, _counts, _stop, end) = run_with_upstream(settings(), upstream).await;
    // KubeVirt drops a viewer that was taken over in the middle of a frame.
    vm.write_all(&half_a_frame(100_000)).await.unwrap();
    vm.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(vm);
    let frame = message_then_close(&mut browser, 100_000).await;
    assert_eq!(u16::from(frame.code), 4007, "{}", frame.reason);
    assert_eq!(
        end.await.unwrap(),
        SpliceEnd::UpstreamGone(Refusal::TakenOver)
    );
}

#[tokio::test]
async fn a_browser_that_reads_nothing_cannot_hold_a_stopped_session_open() {
    let mut s = run(settings()).await;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    // Fill every buffer towards the browser, which never reads.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            s.vm.send(Message::Binary(chunk.clone())).await.unwrap();
        }
    })
    .await;
    s.stop.take().unwrap().send(Refusal::Revoked).unwrap();
    // The pump stuck writing to the browser is given up on after the close
    // timeout (1 s here); the session ends anyway.
    let end = tokio::time::timeout(Duration::from_secs(4), s.end)
        .await
        .expect("the splice ends despite the stuck browser")
        .unwrap();
    assert_eq!(end, SpliceEnd::Stopped(Refusal::Revoked));
}
