//! The benchmark's stand-in for KubeVirt: serves the `vnc`/`console` subresource paths as
//! websockets (stream or echo mode, picked by the VMI name) and the same two modes over plain
//! TCP for websockify (the first byte picks the mode). Prints its addresses as one JSON line.
//!
//! With `--tls-cert-file` it plays the API server of the production path instead: the websocket
//! listener speaks TLS and issues session tickets the way a Go API server does (`crypto/tls`
//! sends one stateless TLS 1.3 ticket after every handshake), and with `--bearer-token-file`
//! it refuses upgrades without the service account's bearer token (401, like the API server).
//! `--stats-file` gets the count of full and resumed TLS handshakes, rewritten every 50 ms.
//! `--echo-ledger-file` gets, for every finished echo session, the byte count and CRC-32 of
//! what it received and sent (by VMI name), so the crowd scenario checks both ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use labgate_bench::ledger::{Ledger, SessionSums, Tally, write_ledger};
use labgate_bench::pattern::Pattern;
use labgate_bench::upstream_path::{Mode, RFB_GREETING, mode_for_path, vmi_for_path};
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const KUBEVIRT_PROTOCOL: &str = "plain.kubevirt.io";

#[derive(Parser)]
#[command(about = "KubeVirt-like websocket and TCP upstream for the labgate benchmarks")]
struct Args {
    /// Websocket listener (KubeVirt subresource paths).
    #[arg(long, default_value = "127.0.0.1:0")]
    ws_listen: SocketAddr,
    /// Plain TCP listener (first byte `S` = stream, `E` = echo), for websockify.
    #[arg(long, default_value = "127.0.0.1:0")]
    tcp_listen: SocketAddr,
    /// Size of each message (websocket) or write (TCP) in stream mode.
    #[arg(long, default_value_t = 64 * 1024)]
    stream_message_bytes: usize,
    /// Serve the websocket listener over TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key_file: Option<PathBuf>,
    /// Refuse websocket upgrades (401) unless `Authorization: Bearer <this file's contents>`.
    #[arg(long)]
    bearer_token_file: Option<PathBuf>,
    /// Where to keep `{"full": N, "resumed": M}`, the TLS handshakes so far.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Where to keep the byte count and CRC-32 of every finished echo session, both ways,
    /// by VMI name (rewritten at most every 200 ms while sessions end).
    #[arg(long)]
    echo_ledger_file: Option<PathBuf>,
}

/// The finished echo sessions and whether the file is behind.
#[derive(Default)]
struct EchoLedger {
    sessions: Mutex<Ledger>,
    dirty: AtomicBool,
}

impl EchoLedger {
    fn record(&self, vmi: &str, sums: SessionSums) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vmi.to_owned(), sums);
        self.dirty.store(true, Ordering::Release);
    }

    /// Rewrites the file whenever sessions ended since the last write.
    async fn keep_written(self: Arc<Self>, path: PathBuf) {
        loop {
            if self.dirty.swap(false, Ordering::AcqRel) {
                let snapshot = self
                    .sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Err(e) = write_ledger(&path, &snapshot) {
                    eprintln!("writing the echo ledger failed: {e:#}");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Full and resumed TLS handshakes on the websocket listener.
#[derive(Default)]
struct HandshakeCounts {
    full: AtomicU64,
    resumed: AtomicU64,
}

impl HandshakeCounts {
    fn json(&self) -> String {
        serde_json::json!({
            "full": self.full.load(Ordering::Relaxed),
            "resumed": self.resumed.load(Ordering::Relaxed),
        })
        .to_string()
    }
}

/// A TLS acceptor configured like a Go API server's: TLS 1.3 and 1.2, stateless tickets
/// (one per handshake in TLS 1.3), no server-side session cache, and the server's own
/// cipher-suite order, AES-128-GCM first (Go has chosen the order itself since 1.17, and
/// puts AES-128-GCM first where both ends have AES hardware, as every client here has).
fn go_like_acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .context("certificate PEM")?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())
        .context("key PEM")?
        .context("no private key in the key file")?;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = labgate_bench::client::browser_order(provider.cipher_suites);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.send_tls13_tickets = 1;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ws_listener = TcpListener::bind(args.ws_listen)
        .await
        .context("bind websocket listener")?;
    let tcp_listener = TcpListener::bind(args.tcp_listen)
        .await
        .context("bind TCP listener")?;
    println!(
        "{}",
        serde_json::json!({
            "ws_addr": ws_listener.local_addr()?.to_string(),
            "tcp_addr": tcp_listener.local_addr()?.to_string(),
        })
    );
    let pattern = Pattern::new(args.stream_message_bytes);
    let size = args.stream_message_bytes;
    let ws_pattern = pattern.clone();
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(go_like_acceptor(cert, key)?),
        _ => None,
    };
    let bearer: Option<Arc<str>> = match &args.bearer_token_file {
        Some(path) => Some(format!("Bearer {}", std::fs::read_to_string(path)?.trim()).into()),
        None => None,
    };
    let counts = Arc::new(HandshakeCounts::default());
    let ledger = match args.echo_ledger_file.clone() {
        Some(path) => {
            let ledger = Arc::new(EchoLedger::default());
            tokio::spawn(ledger.clone().keep_written(path));
            Some(ledger)
        }
        None => None,
    };
    if let Some(path) = args.stats_file.clone() {
        let counts = counts.clone();
        tokio::spawn(async move {
            // Written aside and renamed, so a reader never sees a half-written file.
            let partial = path.with_extension("partial");
            loop {
                if tokio::fs::write(&partial, counts.json()).await.is_ok() {
                    let _ = tokio::fs::rename(&partial, &path).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
    }
    tokio::spawn(async move {
        loop {
            match ws_listener.accept().await {
                Ok((sock, _)) => {
                    let (pattern, bearer) = (ws_pattern.clone(), bearer.clone());
                    let ledger = ledger.clone();
                    match &tls {
                        None => {
                            let _ = sock.set_nodelay(true);
                            tokio::spawn(serve_websocket(sock, pattern, size, bearer, ledger));
                        }
                        Some(tls) => {
                            let (tls, counts) = (tls.clone(), counts.clone());
                            tokio::spawn(async move {
                                let _ = sock.set_nodelay(true);
                                let Ok(stream) = tls.accept(sock).await else {
                                    return;
                                };
                                let kind = stream.get_ref().1.handshake_kind();
                                let counter = if kind == Some(HandshakeKind::Resumed) {
                                    &counts.resumed
                                } else {
                                    &counts.full
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                serve_websocket(stream, pattern, size, bearer, ledger).await;
                            });
                        }
                    }
                }
                Err(e) => accept_error(e).await,
            }
        }
    });
    loop {
        match tcp_listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(serve_tcp(sock, pattern.clone(), size));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Running out of file descriptors must not spin the accept loop.
async fn accept_error(e: std::io::Error) {
    eprintln!("accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

async fn serve_websocket<S>(
    sock: S,
    pattern: Pattern,
    size: usize,
    bearer: Option<Arc<str>>,
    ledger: Option<Arc<EchoLedger>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut mode = None;
    let mut vmi = None;
    // The callback's signature is tungstenite's; its large error type is not ours to box.
    #[allow(clippy::result_large_err)]
    let answer = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(expected) = &bearer {
            let given = req.headers().get(header::AUTHORIZATION);
            if given.is_none_or(|v| v.as_bytes() != expected.as_bytes()) {
                let mut refusal = ErrorResponse::new(Some("Unauthorized".into()));
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                return Err(refusal);
            }
        }
        let path = req.uri().to_string();
        mode = mode_for_path(&path);
        vmi = vmi_for_path(&path).map(str::to_owned);
        if mode.is_none() {
            let mut refusal = ErrorResponse::new(Some("no such virtual machine instance".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        // Like KubeVirt's upgrader: echo plain.kubevirt.io only when the client offered it.
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == KUBEVIRT_PROTOCOL);
        if offered {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(KUBEVIRT_PROTOCOL),
            );
        }
        Ok(resp)
    };
    // Small read buffers keep 10,000 idle echo sessions cheap on the load side of the bench.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(sock, answer, Some(config)).await
    else {
        return;
    };
    match mode {
        Some(Mode::Stream) => {
            let (mut sink, mut incoming) = ws.split();
            let send_forever = async {
                let mut offset = 0u64;
                loop {
                    sink.send(Message::Binary(pattern.chunk(offset, size)))
                        .await?;
                    offset += size as u64;
                }
                #[allow(unreachable_code)]
                Ok::<(), tokio_tungstenite::tungstenite::Error>(())
            };
            // Keep reading so pings are answered and a close is noticed.
            let read_until_closed = async {
                while let Some(Ok(msg)) = incoming.next().await {
                    if msg.is_close() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = send_forever => {}
                _ = read_until_closed => {}
            }
        }
        Some(mode @ (Mode::Echo | Mode::Greet)) => {
            let mut ws = ws;
            if mode == Mode::Greet
                && ws
                    .send(Message::Binary(Bytes::from_static(RFB_GREETING)))
                    .await
                    .is_err()
            {
                return;
            }
            // Tallied only when a ledger is kept, so other scenarios pay nothing for it.
            let (mut received, mut sent) = (Tally::default(), Tally::default());
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    // KubeVirt's binaryReader ignores text messages; so does this upstream.
                    Message::Binary(data) => {
                        if ledger.is_some() {
                            received.add(&data);
                        }
                        let echoed = ws.send(Message::Binary(data.clone())).await;
                        if echoed.is_err() {
                            break;
                        }
                        if ledger.is_some() {
                            sent.add(&data);
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            if let (Some(ledger), Some(vmi)) = (&ledger, &vmi) {
                let sums = SessionSums {
                    received: received.sum(),
                    sent: sent.sum(),
                };
                ledger.record(vmi, sums);
            }
        }
        None => {}
    }
}

async fn serve_tcp(mut sock: TcpStream, pattern: Pattern, size: usize) {
    let _ = sock.set_nodelay(true);
    let mut selector = [0u8; 1];
    if sock.read_exact(&mut selector).await.is_err() {
        return;
    }
    match Mode::from_tcp_selector(selector[0]) {
        Some(Mode::Stream) => {
            let mut offset = 0u64;
            loop {
                if sock.write_all(&pattern.chunk(offset, size)).await.is_err() {
                    return;
                }
                offset += size as u64;
            }
        }
        Some(mode @ (Mode::Echo | Mode::Greet)) => {
            if mode == Mode::Greet && sock.write_all(RFB_GREETING).await.is_err() {
                return;
            }
            let (mut reader, mut writer) = sock.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
        None => {}
    }
}
