//! The contenders: how each one is configured, started (pinned to the proxy core), found
//! ready and stopped. All of them relay to the same kind of upstream on loopback.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

use crate::procfs::process_tree;

/// The core every proxy runs on.
pub const PROXY_CORE: &str = "1";
/// The core the load generator and the upstream share.
pub const LOAD_CORE: &str = "0";

/// The KubeVirt subresource path every websocket proxy forwards to, as a URL path template.
pub const KUBEVIRT_PATH: &str =
    "/apis/subresources.kubevirt.io/v1/namespaces/lab-1/virtualmachineinstances/{vmi}/{sub}";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// No proxy: the load generator talks to the upstream (the physical limit).
    Direct,
    /// labgate-gateway with a static lab index and a per-connection token check.
    Labgate,
    /// nginx websocket reverse proxy, with default or tuned relay buffers.
    Nginx { tuned: bool },
    /// websockify (PyPI), websocket to plain TCP.
    Websockify,
    /// The asyncio relay in the style of the Lab Orchestrator prototype.
    PythonRelay,
}

/// One contender of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Contender {
    pub name: &'static str,
    pub kind: Kind,
    pub tls: bool,
    /// The production path: the upstream is the API-server stand-in over HTTPS, checking
    /// the service account's bearer token (the proxy adds it; `direct` sends it itself).
    pub upstream_tls: bool,
    pub description: &'static str,
}

/// Every contender, in report order.
pub fn roster() -> Vec<Contender> {
    let c = |name, kind, tls, description| Contender {
        name,
        kind,
        tls,
        upstream_tls: false,
        description,
    };
    let prod = |name, kind, description| Contender {
        name,
        kind,
        tls: true,
        upstream_tls: true,
        description,
    };
    vec![
        prod(
            "direct-prod",
            Kind::Direct,
            "no proxy: wss straight to the HTTPS API-server stand-in, bearer header sent by the client",
        ),
        prod(
            "labgate-prod",
            Kind::Labgate,
            "labgate-gateway, wss listener, upstream https with the service-account token, CA verified",
        ),
        prod(
            "nginx-prod",
            Kind::Nginx { tuned: true },
            "nginx, TLS listener, proxy_pass https:// with the bearer header, CA verified, upstream session reuse, 64k buffers",
        ),
        c(
            "direct",
            Kind::Direct,
            false,
            "no proxy, load generator to upstream",
        ),
        c(
            "labgate",
            Kind::Labgate,
            false,
            "labgate-gateway, plain ws, JWT check + lab index lookup per connection",
        ),
        c(
            "labgate-tls",
            Kind::Labgate,
            true,
            "labgate-gateway, TLS (rustls), JWT check + lab index lookup",
        ),
        c(
            "nginx-default",
            Kind::Nginx { tuned: false },
            false,
            "nginx websocket proxy, default 4 KiB proxy_buffer_size",
        ),
        c(
            "nginx-default-tls",
            Kind::Nginx { tuned: false },
            true,
            "nginx, TLS, default buffers",
        ),
        c(
            "nginx-tuned",
            Kind::Nginx { tuned: true },
            false,
            "nginx, proxy_buffer_size 64k + related buffer lines",
        ),
        c(
            "nginx-tuned-tls",
            Kind::Nginx { tuned: true },
            true,
            "nginx, TLS, tuned buffers",
        ),
        c(
            "websockify",
            Kind::Websockify,
            false,
            "websockify (default fork-per-connection server), ws to TCP",
        ),
        c(
            "python-relay",
            Kind::PythonRelay,
            false,
            "prototype-style asyncio relay (websockets 10, PyJWT per connection)",
        ),
    ]
}

/// Files and tools shared by all contenders in one run.
pub struct Setup {
    pub bin_dir: PathBuf,
    /// The labgate-gateway binary under test.
    pub labgate_bin: PathBuf,
    pub venv: PathBuf,
    pub bench_dir: PathBuf,
    pub work: PathBuf,
    pub secret_file: PathBuf,
    pub kube_token_file: PathBuf,
    pub labs_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// Session limit passed to proxies that have one (above the idle scenario's count).
    pub max_sessions: usize,
}

/// The upstream's two listeners.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamAddrs {
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    /// The websocket listener speaks TLS and checks the bearer token (production path).
    pub tls: bool,
}

/// A started process that is stopped (with its whole process tree) when dropped.
pub struct Process {
    child: Child,
    pub pid: u32,
}

impl Process {
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stderr(log_file.try_clone()?).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("start {:?}", cmd.get_program()))?;
        Ok(Self {
            pid: child.id(),
            child,
        })
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM to the process tree, then SIGKILL to whatever is left after 3 s.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if self.exited() {
            return;
        }
        let tree = process_tree(self.pid);
        signal(&tree, "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !self.exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<u32> = tree
            .into_iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if !left.is_empty() {
            signal(&left, "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn signal(pids: &[u32], sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `program` run under `taskset -c core`.
pub fn pinned(core: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core).arg(program);
    cmd
}

/// Starts `cmd` with stdout piped and returns it with its first stdout line.
fn spawn_reading_line(
    mut cmd: Command,
    log: &Path,
    wait: Duration,
) -> anyhow::Result<(Process, String)> {
    cmd.stdout(Stdio::piped());
    let mut process = Process::spawn(cmd, log)?;
    let stdout = process
        .child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(wait) {
        Ok(line) if !line.trim().is_empty() => Ok((process, line)),
        _ => bail!(
            "{} did not report its address; see {}",
            process.pid,
            log.display()
        ),
    }
}

/// A free loopback port (bound by the OS, then released for the contender to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(process: &mut Process, port: u16, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if process.exited() {
            bail!("exited during start; see {}", log.display());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!(
        "not listening on port {port} after 20 s; see {}",
        log.display()
    )
}

/// Where a TLS upstream keeps its handshake counts.
pub fn upstream_stats_file(setup: &Setup) -> PathBuf {
    setup.work.join("upstream-tls-stats.json")
}

/// Where the upstream keeps the byte counts and CRCs of its echo sessions (crowd scenario).
pub fn upstream_ledger_file(setup: &Setup) -> PathBuf {
    setup.work.join("upstream-echo-ledger.json")
}

/// Starts the upstream on the load core; with `tls`, as the HTTPS API-server stand-in; with
/// `ledger`, keeping the checksums of every echo session in that file (a fresh one).
pub fn start_upstream(
    setup: &Setup,
    tls: bool,
    ledger: Option<&Path>,
) -> anyhow::Result<(Process, UpstreamAddrs)> {
    let mut cmd = pinned(LOAD_CORE, setup.bin_dir.join("bench-upstream"));
    if tls {
        cmd.arg("--tls-cert-file").arg(&setup.cert_file);
        cmd.arg("--tls-key-file").arg(&setup.key_file);
        cmd.arg("--bearer-token-file").arg(&setup.kube_token_file);
        cmd.arg("--stats-file").arg(upstream_stats_file(setup));
    }
    if let Some(file) = ledger {
        // The previous contender's upstream wrote one too.
        let _ = std::fs::remove_file(file);
        cmd.arg("--echo-ledger-file").arg(file);
    }
    let (process, line) = spawn_reading_line(
        cmd,
        &setup.work.join("upstream.log"),
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).context("upstream address line")?;
    let addr = |k: &str| -> anyhow::Result<SocketAddr> {
        v[k].as_str()
            .ok_or_else(|| anyhow!("no {k}"))?
            .parse()
            .context("bad address")
    };
    let addrs = UpstreamAddrs {
        ws: addr("ws_addr")?,
        tcp: addr("tcp_addr")?,
        tls,
    };
    Ok((process, addrs))
}

/// How the load generator reaches a running contender.
pub struct Running {
    pub process: Option<Process>,
    pub url: String,
    pub tls: bool,
    pub needs_token: bool,
    pub tcp_mode_selector: bool,
    /// The client itself must send the upstream's bearer token (direct to the stand-in).
    pub sends_bearer: bool,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }
}

impl Contender {
    /// Why this contender cannot run here, if it cannot.
    pub fn unavailable(&self, setup: &Setup) -> Option<String> {
        let missing = |p: PathBuf| (!p.exists()).then(|| format!("{} not found", p.display()));
        match self.kind {
            Kind::Direct => None,
            Kind::Labgate => missing(setup.labgate_bin.clone()),
            Kind::Nginx { .. } => match Command::new("nginx")
                .arg("-v")
                .stderr(Stdio::null())
                .status()
            {
                Ok(s) if s.success() => None,
                _ => Some("nginx not installed".into()),
            },
            Kind::Websockify => missing(setup.venv.join("bin/websockify")),
            Kind::PythonRelay => {
                let ok = Command::new(setup.venv.join("bin/python"))
                    .args(["-c", "import websockets, jwt"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                (!ok).then(|| "python venv with websockets and PyJWT not found".into())
            }
        }
    }

    /// Starts the contender on the proxy core, relaying to `up`, and waits until it listens.
    pub fn start(&self, setup: &Setup, up: UpstreamAddrs) -> anyhow::Result<Running> {
        let log = setup.work.join(format!("{}.log", self.name));
        let scheme = if self.tls { "wss" } else { "ws" };
        let up_scheme = if up.tls { "https" } else { "http" };
        match self.kind {
            Kind::Direct => Ok(Running {
                process: None,
                url: format!(
                    "{}://{}{KUBEVIRT_PATH}",
                    if up.tls { "wss" } else { "ws" },
                    up.ws
                ),
                tls: up.tls,
                needs_token: false,
                tcp_mode_selector: false,
                sends_bearer: up.tls,
            }),
            Kind::Labgate => {
                let port = free_port()?;
                let mut cmd = pinned(PROXY_CORE, &setup.labgate_bin);
                cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
                if self.tls {
                    cmd.arg("--tls-cert-file").arg(&setup.cert_file);
                    cmd.arg("--tls-key-file").arg(&setup.key_file);
                } else {
                    cmd.arg("--insecure-plain-http");
                }
                cmd.arg("--labs-file").arg(&setup.labs_file);
                cmd.arg("--kube-api-url")
                    .arg(format!("{up_scheme}://{}", up.ws));
                if up.tls {
                    cmd.arg("--kube-ca-file").arg(&setup.ca_file);
                }
                cmd.arg("--kube-token-file").arg(&setup.kube_token_file);
                cmd.arg("--jwt-hmac-secret-file").arg(&setup.secret_file);
                cmd.args(["--jwt-algorithms", "HS256"]);
                // The bench's tokens are shared with the other contenders and
                // carry no `aud`; its secret signs for nothing else.
                cmd.arg("--jwt-allow-any-audience");
                cmd.arg("--max-sessions")
                    .arg(setup.max_sessions.to_string());
                cmd.arg("--max-sessions-per-user")
                    .arg(setup.max_sessions.to_string());
                // All the load comes from one address, in bursts of handshakes:
                // the caps on connections not yet authorised would cut it.
                cmd.args(["--max-preauth-connections-per-address", "0"]);
                cmd.arg("--max-preauth-connections")
                    .arg(setup.max_sessions.max(1024).to_string());
                cmd.stdout(std::fs::File::create(
                    setup.work.join(format!("{}.stdout", self.name)),
                )?);
                let mut process = Process::spawn(cmd, &log)?;
                wait_for_port(&mut process, port, &log)
                    .with_context(|| format!("{} did not start", self.name))?;
                Ok(Running {
                    process: Some(process),
                    url: format!(
                        "{scheme}://127.0.0.1:{port}/labs/lab-1/{{vmi}}/{{sub}}/{{token}}"
                    ),
                    tls: self.tls,
                    needs_token: true,
                    tcp_mode_selector: false,
                    sends_bearer: false,
                })
            }
            Kind::Nginx { tuned } => {
                let port = free_port()?;
                let dir = setup.work.join(self.name);
                std::fs::create_dir_all(&dir)?;
                let conf = dir.join("nginx.conf");
                std::fs::write(
                    &conf,
                    nginx_config(
                        &dir,
                        port,
                        up.ws,
                        tuned,
                        self.tls.then_some(setup),
                        up.tls.then_some(setup),
                        setup.max_sessions,
                    ),
                )?;
                let mut cmd = pinned(PROXY_CORE, "nginx");
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(dir.join("error.log"));
                cmd.stdout(Stdio::null());
                let mut process = Process::spawn(cmd, &log)?;
                wait_for_port(&mut process, port, &log)
                    .with_context(|| format!("{} did not start", self.name))?;
                Ok(Running {
                    process: Some(process),
                    url: format!("{scheme}://127.0.0.1:{port}{KUBEVIRT_PATH}"),
                    tls: self.tls,
                    needs_token: false,
                    tcp_mode_selector: false,
                    sends_bearer: false,
                })
            }
            Kind::Websockify => {
                let port = free_port()?;
                let mut cmd = pinned(PROXY_CORE, setup.venv.join("bin/websockify"));
                cmd.arg(format!("127.0.0.1:{port}")).arg(up.tcp.to_string());
                cmd.stdout(std::fs::File::create(setup.work.join("websockify.stdout"))?);
                let mut process = Process::spawn(cmd, &log)?;
                wait_for_port(&mut process, port, &log).context("websockify did not start")?;
                Ok(Running {
                    process: Some(process),
                    url: format!("ws://127.0.0.1:{port}/"),
                    tls: false,
                    needs_token: false,
                    tcp_mode_selector: true,
                    sends_bearer: false,
                })
            }
            Kind::PythonRelay => {
                let mut cmd = pinned(PROXY_CORE, setup.venv.join("bin/python"));
                cmd.arg("-u")
                    .arg(setup.bench_dir.join("contenders/python_relay.py"));
                cmd.arg("--secret-file").arg(&setup.secret_file);
                cmd.arg("--remote-url").arg(format!("ws://{}", up.ws));
                cmd.arg("--token-file").arg(&setup.kube_token_file);
                let (process, line) = spawn_reading_line(cmd, &log, Duration::from_secs(20))?;
                let v: serde_json::Value =
                    serde_json::from_str(line.trim()).context("python relay port line")?;
                let port = v["port"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("python relay printed no port"))?;
                Ok(Running {
                    process: Some(process),
                    url: format!("ws://127.0.0.1:{port}/{{token}}/{{vmi}}"),
                    tls: false,
                    needs_token: true,
                    tcp_mode_selector: false,
                    sends_bearer: false,
                })
            }
        }
    }
}

/// One worker process (one core), websocket upgrade headers, and either nginx's default relay
/// buffer (4 KiB on this platform) or 64 KiB with the buffer lines that must grow with it.
fn nginx_config(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    tuned: bool,
    tls: Option<&Setup>,
    upstream_tls: Option<&Setup>,
    max_sessions: usize,
) -> String {
    let d = dir.display();
    let listen = match tls {
        Some(s) => format!(
            "listen 127.0.0.1:{port} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};",
            s.cert_file.display(),
            s.key_file.display()
        ),
        None => format!("listen 127.0.0.1:{port};"),
    };
    let buffers = if tuned {
        "proxy_buffer_size 64k;\n            proxy_buffers 8 64k;\n            proxy_busy_buffers_size 128k;"
    } else {
        "# nginx defaults: proxy_buffer_size 4k (one page), proxy_buffers 8 4k"
    };
    // The production path: HTTPS to the API server with the service account's token, the
    // upstream certificate verified against the cluster CA, TLS sessions reused.
    let (up_scheme, upstream_lines) = match upstream_tls {
        Some(s) => {
            let token = std::fs::read_to_string(&s.kube_token_file).unwrap_or_default();
            (
                "https",
                format!(
                    "proxy_set_header Authorization \"Bearer {}\";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {};
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;",
                    token.trim(),
                    s.ca_file.display()
                ),
            )
        }
        None => ("http", String::new()),
    };
    // Every proxied session holds two connections, and nginx counts a little more than two per
    // upgraded session (it ran out at 9,334 sessions with 19,900): give it all the open-files limit allows.
    let limit = crate::procfs::open_files_hard_limit().unwrap_or(65536) as usize;
    let connections = (4 * max_sessions + 1000).min(limit);
    format!(
        "daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {connections};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        {listen}
        location / {{
            proxy_pass {up_scheme}://{upstream};
            {upstream_lines}
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            {buffers}
        }}
    }}
}}
"
    )
}
