//! Sending the end of a session as one TCP segment.
//!
//! When a session ends, each side gets a websocket close frame, then (over
//! TLS) close_notify, then FIN. Written one after another, each goes through
//! the TCP stack on its own: three segments where one would do. On a gateway
//! opening and closing many sessions the transmit path is the largest single
//! cost per session (on loopback it also carries the receiver's half), so the
//! two spare segments per side are worth saving.
//!
//! Each TCP connection of a session is a [`CorkableTcp`] listening to the
//! session's [`EndCork`]. When the splice starts closing it engages the cork,
//! and each connection sets `TCP_CORK` before its next write: the kernel then
//! holds the close frame and close_notify until `shutdown` sends FIN, which
//! pushes them out together with it. Nothing can be held for long: the kernel
//! sends corked data after 200 ms at most, and closing a socket sends it too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The switch a session's connections watch: once engaged, their remaining
/// writes are held back until they are shut down.
#[derive(Debug, Clone, Default)]
pub struct EndCork(Arc<AtomicBool>);

impl EndCork {
    /// Holds back every later write of the connections watching this cork
    /// until each is shut down (or 200 ms pass).
    pub fn engage(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn engaged(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A TCP connection that corks itself once its [`EndCork`] is engaged.
#[derive(Debug)]
pub struct CorkableTcp {
    stream: TcpStream,
    cork: EndCork,
    corked: bool,
}

impl CorkableTcp {
    /// Wraps `stream`, which corks once `cork` is engaged.
    pub fn new(stream: TcpStream, cork: EndCork) -> Self {
        CorkableTcp {
            stream,
            cork,
            corked: false,
        }
    }

    /// Sets `TCP_CORK` the first time a write finds the cork engaged. A
    /// failure only costs the segments the cork would have saved.
    fn cork_if_ending(&mut self) {
        if !self.corked && self.cork.engaged() {
            self.corked = true;
            if let Err(e) = rustix::net::sockopt::set_tcp_cork(&self.stream, true) {
                tracing::debug!(error = %e, "could not cork a closing connection");
            }
        }
    }
}

impl AsyncRead for CorkableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CorkableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.cork_if_ending();
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.cork_if_ending();
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// FIN: sent with whatever the cork held back, in one segment.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (CorkableTcp, TcpStream, EndCork) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let ours = ours.unwrap();
        ours.set_nodelay(true).unwrap();
        let cork = EndCork::default();
        (
            CorkableTcp::new(ours, cork.clone()),
            theirs.unwrap().0,
            cork,
        )
    }

    /// Bytes the peer can read within `wait`.
    async fn readable_within(peer: &mut TcpStream, wait: Duration) -> Vec<u8> {
        let mut got = vec![0u8; 64];
        match tokio::time::timeout(wait, peer.read(&mut got)).await {
            Ok(Ok(n)) => got[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn writes_go_out_at_once_until_the_cork_is_engaged() {
        let (mut ours, mut peer, _cork) = pair().await;
        ours.write_all(b"frame").await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(
            readable_within(&mut peer, Duration::from_secs(5)).await,
            b"frame"
        );
    }

    #[tokio::test]
    async fn once_engaged_the_last_writes_wait_for_the_shutdown_and_arrive_whole() {
        let (mut ours, mut peer, cork) = pair().await;
        ours.write_all(b"screen").await.unwrap();
        assert_eq!(
            readable_within(&mut peer, Duration::from_secs(5)).await,
            b"screen"
        );
        cork.engage();
        let corked_at = std::time::Instant::now();
        ours.write_all(b"close frame").await.unwrap();
        ours.flush().await.unwrap();
        ours.write_all(b"+close_notify").await.unwrap();
        // Held back: nothing has reached the peer's socket, looked at twice
        // well within the kernel's 200 ms ceiling (a look that a stalled
        // machine made later than 150 ms proves nothing either way).
        let peer_std = peer.into_std().unwrap();
        peer_std.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 64];
        for wait in [0, 30] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let early = std::io::Read::read(&mut &peer_std, &mut probe);
            let held = early
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock);
            assert!(
                held || corked_at.elapsed() >= Duration::from_millis(150),
                "a corked write went out before the shutdown: {early:?}"
            );
            if !held {
                return; // a late look: the ceiling may have sent it, nothing to conclude
            }
        }
        let mut peer = TcpStream::from_std(peer_std).unwrap();
        // ...and sent with the FIN.
        ours.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"close frame+close_notify");
    }

    #[tokio::test]
    async fn a_cork_never_followed_by_a_shutdown_still_lets_the_bytes_out() {
        let (mut ours, mut peer, cork) = pair().await;
        cork.engage();
        ours.write_all(b"close frame").await.unwrap();
        // The kernel's 200 ms ceiling, not the shutdown, sends it.
        assert_eq!(
            readable_within(&mut peer, Duration::from_secs(5)).await,
            b"close frame"
        );
    }
}
