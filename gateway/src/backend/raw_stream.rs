//! A raw byte stream (an RFB server, a serial socket, a PTY) dressed as the
//! websocket a KubeVirt upstream would be, so the splice stays one code path.
//!
//! An in-process pipe carries the websocket frames; a task on the far end
//! reads bytes from the stream and sends them as binary messages, and writes
//! the payload of every message it receives to the stream. Each direction
//! waits for its write before reading again and the pipe is small, so a slow
//! browser slows the VM side down instead of queueing (backpressure as with a
//! real upstream). A stream that ends or fails drops the pipe without a close
//! frame, exactly like KubeVirt losing the VM: the splice reports it as 4012
//! (or 4007 after a takeover). A `stop` that resolves sends `stop`'s frame.

use std::future::Future;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::UpstreamIo;

/// Bytes in flight in the in-process pipe, per direction.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest read from the raw stream, i.e. largest message sent to the splice.
const READ_BYTES: usize = 32 * 1024;

/// How the far end of the pipe ends when the raw stream reaches its end.
#[derive(Debug, Clone)]
pub enum AtEnd {
    /// Drop the pipe without a close frame: "connection lost" (4012).
    Drop,
    /// Close with this frame (a PTY program that exited ends the session cleanly).
    Close(CloseFrame),
}

/// Starts relaying `raw` and returns the websocket side for the splice.
/// `keep` lives as long as the relay (e.g. the PTY's child process, killed on
/// drop). `stop` ends the session early with its close frame (a VM removed
/// from the targets file).
pub async fn websocket_for<S, K>(
    raw: S,
    keep: K,
    at_end: AtEnd,
    stop: impl Future<Output = CloseFrame> + Send + 'static,
    max_message_bytes: usize,
) -> UpstreamIo
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    K: Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    // No handshake: both ends of the pipe start speaking frames.
    let ws = WebSocketStream::from_raw_socket(theirs, Role::Server, Some(config)).await;
    tokio::spawn(async move {
        relay(ws, raw, at_end, stop).await;
        drop(keep);
    });
    UpstreamIo::Memory(ours)
}

enum End {
    /// The raw stream ended or failed.
    RawEnded,
    /// The splice closed its side (close frame, or the pipe dropped).
    SpliceClosed,
    /// `stop` resolved.
    Stopped(CloseFrame),
}

async fn relay<S>(
    ws: WebSocketStream<tokio::io::DuplexStream>,
    raw: S,
    at_end: AtEnd,
    stop: impl Future<Output = CloseFrame>,
) where
    S: AsyncRead + AsyncWrite,
{
    let (raw_rx, raw_tx) = tokio::io::split(raw);
    tokio::pin!(raw_rx, raw_tx);
    let (mut sink, mut stream) = ws.split();
    let end = {
        let to_raw = async {
            while let Some(message) = stream.next().await {
                let payload = match message {
                    Ok(Message::Binary(b)) => b,
                    // The splice turns client text into binary; be lenient anyway.
                    Ok(Message::Text(t)) => Bytes::from(t),
                    Ok(Message::Close(_)) | Err(_) => return End::SpliceClosed,
                    Ok(_) => continue,
                };
                if raw_tx.write_all(&payload).await.is_err() || raw_tx.flush().await.is_err() {
                    return End::RawEnded;
                }
            }
            End::SpliceClosed
        };
        let from_raw = async {
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                // A PTY whose program exited reads as EIO: the same end.
                let n = match raw_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return End::RawEnded,
                    Ok(n) => n,
                };
                if sink
                    .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return End::SpliceClosed;
                }
            }
        };
        tokio::select! {
            end = to_raw => end,
            end = from_raw => end,
            frame = stop => End::Stopped(frame),
        }
    };
    let frame = match end {
        End::SpliceClosed => None,
        End::RawEnded => match at_end {
            AtEnd::Drop => return,
            AtEnd::Close(frame) => Some(frame),
        },
        End::Stopped(frame) => Some(frame),
    };
    if let Some(frame) = frame {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    // Flushes a queued close reply; bounded, the splice may be gone.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = sink.close().await;
        // Wait for the splice's close reply (or its end) before dropping the pipe.
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    let _ = raw_tx.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    async fn client(io: UpstreamIo) -> WebSocketStream<UpstreamIo> {
        WebSocketStream::from_raw_socket(io, Role::Client, None).await
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_ended_stream_drops_the_pipe() {
        let (raw, mut vm) = tokio::io::duplex(1024);
        let io = websocket_for(raw, (), AtEnd::Drop, std::future::pending(), 1 << 20).await;
        let mut ws = client(io).await;
        ws.send(Message::Binary(Bytes::from_static(b"key")))
            .await
            .unwrap();
        let mut got = [0u8; 3];
        vm.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"key");
        vm.write_all(b"RFB 003.008\n").await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"RFB 003.008\n"),
            other => panic!("{other:?}"),
        }
        drop(vm);
        // No close frame: the connection just ends, like KubeVirt losing the VM.
        match ws.next().await {
            None | Some(Err(_)) => {}
            other => panic!("expected a dropped connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_holds_the_vm_side_back() {
        let (raw, mut vm) = tokio::io::duplex(4096);
        let io = websocket_for(raw, (), AtEnd::Drop, std::future::pending(), 1 << 20).await;
        // Nobody reads `io`: what the VM can write is bounded by the buffers.
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = written.clone();
        let writer = tokio::spawn(async move {
            let chunk = [b'x'; 4096];
            loop {
                if vm.write_all(&chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let stuck_at = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            stuck_at < 512 * 1024,
            "{stuck_at} bytes taken from the VM side"
        );
        // Reading lets it go on.
        let mut ws = client(io).await;
        let mut got = 0;
        while got < 2 * stuck_at + 8192 {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => got += b.len(),
                other => panic!("{other:?}"),
            }
        }
        writer.abort();
    }

    #[tokio::test]
    async fn stop_sends_its_close_frame() {
        let (raw, _vm) = tokio::io::duplex(1024);
        let frame = CloseFrame {
            code: CloseCode::from(4009),
            reason: "gone".into(),
        };
        let io = websocket_for(raw, (), AtEnd::Drop, async move { frame }, 1 << 20).await;
        let mut ws = client(io).await;
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4009),
            other => panic!("{other:?}"),
        }
    }
}
