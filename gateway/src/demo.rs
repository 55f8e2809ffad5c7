//! The self-contained demo (`labgate-gateway --demo`): no cluster needed.
//!
//! The gateway runs with the static backend on one lab, `demo`, owned by
//! `student@example.com`, with two VMs: `desktop`, whose screen is a real
//! TigerVNC `Xvnc` desktop (a coloured background and an xterm to type into)
//! and whose serial console is a shell on a PTY, and `shell`, a console only.
//! Without Xvnc the demo says how to install it and offers the consoles only.
//! The HMAC secret is random per run; the demo prints the viewer URL with a
//! token in its fragment, and the secret file's path for minting more (the
//! browser test mints an expired one). Every process it starts is stopped
//! when the gateway stops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use tokio::process::{Child, Command};

/// The demo lab's namespace.
pub const DEMO_LAB: &str = "demo";
/// The demo lab's owner.
pub const DEMO_USER: &str = "student@example.com";
/// The demo VM with a screen and a console.
pub const DEMO_DESKTOP: &str = "desktop";
/// The demo VM with a console only.
pub const DEMO_SHELL: &str = "shell";
/// The audience the demo gateway requires and its printed token carries.
pub const DEMO_AUDIENCE: &str = "labgate-demo";
/// The desktop's background colour (`xsetroot -solid`): RGB 51, 102, 153.
pub const DEMO_BACKGROUND: &str = "#336699";
/// Debian/Ubuntu packages the desktop needs.
pub const DESKTOP_PACKAGES: &str = "tigervnc-standalone-server xauth xterm x11-xserver-utils";

/// Files the demo writes (secret, targets file, the desktop's sockets) in a
/// private temp directory (random name, mode 0700, removed when dropped).
pub struct DemoFiles {
    /// The directory; kept so it lives as long as the gateway.
    pub dir: tempfile::TempDir,
    /// HMAC secret file.
    pub secret_file: PathBuf,
    /// Static targets file with the demo lab (written by [`write_targets`]).
    pub targets_file: PathBuf,
    /// The secret itself, for signing the printed token.
    pub secret: Vec<u8>,
}

/// Writes a random secret into a new private directory.
///
/// # Errors
/// When the temp directory cannot be written.
pub fn write_files() -> std::io::Result<DemoFiles> {
    // A predictable name would let another local user create it first and
    // read or replace the secret: tempfile picks a random name, mode 0700.
    let dir = tempfile::Builder::new().prefix("labgate-demo-").tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    let secret: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    let secret_file = dir.path().join("hmac-secret");
    write_private(&secret_file, &secret)?;
    let targets_file = dir.path().join("targets.yaml");
    Ok(DemoFiles {
        dir,
        secret_file,
        targets_file,
        secret,
    })
}

/// Writes the demo lab's targets: `desktop` (screen at `screen` if there is
/// one, console a shell) and `shell` (console a shell).
///
/// # Errors
/// When the file cannot be written.
pub fn write_targets(files: &DemoFiles, screen: Option<&Path>) -> std::io::Result<()> {
    let shell = shell_command().join(" ");
    let screen = screen
        .map(|p| format!("        screen: unix:{}\n", p.display()))
        .unwrap_or_default();
    let yaml = format!(
        "labs:\n  - name: {DEMO_LAB}\n    owner: {DEMO_USER}\n    vms:\n      \
         - name: {DEMO_DESKTOP}\n{screen}        console: pty:{shell}\n      \
         - name: {DEMO_SHELL}\n        console: pty:{shell}\n"
    );
    std::fs::write(&files.targets_file, yaml)
}

/// The demo's shell (the consoles' and the xterm's): bash if there is one,
/// else sh, reading no start-up files. The user's `~/.bashrc` is no part of
/// the demo and may be slow or stateful (pyenv's `init` takes a lock file
/// that a shell hung up mid-way leaves behind, and every later interactive
/// bash then waits 60 s for it); sessions end shells at any moment.
pub fn shell_command() -> Vec<&'static str> {
    if Path::new("/bin/bash").exists() {
        vec!["/bin/bash", "--noprofile", "--norc"]
    } else {
        // An interactive sh reads only the file named by $ENV.
        vec!["/bin/sh"]
    }
}

/// Creates `path` readable by its owner only (0600) and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// A token for the demo user, valid for `ttl`.
pub fn token(secret: &[u8], ttl: Duration) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl.as_secs();
    let claims = serde_json::json!({ "sub": DEMO_USER, "aud": DEMO_AUDIENCE, "exp": exp });
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// The demo desktop's processes: Xvnc and the xterm on it. Stopped with
/// [`Desktop::stop`] (SIGTERM, so Xvnc removes its lock file and socket),
/// and killed if dropped without it.
pub struct Desktop {
    /// The RFB unix socket.
    pub socket: PathBuf,
    /// The X display, e.g. `:123`.
    pub display: String,
    /// Started processes, last started first to stop.
    children: Vec<(&'static str, Child)>,
}

impl Desktop {
    /// Stops every process: SIGTERM, then SIGKILL after two seconds.
    pub async fn stop(mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if let Some(pid) = child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(process = name, "did not stop on SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts the demo desktop in `dir`: Xvnc (RFB only on a unix socket, X only
/// to holders of a random cookie), the background colour and an xterm.
/// `Ok(None)` when Xvnc is not installed (the caller says how to get it).
///
/// # Errors
/// Xvnc is installed but does not come up.
pub async fn start_desktop(dir: &Path) -> anyhow::Result<Option<Desktop>> {
    if !on_path("Xvnc") {
        return Ok(None);
    }
    let socket = dir.join("vnc.sock");
    let xauthority = dir.join("Xauthority");
    let log = dir.join("xvnc.log");
    let mut last_error = None;
    for _attempt in 0..5 {
        let n = free_display();
        let display = format!(":{n}");
        // Without a cookie any local user could type into the desktop's shell.
        let cookie: String = (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let status = Command::new("xauth")
            .arg("-q")
            .arg("-f")
            .arg(&xauthority)
            .args(["add", &display, ".", &cookie])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !status.is_ok_and(|s| s.success()) {
            anyhow::bail!("xauth failed or is missing: install the package xauth");
        }
        let xvnc = Command::new("Xvnc")
            .arg(&display)
            .args(["-geometry", "1024x768", "-depth", "24"])
            .args([
                "-SecurityTypes",
                "None",
                "-rfbport",
                "-1",
                "-nolisten",
                "tcp",
            ])
            .arg("-rfbunixpath")
            .arg(&socket)
            .args(["-rfbunixmode", "0600", "-desktop", "labgate demo"])
            .arg("-auth")
            .arg(&xauthority)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let mut desktop = Desktop {
            socket: socket.clone(),
            display: display.clone(),
            children: vec![("Xvnc", xvnc)],
        };
        match wait_for_socket(&mut desktop.children[0].1, &socket).await {
            Ok(()) => {
                decorate(&mut desktop, &xauthority).await;
                return Ok(Some(desktop));
            }
            Err(e) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                last_error = Some(anyhow::anyhow!("{e}: {}", tail.join(" | ")));
                desktop.stop().await;
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("Xvnc did not start")))
}

/// Paints the background and opens an xterm (each optional: the desktop
/// works without them, so a missing one is only a warning).
async fn decorate(desktop: &mut Desktop, xauthority: &Path) {
    let x = |program: &str| {
        let mut c = Command::new(program);
        c.env("DISPLAY", &desktop.display)
            .env("XAUTHORITY", xauthority)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    };
    match x("xsetroot")
        .args(["-solid", DEMO_BACKGROUND])
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        _ => tracing::warn!(
            "xsetroot failed or is missing (package x11-xserver-utils): the background stays black"
        ),
    }
    match x("xterm")
        .args(["-geometry", "90x30+40+40", "-T", "labgate demo desktop"])
        .arg("-e")
        .args(shell_command())
        .env_remove("ENV")
        .spawn()
    {
        Ok(child) => desktop.children.push(("xterm", child)),
        Err(e) => {
            tracing::warn!(error = %e, "xterm not started (package xterm): the desktop has no window")
        }
    }
}

async fn wait_for_socket(xvnc: &mut Child, socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = xvnc.try_wait() {
            anyhow::bail!("Xvnc exited ({status})");
        }
        if Instant::now() > deadline {
            anyhow::bail!("Xvnc did not listen on {} within 10s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// An X display number with neither a socket nor a lock file.
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

/// Says the desktop is missing and how to get it.
pub fn print_no_desktop() {
    println!(
        "Xvnc (TigerVNC) is not installed, so the demo has no desktop, only the shells.\n\
         For the desktop: sudo apt-get install {DESKTOP_PACKAGES}\n\
         (or run: bash scripts/demo.sh, which installs them and starts the demo)\n"
    );
}

/// Prints how to try the demo (see [`instructions`]).
pub fn print_instructions(
    addr: std::net::SocketAddr,
    token: &str,
    secret_file: &Path,
    desktop: bool,
    ready_in: Duration,
) {
    let text = instructions(addr, token, secret_file, desktop, ready_in);
    if crate::viewer::is_built() {
        println!("{text}");
    } else {
        println!(
            "{text}\nThis labgate-gateway was built without the viewer page, so the viewer URL\n\
             only says so: run `bash scripts/build-viewer.sh`, then build again\n\
             (bash scripts/demo.sh does both).\n"
        );
    }
}

/// How to try the demo. The token goes into the viewer URL's fragment (never
/// sent to a server) or an `Authorization` header, never into a URL path or
/// query, where access logs and proxies would keep it.
pub fn instructions(
    addr: std::net::SocketAddr,
    token: &str,
    secret_file: &Path,
    desktop: bool,
    ready_in: Duration,
) -> String {
    let screen = if desktop {
        format!("a real desktop (Xvnc, background {DEMO_BACKGROUND}, an xterm) and a shell console")
    } else {
        "a shell console (no screen: Xvnc is not installed)".to_string()
    };
    // The path this binary was started from, so the line works without an install.
    let binary = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "labgate-gateway".to_string());
    format!(
        "\nlabgate demo is running on http://{addr} (ready {} ms after start)\n\
         lab {DEMO_LAB:?}, owned by {DEMO_USER}, has two VMs:\n  \
         {DEMO_DESKTOP}: {screen}\n  \
         {DEMO_SHELL}: a shell console\n\n\
         Open the viewer in a browser (the token, valid 8h, is in the part after #, which\n\
         the browser keeps to itself):\n  \
         http://{addr}/view/{DEMO_LAB}#token={token}\n\n\
         From a terminal, with the token in the Authorization header:\n  \
         curl -H 'Authorization: Bearer {token}' http://{addr}/labs/{DEMO_LAB}\n  \
         websocat -b -H 'Authorization: Bearer {token}' ws://{addr}/labs/{DEMO_LAB}/{DEMO_SHELL}/console\n\
         More tokens, signed with this run's secret (deleted when the demo stops):\n  \
         {binary} token --hmac-secret-file {} --audience {DEMO_AUDIENCE} --user {DEMO_USER} --ttl 1h\n\n\
         Press Ctrl-C to stop (the desktop and shells stop with it).\n",
        ready_in.as_millis(),
        secret_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_secret_is_private_and_its_directory_unpredictable() {
        let a = write_files().unwrap();
        let b = write_files().unwrap();
        assert_ne!(a.dir.path(), b.dir.path(), "two runs share a directory");
        assert!(
            !a.dir
                .path()
                .to_string_lossy()
                .contains(&std::process::id().to_string()),
            "directory named after the process id"
        );
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.secret_file), 0o600);
        assert_eq!(mode(a.dir.path()), 0o700);
        assert_eq!(std::fs::read(&a.secret_file).unwrap(), a.secret);
    }

    #[test]
    fn the_printed_token_is_only_in_the_viewer_fragment_or_a_header() {
        let files = write_files().unwrap();
        let token = token(&files.secret, Duration::from_secs(60));
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let text = instructions(addr, &token, &files.secret_file, true, Duration::ZERO);
        let viewer = format!("http://{addr}/view/{DEMO_LAB}#token={token}");
        assert!(
            text.lines().any(|l| l.trim() == viewer),
            "no viewer URL line in {text}"
        );
        let header = format!("'Authorization: Bearer {token}'");
        for line in text.lines().filter(|l| l.contains(&token)) {
            // Every URL on the line: the token may follow only the viewer's `#token=`.
            for url in line.split_whitespace().filter(|w| w.contains("://")) {
                let before_fragment = url.split('#').next().unwrap();
                assert!(!before_fragment.contains(&token), "token in a URL: {line}");
            }
            assert!(
                line.trim() == viewer || line.contains(&header),
                "the token outside the fragment or a header: {line}"
            );
        }
        assert!(text.contains(&files.secret_file.display().to_string()));
    }

    #[test]
    fn the_demo_targets_parse_with_and_without_a_screen() {
        let files = write_files().unwrap();
        for screen in [Some(Path::new("/tmp/x.sock")), None] {
            write_targets(&files, screen).unwrap();
            let t = crate::backend::targets_file::load(&files.targets_file).unwrap();
            let desktop = t.vm(DEMO_LAB, DEMO_DESKTOP).unwrap();
            assert_eq!(desktop.screen.is_some(), screen.is_some());
            assert!(desktop.console.is_some());
            assert!(t.vm(DEMO_LAB, DEMO_SHELL).unwrap().screen.is_none());
        }
    }
}
