//! Opening the VM side of a session.
//!
//! [`Backend`] is the seam between the session pipeline and wherever VMs
//! live: [`kubevirt::KubeVirtBackend`] opens KubeVirt's `vnc` / `console`
//! subresource through the Kubernetes API server with the gateway's own
//! credentials; [`static_targets::StaticBackend`] opens the screens and
//! consoles listed in a file (VMs outside Kubernetes, and the demo). Both
//! hand the splice a websocket byte stream ([`UpstreamIo`]); raw targets get
//! theirs from [`raw_stream`].

pub mod kubevirt;
pub mod raw_stream;
pub mod rfb_capture;
pub mod static_targets;
pub mod targets_file;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::end_cork::EndCork;
use crate::refusal::Refusal;
use crate::route::ConsoleKind;

pub use crate::vm_index::{VmPhase, VmSummary};
pub use kubevirt::{KUBEVIRT_PROTOCOL, KubeVirtBackend, classify_refusal};
pub use static_targets::StaticBackend;

/// The byte stream under an upstream websocket.
pub enum UpstreamIo {
    /// A connection upgraded through hyper (API server, or any HTTP upstream),
    /// with the cork of its TCP connection when the gateway opened that itself.
    Upgraded(TokioIo<hyper::upgrade::Upgraded>, Option<EndCork>),
    /// An in-process pipe (raw targets framed by [`raw_stream`], tests).
    Memory(tokio::io::DuplexStream),
}

/// Which VM console to open.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTarget<'a> {
    /// Lab namespace.
    pub namespace: &'a str,
    /// VirtualMachineInstance name.
    pub vmi: &'a str,
    /// Screen or serial console.
    pub kind: ConsoleKind,
}

/// Why the upstream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no such VirtualMachineInstance")]
    NotFound,
    #[error("VM not available: {0}")]
    NotRunning(String),
    #[error("VM screen in use by another viewer")]
    Busy,
    #[error("the API server does not accept the gateway's credentials: {0}")]
    Unauthorized(String),
    #[error("the gateway is not allowed to open the subresource: {0}")]
    Forbidden(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("upstream connection failed: {0}")]
    Transport(String),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("this backend does not support that")]
    Unsupported,
    #[error("the VM list is not loaded yet")]
    NotReady,
}

impl UpstreamError {
    /// What the client is told.
    pub fn refusal(&self) -> Refusal {
        match self {
            UpstreamError::NotFound => Refusal::NoSuchVm,
            UpstreamError::NotRunning(message) => Refusal::from_kubevirt_message(message),
            UpstreamError::Busy => Refusal::VmBusy,
            UpstreamError::Unauthorized(_) | UpstreamError::Forbidden(_) => {
                Refusal::GatewayUnauthorized
            }
            UpstreamError::Status { .. }
            | UpstreamError::Transport(_)
            | UpstreamError::Timeout
            | UpstreamError::Unsupported => Refusal::UpstreamError,
            UpstreamError::NotReady => Refusal::NotReady,
        }
    }
}

/// Boxed future returned by [`Backend::connect`] (keeps the trait object-safe).
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UpstreamIo, UpstreamError>> + Send + 'a>>;

/// Opens upstream websockets to VM consoles.
pub trait Backend: Send + Sync + 'static {
    /// Opens the console `target` and completes the websocket handshake (the
    /// gateway is the client); returns the connection, ready for frames.
    fn connect<'a>(&'a self, target: UpstreamTarget<'a>) -> ConnectFuture<'a>;

    /// The VMs of a lab namespace (for `GET /labs/{lab}`), answered without
    /// asking anything upstream per request. Default: not supported.
    fn list_vms<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VmSummary>, UpstreamError>> {
        let _ = namespace;
        Box::pin(async { Err(UpstreamError::Unsupported) })
    }

    /// A PNG of the VM's screen (`target.kind` is `Vnc`), bounded in size
    /// by the backend. Default: not supported.
    fn screenshot<'a>(
        &'a self,
        target: UpstreamTarget<'a>,
    ) -> BoxFuture<'a, Result<bytes::Bytes, UpstreamError>> {
        let _ = target;
        Box::pin(async { Err(UpstreamError::Unsupported) })
    }

    /// Whether [`Backend::screenshot`] leaves the screen's live viewers
    /// connected, so a screen relayed here may be captured. Default: not
    /// known to (KubeVirt < 1.6.3 drops them; `--vnc-preserve-session` says
    /// otherwise for KubeVirt).
    fn captures_keep_viewers(&self) -> bool {
        false
    }
}

/// Boxed future of the [`Backend`] methods.
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

impl UpstreamIo {
    /// The switch that makes the connection send its last writes with its FIN
    /// (see [`crate::end_cork`]), where it has one.
    pub fn end_cork(&self) -> Option<&EndCork> {
        match self {
            UpstreamIo::Upgraded(_, cork) => cork.as_ref(),
            UpstreamIo::Memory(_) => None,
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Upgraded(io, _) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Memory(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Upgraded(io, _) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Memory(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Upgraded(io, _) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Memory(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Upgraded(io, _) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Memory(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Upgraded(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Memory(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Upgraded(io, _) => io.is_write_vectored(),
            UpstreamIo::Memory(io) => io.is_write_vectored(),
        }
    }
}
