//! Shared harness for the gateway end-to-end tests: a stand-in API server with
//! two labs, real Xvnc and PTY upstreams, and an in-process gateway over TLS.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use labgate_tests::standin::{StandIn, UpstreamAddr, Vmi};
use labgate_tests::upstreams::{SerialConsole, Xvnc};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Audience the harness configures and signs into tokens.
pub const AUDIENCE: &str = "labgate";
pub const ALICE: &str = "alice@example.com";
pub const BOB: &str = "bob@example.com";
pub const TUTOR: &str = "tutor@example.com";

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// What to start.
pub struct Options {
    /// Extra gateway flags.
    pub extra_args: Vec<String>,
    /// Bearer token the gateway uses towards the stand-in (default: its registered one).
    pub gateway_kube_token: Option<String>,
    /// Wait for /readyz before returning.
    pub wait_ready: bool,
    /// Start Xvnc and a PTY console for lab-alice/vm1.
    pub upstreams: bool,
    /// Identity the gateway authenticates as (default: the stand-in's gateway SA).
    pub kube_user: Option<labgate_tests::standin::UserInfo>,
    /// Start the gateway while the stand-in is not serving (an API server not up yet);
    /// `env.standin.resume_serving()` brings it up on the address the kubeconfig names.
    pub standin_down: bool,
    /// Serve plain HTTP (`--insecure-plain-http`) instead of TLS.
    pub plain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_args: vec![],
            gateway_kube_token: None,
            wait_ready: true,
            upstreams: true,
            kube_user: None,
            standin_down: false,
            plain: false,
        }
    }
}

/// A running test environment; everything stops on drop.
pub struct Env {
    pub standin: StandIn,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub secret: Vec<u8>,
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
    pub xvnc: Option<Xvnc>,
    pub console: Option<SerialConsole>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts the stand-in with labs `lab-alice` (owner alice, member tutor; VMs
/// `vm1` running with real upstreams, `stopped`, `headless` without a display)
/// and `lab-bob` (owner bob), then the gateway.
pub async fn start(options: Options) -> anyhow::Result<Env> {
    init_tracing();
    labgate_gateway::install_crypto_provider();
    let standin = StandIn::start().await?;
    standin.lab_namespace("lab-alice", ALICE, &[TUTOR]);
    standin.lab_namespace("lab-bob", BOB, &[]);
    let (xvnc, console) = if options.upstreams {
        let xvnc = Xvnc::start().context("starting Xvnc")?;
        let console = SerialConsole::start().context("starting the PTY console")?;
        standin.add_vmi(
            "lab-alice",
            "vm1",
            Vmi::running(
                Some(UpstreamAddr::Unix(xvnc.socket())),
                Some(UpstreamAddr::Unix(console.socket())),
            ),
        );
        standin.add_vmi(
            "lab-bob",
            "vm1",
            Vmi::running(
                Some(UpstreamAddr::Unix(xvnc.socket())),
                Some(UpstreamAddr::Unix(console.socket())),
            ),
        );
        standin.add_vmi(
            "lab-alice",
            "headless",
            Vmi::running(None, Some(UpstreamAddr::Unix(console.socket()))),
        );
        // Running but paused: KubeVirt answers 409 "VMI is paused".
        standin.add_vmi(
            "lab-alice",
            "paused",
            Vmi::running(
                Some(UpstreamAddr::Unix(xvnc.socket())),
                Some(UpstreamAddr::Unix(console.socket())),
            ),
        );
        standin.set_vmi_paused("lab-alice", "paused", true);
        (Some(xvnc), Some(console))
    } else {
        (None, None)
    };
    // Not running yet, and failed: both have a screen and a console, so the
    // stand-in answers with the phase checks (400 "VMI is not running",
    // 409 "VMI is in failed status" for the console), never dialing these.
    let never_dialed = || Some(UpstreamAddr::Unix("/nonexistent/labgate-test".into()));
    for (name, phase) in [("stopped", "Scheduled"), ("failed", "Failed")] {
        standin.add_vmi(
            "lab-alice",
            name,
            Vmi {
                phase: phase.into(),
                vnc: never_dialed(),
                console: never_dialed(),
            },
        );
    }

    let dir = tempfile::tempdir()?;
    let secret = b"labgate-test-secret-0123456789abcdef".to_vec();
    let secret_path = dir.path().join("hmac-secret");
    std::fs::write(&secret_path, &secret)?;
    let (cert_path, key_path) = standin
        .ca()
        .write_leaf(dir.path(), &["localhost", "127.0.0.1"]);
    if let Some(user) = &options.kube_user {
        standin.add_token("harness-custom-identity", user.clone());
    }
    let kube_token = match (&options.gateway_kube_token, &options.kube_user) {
        (Some(token), _) => token.clone(),
        (None, Some(_)) => "harness-custom-identity".to_string(),
        (None, None) => standin.gateway_token(),
    };
    let kubeconfig = standin.write_kubeconfig(dir.path(), &kube_token);

    let defaults: [(&str, &str); 11] = [
        ("--tls-cert-file", cert_path.to_str().unwrap()),
        ("--tls-key-file", key_path.to_str().unwrap()),
        ("--jwt-hmac-secret-file", secret_path.to_str().unwrap()),
        ("--jwt-audience", AUDIENCE),
        ("--jwt-leeway", "1s"),
        ("--kubeconfig", kubeconfig.to_str().unwrap()),
        ("--watch-timeout", "5s"),
        ("--reload-interval", "100ms"),
        ("--ping-interval", "5s"),
        ("--shutdown-grace", "2s"),
        ("--upstream-connect-timeout", "5s"),
    ];
    let mut args = vec!["labgate-gateway".to_string()];
    if options.plain {
        args.push("--insecure-plain-http".to_string());
    }
    // A test's own flags win over the harness defaults.
    for (flag, value) in defaults {
        let tls_flag = flag == "--tls-cert-file" || flag == "--tls-key-file";
        let skip = options.extra_args.iter().any(|a| a == flag) || (options.plain && tls_flag);
        if !skip {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
    }
    args.extend(options.extra_args.iter().cloned());
    if options.standin_down {
        standin.stop_serving().await;
    }
    let (addr, tx, task) = spawn_gateway(args).await?;
    let env = Env {
        standin,
        dir,
        addr,
        secret,
        cert_path,
        key_path,
        xvnc,
        console,
        shutdown: Some(tx),
        task,
    };
    if options.wait_ready {
        env.wait_ready(Duration::from_secs(15)).await?;
    }
    Ok(env)
}

/// Parses `args` as the gateway's command line and runs it in-process on a
/// free loopback port: its address, its shutdown trigger and its task.
async fn spawn_gateway(
    args: Vec<String>,
) -> anyhow::Result<(
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let config = <labgate_gateway::Config as clap::Parser>::try_parse_from(args)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(labgate_gateway::run_with_listener(
        config,
        listener,
        async {
            let _ = rx.await;
        },
    ));
    Ok((addr, tx, task))
}

impl Env {
    /// Signs `claims` with the gateway's HMAC secret.
    pub fn sign(&self, claims: Value) -> String {
        self.sign_with(claims, &self.secret, Algorithm::HS256)
    }

    pub fn sign_with(&self, claims: Value, secret: &[u8], alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    /// A valid 10-minute token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.sign(json!({"sub": user, "aud": AUDIENCE, "exp": now() + 600}))
    }

    /// Begins a graceful shutdown of the in-process gateway.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok((status, _)) = self.http("/readyz", &[]).await
                && status == 200
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("gateway not ready within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn tls_connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(self.standin.ca().client_config()));
        Ok(connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await?)
    }

    /// A plain HTTPS GET; returns status and body.
    pub async fn http(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let tls = self.tls_connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Opens a websocket to `path` (with optional subprotocols and headers).
    pub async fn ws(
        &self,
        path: &str,
        protocols: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, http::Response<Option<Vec<u8>>>), WsError> {
        let mut req =
            format!("wss://localhost:{}{path}", self.addr.port()).into_client_request()?;
        if let Some(p) = protocols {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let tls = self
            .tls_connect()
            .await
            .map_err(|e| WsError::Io(std::io::Error::other(e.to_string())))?;
        tokio_tungstenite::client_async(req, tls).await
    }

    /// Opens lab/vm/kind with `token` in the path.
    pub async fn open(&self, lab: &str, vm: &str, kind: &str, token: &str) -> Ws {
        self.ws(&format!("/labs/{lab}/{vm}/{kind}/{token}"), None, &[])
            .await
            .expect("websocket handshake")
            .0
    }
}

/// Reads until the server closes; returns its close frame.
pub async fn expect_close(ws: &mut Ws, within: Duration) -> Option<CloseFrame> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("no close frame in time")
}

/// Asserts the session is refused with `code`.
pub async fn assert_refused(ws: &mut Ws, code: u16) -> String {
    let frame = expect_close(ws, Duration::from_secs(5))
        .await
        .expect("close frame with a status");
    assert_eq!(u16::from(frame.code), code, "reason: {}", frame.reason);
    frame.reason.to_string()
}

/// A byte reader over the binary messages of a websocket.
pub struct ByteReader {
    buf: Vec<u8>,
}

impl ByteReader {
    pub fn new() -> Self {
        ByteReader { buf: Vec::new() }
    }

    pub async fn read_exact(&mut self, ws: &mut Ws, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("timed out waiting for upstream bytes")
            {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => panic!("gateway sent a text frame: {t}"),
                Some(Ok(Message::Close(f))) => panic!("closed early: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("websocket ended"),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads until `needle` appears in the accumulated text; returns the text.
    pub async fn read_until(&mut self, ws: &mut Ws, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if text.contains(needle) {
                return text;
            }
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => self.buf.extend_from_slice(&b),
                Ok(Some(Ok(_))) => {}
                Ok(other) => {
                    panic!("stream ended while waiting for {needle:?}: {other:?}; got {text:?}")
                }
                Err(_) => panic!("{needle:?} not seen within {within:?}; got {text:?}"),
            }
        }
    }
}

/// RFB 3.8 handshake with security type None; returns (width, height) and
/// the first framebuffer-update header after requesting a full update.
pub async fn rfb_handshake(ws: &mut Ws) -> (u16, u16) {
    let mut r = ByteReader::new();
    let version = r.read_exact(ws, 12).await;
    assert_eq!(&version, b"RFB 003.008\n", "server protocol version");
    ws.send(Message::Binary(Bytes::from_static(b"RFB 003.008\n")))
        .await
        .unwrap();
    let n = r.read_exact(ws, 1).await[0] as usize;
    assert!(n > 0, "server refused: no security types");
    let types = r.read_exact(ws, n).await;
    assert!(types.contains(&1), "security type None offered: {types:?}");
    ws.send(Message::Binary(Bytes::from_static(&[1])))
        .await
        .unwrap();
    assert_eq!(
        r.read_exact(ws, 4).await,
        vec![0, 0, 0, 0],
        "SecurityResult OK"
    );
    ws.send(Message::Binary(Bytes::from_static(&[1])))
        .await
        .unwrap(); // ClientInit, shared
    let init = r.read_exact(ws, 24).await;
    let width = u16::from_be_bytes([init[0], init[1]]);
    let height = u16::from_be_bytes([init[2], init[3]]);
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    r.read_exact(ws, name_len).await;
    // FramebufferUpdateRequest, non-incremental, whole screen.
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&width.to_be_bytes());
    req.extend_from_slice(&height.to_be_bytes());
    ws.send(Message::Binary(req.into())).await.unwrap();
    let header = r.read_exact(ws, 4).await;
    assert_eq!(header[0], 0, "first server message is a FramebufferUpdate");
    let rects = u16::from_be_bytes([header[2], header[3]]);
    assert!(rects >= 1, "framebuffer update carries rectangles");
    (width, height)
}

/// A second gateway process's worth of state in front of the same stand-in:
/// its own index, sessions and listener, as a second replica has.
pub struct Replica {
    pub env: Env,
}

impl Env {
    /// Starts another gateway (same flags, keys and stand-in) as a second
    /// replica. The upstreams stay owned by `self`.
    pub async fn replica(&self, extra_args: &[&str]) -> anyhow::Result<Replica> {
        let dir = tempfile::tempdir()?;
        let secret_path = dir.path().join("hmac-secret");
        std::fs::write(&secret_path, &self.secret)?;
        let (cert_path, key_path) = self
            .standin
            .ca()
            .write_leaf(dir.path(), &["localhost", "127.0.0.1"]);
        let kubeconfig = self
            .standin
            .write_kubeconfig(dir.path(), &self.standin.gateway_token());
        let mut args: Vec<String> = [
            "labgate-gateway",
            "--tls-cert-file",
            cert_path.to_str().unwrap(),
            "--tls-key-file",
            key_path.to_str().unwrap(),
            "--jwt-hmac-secret-file",
            secret_path.to_str().unwrap(),
            "--jwt-audience",
            AUDIENCE,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--watch-timeout",
            "5s",
            "--ping-interval",
            "5s",
            "--shutdown-grace",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (addr, tx, task) = spawn_gateway(args).await?;
        let env = Env {
            standin: self.standin.clone(),
            dir,
            addr,
            secret: self.secret.clone(),
            cert_path,
            key_path,
            xvnc: None,
            console: None,
            shutdown: Some(tx),
            task,
        };
        env.wait_ready(Duration::from_secs(15)).await?;
        Ok(Replica { env })
    }
}
