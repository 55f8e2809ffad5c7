//! The static backend: VMs outside Kubernetes (QEMU, libvirt, any RFB
//! server), listed with their labs in a YAML file ([`targets_file`]).
//!
//! The file is the lab index too: owners and members come from it, and a
//! change (a member removed, a lab removed) revokes live sessions through the
//! index exactly like a namespace change does (4009). A VM removed from the
//! file, or whose target changed, has its live sessions closed with 4009 by
//! the relay itself. Screens and consoles are raw byte streams, framed as
//! websocket messages by [`raw_stream`] so the splice sees what KubeVirt
//! would send. Connection failures are classified like KubeVirt's: all are
//! "VM connection failed" (4012), and the connect timeout is the gateway's
//! `--upstream-connect-timeout`.
//!
//! Screenshots are one short RFB capture of the screen ([`rfb_capture`]):
//! a shared connection, so the viewers connected (through this gateway or
//! not) keep the screen; a screen that asks for a VNC password cannot be
//! captured (an error naming that, 502 `upstream_error`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::raw_stream::{self, AtEnd};
use super::rfb_capture;
use super::targets_file::{self, StaticTargets, Target};
use super::{
    Backend, BoxFuture, ConnectFuture, UpstreamError, UpstreamIo, UpstreamTarget, VmPhase,
    VmSummary,
};
use crate::index::LabIndex;
use crate::refusal::Refusal;
use crate::reload::FileStamps;
use crate::route::ConsoleKind;
use crate::splice::close_frame;

/// Opens the screens and consoles listed in a static targets file.
pub struct StaticBackend {
    targets: watch::Sender<Arc<StaticTargets>>,
    max_message_bytes: usize,
    /// Largest screen captured, as a 32-bit framebuffer (width × height × 4).
    screenshot_max_bytes: usize,
}

impl StaticBackend {
    /// A backend serving `targets` (replace them with [`StaticBackend::replace`]).
    pub fn new(targets: StaticTargets, max_message_bytes: usize) -> StaticBackend {
        StaticBackend {
            targets: watch::Sender::new(Arc::new(targets)),
            max_message_bytes,
            screenshot_max_bytes: crate::screenshot::DEFAULT_MAX_BYTES,
        }
    }

    /// Refuses to capture screens whose 32-bit framebuffer (width × height
    /// × 4) is larger than `bytes`.
    pub fn screenshot_max_bytes(mut self, bytes: usize) -> StaticBackend {
        self.screenshot_max_bytes = bytes;
        self
    }

    /// Swaps in a new file's contents; sessions whose VM target disappeared
    /// or changed are closed with 4009.
    pub fn replace(&self, targets: StaticTargets) {
        self.targets.send_replace(Arc::new(targets));
    }

    /// The VMs of `lab`, sorted by name: (name, has a screen, has a console).
    pub fn vms(&self, lab: &str) -> Vec<(String, bool, bool)> {
        let targets = self.targets.borrow();
        targets.labs.get(lab).map_or_else(Vec::new, |l| {
            l.vms
                .iter()
                .map(|(name, t)| (name.clone(), t.screen.is_some(), t.console.is_some()))
                .collect()
        })
    }

    /// The screen target of a VM, with KubeVirt's answers for a missing VM or screen.
    fn screen_of(&self, target: UpstreamTarget<'_>) -> Result<Target, UpstreamError> {
        let targets = self.targets.borrow();
        let vm = targets
            .vm(target.namespace, target.vmi)
            .ok_or(UpstreamError::NotFound)?;
        vm.screen
            .clone()
            .ok_or_else(|| UpstreamError::NotRunning("No graphics devices are present.".into()))
    }

    /// One RFB capture of the VM's screen, as a PNG (the caller bounds the time).
    async fn capture(&self, target: UpstreamTarget<'_>) -> Result<bytes::Bytes, UpstreamError> {
        let screen = self.screen_of(target)?;
        let failed = |e: &dyn std::fmt::Display| {
            UpstreamError::Transport(format!("screenshot of {}: {e}", screen.describe()))
        };
        let max = self.screenshot_max_bytes;
        let frame = match &screen {
            Target::Tcp(addr) => {
                let mut stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| failed(&e))?;
                let _ = stream.set_nodelay(true);
                rfb_capture::capture(&mut stream, max).await
            }
            Target::Unix(path) => {
                let mut stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| failed(&e))?;
                rfb_capture::capture(&mut stream, max).await
            }
            // The targets file only allows tcp: and unix: screens.
            Target::Pty(_) => return Err(UpstreamError::Unsupported),
        }
        .map_err(|e| failed(&e))?;
        // Deflating a large screen takes a few milliseconds: off the reactor.
        let png = tokio::task::spawn_blocking(move || rfb_capture::encode_png(&frame))
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        Ok(bytes::Bytes::from(png))
    }

    async fn open(&self, target: UpstreamTarget<'_>) -> Result<UpstreamIo, UpstreamError> {
        // Subscribed before reading, so a change racing this session is seen.
        let mut changes = self.targets.subscribe();
        let wanted = {
            let targets = changes.borrow_and_update();
            let vm = targets
                .vm(target.namespace, target.vmi)
                .ok_or(UpstreamError::NotFound)?;
            match target.kind {
                // KubeVirt's own words, so the same close codes (4017, 4018) follow.
                ConsoleKind::Vnc => vm.screen.clone().ok_or_else(|| {
                    UpstreamError::NotRunning("No graphics devices are present.".into())
                })?,
                ConsoleKind::Console => vm.console.clone().ok_or_else(|| {
                    UpstreamError::NotRunning("No serial consoles are present.".into())
                })?,
            }
        };
        let stop = removed(
            changes,
            target.namespace.to_string(),
            target.vmi.to_string(),
            target.kind,
            wanted.clone(),
        );
        let max = self.max_message_bytes;
        let lost =
            |e: std::io::Error| UpstreamError::Transport(format!("{}: {e}", wanted.describe()));
        match &wanted {
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(lost)?;
                // RFB and serial traffic is small and interactive.
                let _ = stream.set_nodelay(true);
                Ok(raw_stream::websocket_for(stream, (), AtEnd::Drop, stop, max).await)
            }
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(lost)?;
                Ok(raw_stream::websocket_for(stream, (), AtEnd::Drop, stop, max).await)
            }
            Target::Pty(argv) => {
                let (pty, child) = spawn_on_pty(argv).map_err(lost)?;
                let exited = AtEnd::Close(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "the console program exited".into(),
                });
                Ok(
                    raw_stream::websocket_for(pty, ChildGuard(Some(child)), exited, stop, max)
                        .await,
                )
            }
        }
    }
}

impl Backend for StaticBackend {
    fn connect<'a>(&'a self, target: UpstreamTarget<'a>) -> ConnectFuture<'a> {
        Box::pin(self.open(target))
    }

    /// The file says which VMs exist and what they offer, not whether they
    /// run: every phase is `Unknown` (a session attempt tells).
    fn list_vms<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VmSummary>, UpstreamError>> {
        let vms = self
            .vms(namespace)
            .into_iter()
            .map(|(name, screen, console)| VmSummary {
                name,
                phase: VmPhase::Unknown,
                screen,
                console,
            })
            .collect();
        Box::pin(async move { Ok(vms) })
    }

    fn screenshot<'a>(
        &'a self,
        target: UpstreamTarget<'a>,
    ) -> BoxFuture<'a, Result<bytes::Bytes, UpstreamError>> {
        Box::pin(self.capture(target))
    }

    /// A capture is one more shared RFB client: the viewers keep the screen.
    fn captures_keep_viewers(&self) -> bool {
        true
    }
}

/// Resolves (with a 4009 close frame) once the session's target is no longer
/// in the file, or points somewhere else.
async fn removed(
    mut targets: watch::Receiver<Arc<StaticTargets>>,
    lab: String,
    vm: String,
    kind: ConsoleKind,
    wanted: Target,
) -> CloseFrame {
    loop {
        if targets.changed().await.is_err() {
            // The backend is gone (gateway stopping): the splice ends the session.
            std::future::pending::<()>().await;
        }
        let now = targets
            .borrow_and_update()
            .vm(&lab, &vm)
            .and_then(|t| match kind {
                ConsoleKind::Vnc => t.screen.clone(),
                ConsoleKind::Console => t.console.clone(),
            });
        if now.as_ref() != Some(&wanted) {
            tracing::info!(%lab, vmi = %vm, %kind, "VM target removed or changed in the static targets file");
            return close_frame(Refusal::Revoked);
        }
    }
}

/// Starts `argv` on a new PTY (its controlling terminal, own session).
fn spawn_on_pty(argv: &[String]) -> std::io::Result<(pty_process::Pty, tokio::process::Child)> {
    let io = |e: pty_process::Error| match e {
        pty_process::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    let (pty, pts) = pty_process::open().map_err(io)?;
    let _ = pty.resize(pty_process::Size::new(24, 80));
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty pty: command"))?;
    let mut command = pty_process::Command::new(program)
        .args(args)
        .env("TERM", "xterm-256color");
    // The gateway's own settings are none of the console's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LABGATE_") {
            command = command.env_remove(key);
        }
    }
    let child = command.kill_on_drop(true).spawn(pts).map_err(io)?;
    Ok((pty, child))
}

/// How long a PTY program may take to exit after its hangup before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(1);

/// Ends a PTY session's program with the session, like a terminal hanging
/// up: SIGHUP to its process group (a shell passes it on to its jobs), then
/// SIGKILL for a program still running after [`HANGUP_GRACE`].
struct ChildGuard(Option<tokio::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        // The program leads its own session and process group (pty-process calls setsid).
        if let Some(pid) = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::HUP);
        }
        let session = child.id();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Dropped with the runtime at exit: kill_on_drop then kills it at once.
                runtime.spawn(async move {
                    if tokio::time::timeout(HANGUP_GRACE, child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                    if let Some(session) = session {
                        kill_session(session);
                    }
                });
            }
            Err(_) => {
                let _ = child.start_kill();
            }
        }
    }
}

/// SIGKILL to every process still in the session `leader` led: a shell's
/// background jobs live in their own process groups, and a shell that exits
/// or is killed before passing the hangup on would leave them running.
fn kill_session(leader: u32) {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // "pid (comm) state ppid pgrp session …": comm may hold spaces and parentheses.
        let session = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().nth(3)?.parse::<u32>().ok()
            });
        if session == Some(leader)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Keeps `backend` and `index` equal to the targets file, reloading it when
/// it changes after `stamps` were taken (take them before the first load, so
/// an edit racing it is not missed). A file that fails to load leaves the
/// previous contents in place (and says so in the log).
pub async fn watch_file(
    path: PathBuf,
    mut stamps: FileStamps,
    backend: Arc<StaticBackend>,
    index: Arc<LabIndex>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if !stamps.changed() {
            continue;
        }
        match targets_file::load(&path) {
            Ok(targets) => {
                index.replace_all(targets.index_entries());
                backend.replace(targets);
                tracing::info!(labs = index.len(), "static targets file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "static targets file reload failed; keeping the previous targets")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn targets(yaml: &str) -> StaticTargets {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, yaml).unwrap();
        targets_file::load(&p).unwrap()
    }

    fn target<'a>(vmi: &'a str, kind: ConsoleKind) -> UpstreamTarget<'a> {
        UpstreamTarget {
            namespace: "lab",
            vmi,
            kind,
        }
    }

    #[tokio::test]
    async fn unknown_vms_and_missing_devices_get_kubevirt_answers() {
        let b = StaticBackend::new(
            targets(
                "labs:\n  - name: lab\n    owner: a\n    vms:\n      - {name: s, console: 'pty:/bin/true'}\n      - {name: v, screen: 'tcp:127.0.0.1:1'}\n",
            ),
            1 << 20,
        );
        assert_eq!(
            b.vms("lab"),
            vec![
                ("s".to_string(), false, true),
                ("v".to_string(), true, false)
            ]
        );
        assert!(b.vms("other").is_empty());
        let refusal = |r: Result<UpstreamIo, UpstreamError>| r.err().unwrap().refusal();
        assert_eq!(
            refusal(b.open(target("x", ConsoleKind::Console)).await),
            Refusal::NoSuchVm
        );
        assert_eq!(
            refusal(b.open(target("s", ConsoleKind::Vnc)).await),
            Refusal::NoDisplay
        );
        assert_eq!(
            refusal(b.open(target("v", ConsoleKind::Console)).await),
            Refusal::NoSerialConsole
        );
    }

    #[tokio::test]
    async fn refused_connections_are_upstream_errors() {
        // Bind then drop: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let b = StaticBackend::new(
            targets(&format!(
                "labs:\n  - name: lab\n    owner: a\n    vms:\n      - {{name: v, screen: 'tcp:127.0.0.1:{port}', console: 'unix:/nonexistent/labgate.sock'}}\n"
            )),
            1 << 20,
        );
        for kind in [ConsoleKind::Vnc, ConsoleKind::Console] {
            let e = b.open(target("v", kind)).await.err().unwrap();
            assert_eq!(e.refusal(), Refusal::UpstreamError, "{e}");
        }
    }

    #[tokio::test]
    async fn a_screen_asking_for_a_vnc_password_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut vm, _) = listener.accept().await.unwrap();
            vm.write_all(b"RFB 003.008\n\x01\x02").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let b = StaticBackend::new(
            targets(&format!(
                "labs:\n  - name: lab\n    owner: a\n    vms:\n      - {{name: v, screen: 'unix:{}'}}\n",
                sock.display()
            )),
            1 << 20,
        );
        assert!(b.captures_keep_viewers());
        let e = b.capture(target("v", ConsoleKind::Vnc)).await.unwrap_err();
        assert_eq!(e.refusal(), Refusal::UpstreamError);
        assert!(e.to_string().contains("VNC password"), "{e}");
    }

    #[tokio::test]
    async fn a_removed_vm_closes_its_session_with_4009() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let yaml = |vms: &str| format!("labs:\n  - name: lab\n    owner: a\n    vms:\n{vms}");
        let b = StaticBackend::new(
            targets(&yaml(&format!(
                "      - {{name: v, console: 'unix:{}'}}\n",
                sock.display()
            ))),
            1 << 20,
        );
        let io = b.open(target("v", ConsoleKind::Console)).await.unwrap();
        let (mut vm, _) = listener.accept().await.unwrap();
        vm.write_all(b"login: ").await.unwrap();
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
        b.replace(targets(&yaml(
            "      - {name: w, console: 'pty:/bin/true'}\n",
        )));
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4009),
            other => panic!("{other:?}"),
        }
    }
}
