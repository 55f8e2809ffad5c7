//! Real processes standing in for a VM's insides: TigerVNC's `Xvnc` for the screen and a `socat`
//! PTY shell for the serial console, each listening on a unix socket in its own temp dir.
//!
//! Both stop their process on drop (SIGTERM, then SIGKILL if it lingers).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a fixture may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A child process that is stopped on drop.
struct Process {
    child: Child,
}

impl Process {
    fn spawn(command: &mut Command, binary: &str, package: &str) -> anyhow::Result<Process> {
        match command.spawn() {
            Ok(child) => Ok(Process { child }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!(
                    "`{binary}` is not installed: install the Debian package {package} (apt-get install {package})"
                )
            }
            Err(e) => Err(e).with_context(|| format!("starting {binary}")),
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        // SIGTERM lets Xvnc remove its lock file and X socket; std only offers SIGKILL.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `socket` accepts a connection, failing early if the process dies.
fn wait_for_socket(
    process: &mut Process,
    socket: &Path,
    what: &str,
    log: Option<&Path>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if process.exited() {
            let output = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            let tail: Vec<&str> = output.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{what} exited before listening on {}: {}",
                socket.display(),
                tail.join(" | ")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on {} within {START_DEADLINE:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TigerVNC X server with no authentication, listening only on a unix socket.
pub struct Xvnc {
    // Field order: stop the process before removing its directory.
    process: Process,
    display: u32,
    socket: PathBuf,
    tcp_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Xvnc {
    /// Starts `Xvnc :N -geometry 800x600 -depth 24 -SecurityTypes None -rfbport -1
    /// -rfbunixpath <tmp>/vnc.sock -AlwaysShared` on a free display number and waits until the
    /// socket accepts connections.
    ///
    /// # Errors
    /// Xvnc is missing (install tigervnc-standalone-server) or never came up.
    pub fn start() -> anyhow::Result<Xvnc> {
        Xvnc::start_on(false)
    }

    /// Like [`Xvnc::start`], also listening for RFB on a free TCP port of 127.0.0.1
    /// ([`Xvnc::tcp_port`]).
    ///
    /// # Errors
    /// See [`Xvnc::start`].
    pub fn start_with_tcp() -> anyhow::Result<Xvnc> {
        Xvnc::start_on(true)
    }

    /// Like [`Xvnc::start`] without `-AlwaysShared`: each client's ClientInit decides, and
    /// a client asking for an exclusive screen disconnects the others (TigerVNC's default
    /// `-DisconnectClients`), as on a VM's own VNC server.
    ///
    /// # Errors
    /// See [`Xvnc::start`].
    pub fn start_sharing_on_request() -> anyhow::Result<Xvnc> {
        Xvnc::start_with(false, false)
    }

    fn start_on(tcp: bool) -> anyhow::Result<Xvnc> {
        Xvnc::start_with(tcp, true)
    }

    fn start_with(tcp: bool, always_shared: bool) -> anyhow::Result<Xvnc> {
        let dir = tempfile::Builder::new().prefix("labgate-xvnc").tempdir()?;
        let socket = dir.path().join("vnc.sock");
        let log = dir.path().join("xvnc.log");
        let mut last_error = None;
        for _attempt in 0..8 {
            let display = free_display();
            let tcp_port = if tcp { Some(free_port()?) } else { None };
            let rfbport = tcp_port.map_or("-1".to_string(), |p| p.to_string());
            let log_file = std::fs::File::create(&log)?;
            let mut process = Process::spawn(
                Command::new("Xvnc")
                    .arg(format!(":{display}"))
                    .args([
                        "-geometry",
                        "800x600",
                        "-depth",
                        "24",
                        "-SecurityTypes",
                        "None",
                    ])
                    .args([
                        "-localhost",
                        "-interface",
                        "127.0.0.1",
                        "-rfbport",
                        &rfbport,
                        "-nolisten",
                        "tcp",
                    ])
                    .arg("-rfbunixpath")
                    .arg(&socket)
                    .args(always_shared.then_some("-AlwaysShared"))
                    .args(["-desktop", "labgate-test"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log_file),
                "Xvnc",
                "tigervnc-standalone-server",
            )?;
            match wait_for_socket(&mut process, &socket, "Xvnc", Some(&log)) {
                Ok(()) => {
                    return Ok(Xvnc {
                        process,
                        display,
                        socket,
                        tcp_port,
                        _dir: dir,
                    });
                }
                // Most likely another server took the display between our check and its start.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    /// The RFB unix socket.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// The RFB TCP port on 127.0.0.1 (only after [`Xvnc::start_with_tcp`]).
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// The X display, e.g. `:123` (for `DISPLAY=` when drawing on the screen).
    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }

    /// The process id (to check it is still running).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A display number with neither an X socket nor a lock file.
fn free_display() -> u32 {
    loop {
        let n = rand::random_range(100..4000u32);
        let taken = Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            || Path::new(&format!("/tmp/.X{n}-lock")).exists();
        if !taken {
            return n;
        }
    }
}

/// A serial console stand-in: every connection to the socket gets its own `/bin/sh -i` on a real
/// PTY (echo, CRLF line endings), like a VM's serial line with a shell on it.
pub struct SerialConsole {
    process: Process,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SerialConsole {
    /// Starts `socat UNIX-LISTEN:<tmp>/console.sock,fork EXEC:"/bin/sh -i",pty,stderr,setsid,sane,ctty`.
    ///
    /// # Errors
    /// socat is missing (install socat) or never came up.
    pub fn start() -> anyhow::Result<SerialConsole> {
        let dir = tempfile::Builder::new()
            .prefix("labgate-console")
            .tempdir()?;
        let socket = dir.path().join("console.sock");
        let mut process = Process::spawn(
            Command::new("socat")
                .arg(format!(
                    "UNIX-LISTEN:{},fork,unlink-early",
                    socket.display()
                ))
                .arg("EXEC:/bin/sh -i,pty,stderr,setsid,sane,ctty")
                .env("PS1", "$ ")
                .env_remove("ENV")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "socat",
            "socat",
        )?;
        wait_for_socket(&mut process, &socket, "socat", None)?;
        Ok(SerialConsole {
            process,
            socket,
            _dir: dir,
        })
    }

    /// The console's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// The socat listener's process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }
}
