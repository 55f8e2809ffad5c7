//! The self-contained demo (`labgate-gateway --demo`): no cluster needed.
//!
//! One lab, `demo`, owned by `student@example.com`, with a VM `demo-vm` whose
//! serial console is simulated in-process (a line editor that echoes). The
//! HMAC secret is random per run; the demo prints a valid token and URLs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::backend::{Backend, ConnectFuture, UpstreamError, UpstreamIo, UpstreamTarget};
use crate::route::ConsoleKind;

/// The demo lab's namespace.
pub const DEMO_LAB: &str = "demo";
/// The demo lab's owner.
pub const DEMO_USER: &str = "student@example.com";
/// The demo VM.
pub const DEMO_VM: &str = "demo-vm";
/// The audience the demo gateway requires and its printed token carries.
pub const DEMO_AUDIENCE: &str = "labgate-demo";

/// Files the demo writes (secret, labs file) in a private temp directory
/// (random name, mode 0700, removed when this is dropped).
pub struct DemoFiles {
    /// The directory; kept so it lives as long as the gateway.
    pub dir: tempfile::TempDir,
    /// HMAC secret file.
    pub secret_file: PathBuf,
    /// Labs file with the demo lab.
    pub labs_file: PathBuf,
    /// The secret itself, for signing the printed token.
    pub secret: Vec<u8>,
}

/// Writes a random secret and the demo labs file.
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
    let labs_file = dir.path().join("labs.yaml");
    std::fs::write(
        &labs_file,
        format!("labs:\n  - namespace: {DEMO_LAB}\n    owner: {DEMO_USER}\n    members: []\n"),
    )?;
    Ok(DemoFiles {
        dir,
        secret_file,
        labs_file,
        secret,
    })
}

/// Creates `path` readable by its owner only (0600) and writes `bytes`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
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

/// A backend whose only VM is the demo VM with a simulated serial console.
pub struct DemoBackend;

impl Backend for DemoBackend {
    fn connect<'a>(&'a self, target: UpstreamTarget<'a>) -> ConnectFuture<'a> {
        Box::pin(async move {
            if target.vmi != DEMO_VM {
                return Err(UpstreamError::NotFound);
            }
            if target.kind == ConsoleKind::Vnc {
                // KubeVirt's own words for a VM without a graphics device.
                return Err(UpstreamError::NotRunning(
                    "No graphics devices are present.".into(),
                ));
            }
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            // The handshake is implicit: both ends start speaking frames.
            let console = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
            tokio::spawn(simulated_console(console));
            Ok(UpstreamIo::Memory(ours))
        })
    }
}

/// A tiny line-echo "serial console" speaking KubeVirt's framing (binary only).
async fn simulated_console(mut ws: WebSocketStream<tokio::io::DuplexStream>) {
    let banner = "labgate demo VM serial console\r\nType a line; it is echoed back.\r\n$ ";
    if ws
        .send(Message::Binary(Bytes::from_static(banner.as_bytes())))
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        // Like virt-handler: only binary messages reach the serial port.
        let Message::Binary(bytes) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let mut out = Vec::new();
        for b in bytes.iter().copied() {
            match b {
                b'\r' | b'\n' => {
                    out.extend_from_slice(b"\r\nyou typed: ");
                    out.extend_from_slice(&line);
                    out.extend_from_slice(b"\r\n$ ");
                    line.clear();
                }
                // Backspace / delete.
                0x08 | 0x7f => {
                    if line.pop().is_some() {
                        out.extend_from_slice(b"\x08 \x08");
                    }
                }
                _ => {
                    line.push(b);
                    out.push(b);
                }
            }
        }
        if ws.send(Message::Binary(out.into())).await.is_err() {
            break;
        }
    }
}

/// Prints how to try the demo.
pub fn print_instructions(addr: std::net::SocketAddr, token: &str) {
    let base = format!("http://{addr}/labs/{DEMO_LAB}/{DEMO_VM}/console");
    println!(
        "\nlabgate demo is running on http://{addr}\n\
         lab {DEMO_LAB:?} is owned by {DEMO_USER}; its VM {DEMO_VM:?} has a serial console.\n\n\
         A token for {DEMO_USER} (valid 8h):\n  {token}\n\n\
         Try:\n  \
         curl -i {base}/{token}        # 426: authorised, needs a websocket\n  \
         curl -i {base}/not-a-token    # 401 bad token\n  \
         curl -s http://{addr}/metrics | grep labgate_gateway_sessions_total\n\
         Open the console with any websocket client, e.g.\n  \
         websocat ws://{addr}/labs/{DEMO_LAB}/{DEMO_VM}/console/{token}\n\n\
         Press Ctrl-C to stop.\n"
    );
}

/// Shared pieces of the demo gateway.
pub fn backend() -> Arc<dyn Backend> {
    Arc::new(DemoBackend)
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
}
