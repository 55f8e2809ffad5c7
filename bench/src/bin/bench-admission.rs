//! Load on the admission webhook: a fixed open-loop rate of AdmissionReviews over a few
//! keep-alive TLS connections, against `labgate-admission` (the library's `start`, the
//! same code the binary runs) backed by the tests' Kubernetes stand-in.
//!
//! The service runs on its own tokio runtime whose threads are named `admission`, so
//! its CPU time is read from /proc/self/task/*/stat without counting this load
//! generator or the stand-in. Two latencies are printed: request to answer, and from
//! each request's *scheduled* send time (a stalled connection shows up there: no
//! coordinated omission; it also carries tokio's 1 ms timer granularity).
//!
//! `cargo run --release -p labgate-bench --bin bench-admission -- --rate 1000 --seconds 60`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use labgate_admission::ClusterView;
use labgate_admission::decide::PolicyState;
use labgate_tests::certs::TestCa;
use labgate_tests::standin::{StandIn, UserInfo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PORTAL_USER: &str = "system:serviceaccount:portal:portal";
const ADMISSION_TOKEN: &str = "admission-token";
/// The lab the fixtures are written for (`lab-alice`, owned by alice).
const LAB: &str = "lab-alice";
const OWNER: &str = "alice@example.com";
/// Linux reports /proc CPU times in USER_HZ ticks (100 on every architecture we run on).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Parser)]
#[command(about = "Open-loop load on the admission webhook")]
struct Args {
    /// Reviews per second, all connections together.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the measured run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Keep-alive TLS connections the rate is spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Worker threads of the admission service's runtime.
    #[arg(long, default_value_t = 1)]
    service_threads: usize,
}

fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../admission/tests/fixtures")
        .join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The mix: (label, body). Pod create in a lab holding its policy (allowed), a student
/// updating the lab's NetworkPolicy (denied), a student stripping the lab label from the
/// namespace (denied), and a VMI create in the lab (allowed).
fn reviews() -> anyhow::Result<Vec<(&'static str, Bytes)>> {
    let mut pod = fixture("pod-create-in-lab-without-policy.json")?;
    pod["request"]["namespace"] = json!(LAB);
    pod["request"]["object"]["metadata"]["namespace"] = json!(LAB);
    let mut netpol = fixture("networkpolicy-delete-by-student.json")?;
    let old = netpol["request"]["oldObject"].clone();
    let mut new = old.clone();
    new["spec"]["egress"] = json!([{}]);
    netpol["request"]["operation"] = json!("UPDATE");
    netpol["request"]["object"] = new;
    netpol["request"]["oldObject"] = old;
    netpol["request"]["options"] = json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"});
    let ns = fixture("namespace-update-strip-lab-label.json")?;
    let vmi = fixture("vmi-create-in-lab-with-policy.json")?;
    Ok(vec![
        ("pod-create", Bytes::from(serde_json::to_vec(&pod)?)),
        (
            "networkpolicy-update",
            Bytes::from(serde_json::to_vec(&netpol)?),
        ),
        (
            "namespace-label-change",
            Bytes::from(serde_json::to_vec(&ns)?),
        ),
        ("vmi-create", Bytes::from(serde_json::to_vec(&vmi)?)),
    ])
}

/// utime+stime of this process's threads named `admission` (the service's runtime).
fn service_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("admission") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After `(comm)`: state is field 0, utime 11, stime 12.
        let n = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += n(11) + n(12);
    }
    ticks as f64 / TICKS_PER_SECOND
}

struct Started {
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    _standin: StandIn,
    _dir: tempfile::TempDir,
}

/// Starts the stand-in (on the caller's runtime) and the admission service (on
/// `service_rt`), with the lab and its policy in place and the cache ready.
async fn start(
    service_rt: &tokio::runtime::Runtime,
    shutdown: CancellationToken,
) -> anyhow::Result<Started> {
    let standin = StandIn::start().await?;
    standin.add_token(
        ADMISSION_TOKEN,
        UserInfo::service_account("labgate-system", "labgate-admission"),
    );
    let lab = labgate_policies::Lab {
        namespace: LAB.into(),
        owner: OWNER.into(),
        members: vec![],
    };
    let (labels, annotations) = lab.metadata();
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(LAB.into());
    ns.metadata.labels = Some(labels);
    ns.metadata.annotations = Some(annotations);
    standin.put_namespace(ns);

    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
    let args = [
        "labgate-admission".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--portal-user".into(),
        PORTAL_USER.into(),
        "--tls-cert-file".into(),
        cert.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
    ];
    let config = labgate_admission::Config::try_parse_from(args)?;
    let kube = standin.client(ADMISSION_TOKEN);
    let running = service_rt
        .spawn(async move { labgate_admission::start(&config, kube, shutdown).await })
        .await??;
    tokio::time::timeout(Duration::from_secs(10), running.cache.wait_ready())
        .await
        .context("the service's cache did not sync in 10 s")?;
    // The reconciler writes the lab's policy; wait until the webhook's cache sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.cache.policy(LAB) != PolicyState::Canonical {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the lab's policy did not reach the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Started {
        addr: running.addr,
        client: Arc::new(ca.client_config()),
        _standin: standin,
        _dir: dir,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One review; returns whether the answer was a 200 carrying `response.allowed`.
async fn review(sender: &mut Sender, body: Bytes) -> anyhow::Result<bool> {
    sender.ready().await?;
    let req = http::Request::post("/validate")
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status() == http::StatusCode::OK;
    let bytes = resp.into_body().collect().await?.to_bytes();
    let answer: Value = serde_json::from_slice(&bytes)?;
    Ok(ok && answer["response"]["allowed"].is_boolean())
}

#[derive(Default)]
struct ConnResult {
    /// (mix index, latency from writing the request to the whole answer) per review.
    latencies: Vec<(usize, Duration)>,
    /// Latency from the scheduled send time (adds tokio's 1 ms timer granularity and
    /// any wait for the connection's previous answer).
    from_schedule: Vec<Duration>,
    allowed: u64,
    failed: u64,
}

/// One connection's share of the open-loop schedule: requests `offset`, `offset + n`, …
/// of a global schedule at `rate`/s starting at `t0`.
async fn drive(
    mut sender: Sender,
    mix: Arc<Vec<(&'static str, Bytes)>>,
    t0: tokio::time::Instant,
    offset: u64,
    stride: u64,
    total: u64,
    rate: u64,
) -> ConnResult {
    let mut out = ConnResult::default();
    let mut i = offset;
    while i < total {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let sent = tokio::time::Instant::now();
        let which = (i as usize) % mix.len();
        match review(&mut sender, mix[which].1.clone()).await {
            Ok(allowed_field) => {
                out.latencies.push((which, sent.elapsed()));
                out.from_schedule.push(due.elapsed());
                if !allowed_field {
                    out.failed += 1;
                } else {
                    out.allowed += 1;
                }
            }
            Err(e) => {
                eprintln!("review failed: {e:#}");
                out.failed += 1;
            }
        }
        i += stride;
    }
    out
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.connections > 0 && args.seconds > 0.0,
        "rate, connections and seconds must be positive"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let service_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.service_threads)
        .thread_name("admission")
        .enable_all()
        .build()?;
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    load_rt.block_on(async {
        let started = start(&service_rt, shutdown.clone()).await?;
        let mix = Arc::new(reviews()?);
        let mut senders = Vec::new();
        for _ in 0..args.connections {
            senders.push(connect(started.addr, started.client.clone()).await?);
        }
        // Warm up each connection (and the service) before the measured run.
        for s in &mut senders {
            for (_, body) in mix.iter() {
                anyhow::ensure!(review(s, body.clone()).await?, "a warm-up review failed");
            }
        }
        let total = (args.rate as f64 * args.seconds).round() as u64;
        let stride = args.connections as u64;
        let cpu0 = service_cpu_seconds();
        let wall0 = Instant::now();
        let t0 = tokio::time::Instant::now() + Duration::from_millis(10);
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(k, s)| {
                tokio::spawn(drive(s, mix.clone(), t0, k as u64, stride, total, args.rate))
            })
            .collect();
        let mut all = ConnResult::default();
        for t in tasks {
            let r = t.await?;
            all.latencies.extend(r.latencies);
            all.from_schedule.extend(r.from_schedule);
            all.allowed += r.allowed;
            all.failed += r.failed;
        }
        let wall = wall0.elapsed().as_secs_f64();
        let cpu = service_cpu_seconds() - cpu0;
        let done = all.latencies.len() as u64;
        let mut lat: Vec<Duration> = all.latencies.iter().map(|(_, d)| *d).collect();
        lat.sort_unstable();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "admission: {done} reviews in {wall:.1} s ({:.0}/s achieved, {} asked) over {} keep-alive TLS connections, {} service thread(s)",
            done as f64 / wall,
            args.rate,
            args.connections,
            args.service_threads
        );
        println!("answers with a decision: {}, failures: {}", all.allowed, all.failed);
        let mut sched = std::mem::take(&mut all.from_schedule);
        sched.sort_unstable();
        println!(
            "latency from the scheduled send time: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (includes tokio's 1 ms timer tick)",
            micros(quantile(&sched, 0.50)),
            micros(quantile(&sched, 0.99)),
            micros(sched.last().copied().unwrap_or_default())
        );
        println!(
            "latency request to answer: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            micros(quantile(&lat, 0.50)),
            micros(quantile(&lat, 0.99)),
            micros(quantile(&lat, 0.999)),
            micros(lat.last().copied().unwrap_or_default())
        );
        for (k, (label, _)) in mix.iter().enumerate() {
            let mut l: Vec<Duration> =
                all.latencies.iter().filter(|(w, _)| *w == k).map(|(_, d)| *d).collect();
            l.sort_unstable();
            println!(
                "  {label:<24} n={:<6} p50 {:>6.0} µs  p99 {:>6.0} µs  max {:>7.0} µs",
                l.len(),
                micros(quantile(&l, 0.50)),
                micros(quantile(&l, 0.99)),
                micros(l.last().copied().unwrap_or_default())
            );
        }
        println!(
            "service CPU: {cpu:.2} s ({:.0} µs per review, {:.1} % of one core)",
            if done > 0 { cpu * 1e6 / done as f64 } else { 0.0 },
            100.0 * cpu / wall
        );
        println!("load average (1/5/15 min) at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        shutdown.cancel();
        anyhow::ensure!(all.failed == 0, "{} reviews failed", all.failed);
        Ok::<_, anyhow::Error>(())
    })?;
    service_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
