//! Time to first ready with many labs: the tests' Kubernetes stand-in in this process,
//! holding N labelled lab namespaces (plus unlabelled ones the gateway's label selector
//! leaves out), and the release `labgate-gateway` binary started against it as a child
//! process (kubeconfig from the stand-in, admin listener for `/readyz`).
//!
//! Per run it reports: spawn → `/readyz` 200, split at the first and the last namespace
//! list page the stand-in received; the pages and their `limit`; the stand-in's own CPU
//! for the run (its runtime's threads are named `standin`, so their CPU is read apart from
//! this process's polling); the gateway's CPU, RSS and peak RSS once ready. A gateway
//! started against 0 labs gives the baseline for memory per lab. At the end of each run,
//! a token for the last lab's owner must get 200 on `GET /labs/{lab}` listing its VM, and
//! a stranger 403. Nothing here asserts on timings.
//!
//! `cargo build --release -p labgate-gateway -p labgate-bench &&
//!  target/release/bench-index-ready --labs 10000,100000 --out bench/results/index-ready`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use labgate_bench::procfs::{sample_tree, status_kib, threads_cpu_seconds};
use labgate_bench::stats::median;
use labgate_tests::standin::{StandIn, Vmi};
use serde_json::{Value, json};

/// The audience the gateway is started with and every token carries.
const AUDIENCE: &str = "labgate-bench";
/// Name prefix of the stand-in runtime's threads.
const STANDIN_THREADS: &str = "standin";
/// How often the wait loop looks at `/readyz` and at the stand-in's request log.
const POLL: Duration = Duration::from_millis(5);

#[derive(Parser)]
#[command(about = "Time to first ready and memory per lab with many lab namespaces")]
struct Args {
    /// Lab namespace counts to measure, comma-separated (each against a fresh stand-in).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    labs: Vec<usize>,
    /// Namespaces without the lab label, besides the labs (the list's selector skips them).
    #[arg(long, default_value_t = 10_000)]
    unlabelled: usize,
    /// Gateway starts per lab count (the stand-in is filled once per count).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The gateway binary (a release build).
    #[arg(long, default_value = "target/release/labgate-gateway")]
    gateway_bin: PathBuf,
    /// Core the gateway is pinned to with `taskset` (empty: not pinned). This process
    /// (stand-in and polling) goes to `--bench-core`.
    #[arg(long, default_value = "1")]
    gateway_core: String,
    #[arg(long, default_value = "0")]
    bench_core: String,
    /// Wait after ready before reading the gateway's memory again (the list pages freed).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Give up on a gateway that is not ready after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    ready_timeout: f64,
    /// Directory for results.json and RESULTS.md (default: print the JSON only).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A lab namespace the way the admission service leaves it (as in `index_scale`): lab
/// label, owner annotation and hash, two members.
fn lab(i: usize) -> (String, String, [String; 2]) {
    (
        format!("lab-{i:06}"),
        format!("student-{i:06}@uni.example"),
        [
            "tutor-1@uni.example".into(),
            format!("peer-{i}@uni.example"),
        ],
    )
}

/// A stand-in on its own runtime thread, filled with `labs` labs and `unlabelled` others.
fn fill_standin(
    rt: &tokio::runtime::Runtime,
    labs: usize,
    unlabelled: usize,
) -> anyhow::Result<(StandIn, Duration)> {
    let standin = rt.block_on(StandIn::start())?;
    let began = Instant::now();
    for i in 0..labs {
        let (name, owner, members) = lab(i);
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        standin.lab_namespace(&name, &owner, &members);
    }
    for i in 0..unlabelled {
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some(format!("team-{i:06}"));
        standin.put_namespace(ns);
    }
    if labs > 0 {
        // The last lab gets a VM, so the functional check sees the VM index too.
        let (last, _, _) = lab(labs - 1);
        standin.add_vmi(
            &last,
            "vm1",
            Vmi {
                phase: "Running".into(),
                vnc: None,
                console: None,
            },
        );
    }
    Ok((standin, began.elapsed()))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One plain HTTP/1.1 GET on a fresh connection to `addr`; the status and body.
async fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    labgate_bench::http_get::get(tcp, path, bearer).await
}

/// Files the gateway is started with.
struct GatewayFiles {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    secret_file: PathBuf,
    secret: Vec<u8>,
}

impl GatewayFiles {
    fn new(standin: &StandIn) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = standin.write_kubeconfig(dir.path(), &standin.gateway_token());
        let secret: Vec<u8> = (0..32).map(|_| rand_byte()).collect();
        let secret_file = dir.path().join("hmac-secret");
        std::fs::write(&secret_file, &secret)?;
        Ok(Self {
            dir,
            kubeconfig,
            secret_file,
            secret,
        })
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 600;
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "sub": user, "aud": AUDIENCE, "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )?)
    }
}

/// A byte from the OS's random source (the JWT secret).
fn rand_byte() -> u8 {
    use std::io::Read;
    let mut b = [0u8; 1];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b[0]
}

/// The gateway child process, killed when dropped.
struct Gateway {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(args: &Args, files: &GatewayFiles, log: &Path) -> anyhow::Result<Gateway> {
    let (listen, admin) = (free_addr()?, free_addr()?);
    let mut cmd = if args.gateway_core.is_empty() {
        Command::new(&args.gateway_bin)
    } else {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(&args.gateway_core).arg(&args.gateway_bin);
        c
    };
    cmd.arg("--listen")
        .arg(listen.to_string())
        .arg("--insecure-plain-http")
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--kubeconfig")
        .arg(&files.kubeconfig)
        .arg("--jwt-hmac-secret-file")
        .arg(&files.secret_file)
        .args(["--jwt-algorithms", "HS256", "--jwt-audience", AUDIENCE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", args.gateway_bin.display()))?;
    Ok(Gateway {
        child,
        listen,
        admin,
    })
}

/// Whether a recorded request is a page of the namespace list (not a watch).
fn is_namespace_page(method: &str, path: &str, query: &str) -> bool {
    method == "GET"
        && path == "/api/v1/namespaces"
        && !query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
}

/// One gateway start against a filled stand-in.
async fn run_once(
    args: &Args,
    standin: &StandIn,
    labs: usize,
    repeat: usize,
) -> anyhow::Result<Value> {
    let files = GatewayFiles::new(standin)?;
    let log = files.dir.path().join("gateway.log");
    let seen_before = standin.requests().len();
    let cpu0 = threads_cpu_seconds(STANDIN_THREADS);
    let spawned = Instant::now();
    let mut gateway = spawn_gateway(args, &files, &log)?;
    let pid = gateway.child.id();
    let deadline = spawned + Duration::from_secs_f64(args.ready_timeout);
    let (mut first_page, mut last_page, mut pages) = (None, None, 0usize);
    let mut page_limit = None;
    let ready = loop {
        if let Some(status) = gateway.child.try_wait()? {
            bail!(
                "the gateway exited ({status}) before it was ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let now = Instant::now();
        let requests = standin.requests();
        let new_pages: Vec<_> = requests[seen_before.min(requests.len())..]
            .iter()
            .filter(|r| is_namespace_page(&r.method, &r.path, &r.query))
            .collect();
        if new_pages.len() > pages {
            pages = new_pages.len();
            first_page.get_or_insert(now);
            last_page = Some(now);
            page_limit = page_limit.or_else(|| {
                new_pages[0]
                    .query
                    .split('&')
                    .find_map(|p| p.strip_prefix("limit="))
                    .map(str::to_owned)
            });
        }
        if matches!(get(gateway.admin, "/readyz", None).await, Ok((200, _))) {
            break Instant::now();
        }
        ensure!(
            now < deadline,
            "the gateway was not ready within {} s",
            args.ready_timeout
        );
        tokio::time::sleep(POLL).await;
    };
    let standin_cpu = threads_cpu_seconds(STANDIN_THREADS) - cpu0;
    let at_ready = sample_tree(pid);
    let rss_ready = status_kib(pid, "VmRSS");
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let settled = sample_tree(pid);
    let rss_settled = status_kib(pid, "VmRSS");
    let peak = status_kib(pid, "VmHWM");
    let check = if labs > 0 {
        functional_check(&gateway, &files, labs).await?
    } else {
        json!(null)
    };
    drop(gateway);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let since = |a: Option<Instant>, b: Option<Instant>| a.zip(b).map(|(a, b)| ms(b - a));
    Ok(json!({
        "labs": labs,
        "repeat": repeat,
        "spawn_to_ready_ms": ms(ready - spawned),
        "spawn_to_first_page_ms": since(Some(spawned), first_page),
        "first_to_last_page_ms": since(first_page, last_page),
        "last_page_to_ready_ms": since(last_page, Some(ready)),
        "pages": pages,
        "page_limit": page_limit,
        "standin_cpu_ms": standin_cpu * 1e3,
        "standin_cpu_ms_per_page": (pages > 0).then(|| standin_cpu * 1e3 / pages as f64),
        "gateway_cpu_ms_at_ready": at_ready.cpu_seconds * 1e3,
        "gateway_rss_ready_kib": rss_ready,
        "gateway_rss_settled_kib": rss_settled,
        "gateway_pss_settled_kib": settled.memory_kib,
        "gateway_peak_rss_kib": peak,
        "functional_check": check,
    }))
}

/// The last lab's owner lists its VMs (200, the VM named); a stranger gets 403. The VM
/// index syncs on its own watch, so a 503 (not ready) is waited out for up to 30 s.
async fn functional_check(
    gateway: &Gateway,
    files: &GatewayFiles,
    labs: usize,
) -> anyhow::Result<Value> {
    let (last, owner, _) = lab(labs - 1);
    let path = format!("/labs/{last}");
    let owner_token = files.token(&owner)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (owner_status, body) = loop {
        let (status, body) = get(gateway.listen, &path, Some(&owner_token)).await?;
        if status != 503 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let vm_listed = listed["vms"]
        .as_array()
        .is_some_and(|vms| vms.iter().any(|vm| vm.to_string().contains("\"vm1\"")));
    let stranger = files.token("stranger@uni.example")?;
    let (stranger_status, _) = get(gateway.listen, &path, Some(&stranger)).await?;
    let passed = owner_status == 200 && vm_listed && stranger_status == 403;
    ensure!(
        passed,
        "functional check failed on {path}: owner {owner_status} (VM listed: {vm_listed}, body {body}), stranger {stranger_status}"
    );
    Ok(json!({
        "lab": last,
        "owner_status": owner_status,
        "vm_listed": vm_listed,
        "stranger_status": stranger_status,
        "passed": passed,
    }))
}

fn field_median(runs: &[Value], field: &str) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|r| r[field].as_f64()).collect();
    median(&values)
}

fn command_text(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.repeats > 0, "--repeats must be at least 1");
    ensure!(
        args.gateway_bin.exists(),
        "{} not found: build it with `cargo build --release -p labgate-gateway`",
        args.gateway_bin.display()
    );
    if !args.bench_core.is_empty() {
        // Before any runtime thread exists, so they all inherit the core.
        let pinned = Command::new("taskset")
            .args(["-cp", &args.bench_core, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            pinned,
            "taskset could not pin this process to core {}",
            args.bench_core
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started_utc = command_text("date", &["-u", "+%Y-%m-%d %H:%M:%S"]);
    let load_start = labgate_bench::procfs::load_average();
    let standin_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(STANDIN_THREADS)
        .enable_all()
        .build()?;
    let bench_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut sizes = vec![0];
    sizes.extend(args.labs.iter().copied().filter(|n| *n > 0));
    let mut per_size = Vec::new();
    for &labs in &sizes {
        let unlabelled = if labs == 0 { 0 } else { args.unlabelled };
        let (standin, fill_time) = fill_standin(&standin_rt, labs, unlabelled)?;
        eprintln!(
            "stand-in: {labs} labs and {unlabelled} other namespaces stored in {:.1} s",
            fill_time.as_secs_f64()
        );
        let mut runs = Vec::new();
        for repeat in 1..=args.repeats {
            let run = bench_rt.block_on(run_once(&args, &standin, labs, repeat))?;
            eprintln!("  {run}");
            runs.push(run);
        }
        standin_rt.block_on(standin.shutdown());
        drop(standin);
        per_size.push((labs, unlabelled, fill_time, runs));
    }
    let baseline_rss = per_size
        .first()
        .and_then(|(_, _, _, runs)| field_median(runs, "gateway_rss_settled_kib"));
    let baseline_peak = per_size
        .first()
        .and_then(|(_, _, _, runs)| field_median(runs, "gateway_peak_rss_kib"));
    let per_lab = |labs: usize, value: Option<f64>, base: Option<f64>| {
        value
            .zip(base)
            .filter(|_| labs > 0)
            .map(|(v, b)| (v - b) / labs as f64)
    };
    let summaries: Vec<Value> = per_size
        .iter()
        .map(|(labs, unlabelled, fill, runs)| {
            let m = |f: &str| field_median(runs, f);
            json!({
                "labs": labs,
                "unlabelled_namespaces": unlabelled,
                "standin_fill_s": fill.as_secs_f64(),
                "spawn_to_ready_ms": m("spawn_to_ready_ms"),
                "spawn_to_first_page_ms": m("spawn_to_first_page_ms"),
                "first_to_last_page_ms": m("first_to_last_page_ms"),
                "last_page_to_ready_ms": m("last_page_to_ready_ms"),
                "pages": m("pages"),
                "standin_cpu_ms": m("standin_cpu_ms"),
                "standin_cpu_ms_per_page": m("standin_cpu_ms_per_page"),
                "gateway_cpu_ms_at_ready": m("gateway_cpu_ms_at_ready"),
                "gateway_rss_settled_kib": m("gateway_rss_settled_kib"),
                "gateway_peak_rss_kib": m("gateway_peak_rss_kib"),
                "kib_per_lab_settled": per_lab(*labs, m("gateway_rss_settled_kib"), baseline_rss),
                "kib_per_lab_peak": per_lab(*labs, m("gateway_peak_rss_kib"), baseline_peak),
                "runs": runs,
            })
        })
        .collect();
    let result = json!({
        "started_utc": started_utc,
        "finished_utc": command_text("date", &["-u", "+%Y-%m-%d %H:%M:%S"]),
        "commit": command_text("git", &["rev-parse", "--short", "HEAD"]),
        "load_average_start": load_start,
        "load_average_end": labgate_bench::procfs::load_average(),
        "cpus": command_text("nproc", &["--all"]),
        "gateway_bin": args.gateway_bin.display().to_string(),
        "gateway_core": args.gateway_core,
        "repeats": args.repeats,
        "sizes": summaries,
    });
    println!("{result}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&result)?,
        )?;
        std::fs::write(out.join("RESULTS.md"), markdown(&result))?;
        eprintln!("wrote {}", out.join("RESULTS.md").display());
    }
    standin_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn markdown(r: &Value) -> String {
    use std::fmt::Write;
    let f = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Time to first ready with many labs (bench-index-ready)\n"
    );
    let _ = writeln!(
        md,
        "Run {} → {} UTC at `{}`, load average {} → {} ({} CPUs on the machine); gateway `{}` pinned to core `{}`, \
         stand-in and polling on the other; medians of {} gateway start(s) per row. Raw data: `results.json`.\n",
        r["started_utc"].as_str().unwrap_or_default(),
        r["finished_utc"].as_str().unwrap_or_default(),
        r["commit"].as_str().unwrap_or_default(),
        r["load_average_start"].as_str().unwrap_or_default(),
        r["load_average_end"].as_str().unwrap_or_default(),
        r["cpus"].as_str().unwrap_or_default(),
        r["gateway_bin"].as_str().unwrap_or_default(),
        r["gateway_core"].as_str().unwrap_or_default(),
        r["repeats"],
    );
    let _ = writeln!(
        md,
        "| labs (+ unlabelled) | spawn → ready | → first page | pages (first → last) | last page → ready | \
         stand-in CPU (per page) | gateway CPU at ready | gateway RSS settled | peak RSS | KiB per lab (settled / peak) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in r["sizes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} (+{}) | {} ms | {} ms | {} ({} ms) | {} ms | {} ms ({} ms) | {} ms | {} KiB | {} KiB | {} / {} |",
            s["labs"],
            s["unlabelled_namespaces"],
            f(&s["spawn_to_ready_ms"], 0),
            f(&s["spawn_to_first_page_ms"], 0),
            f(&s["pages"], 0),
            f(&s["first_to_last_page_ms"], 0),
            f(&s["last_page_to_ready_ms"], 0),
            f(&s["standin_cpu_ms"], 0),
            f(&s["standin_cpu_ms_per_page"], 2),
            f(&s["gateway_cpu_ms_at_ready"], 0),
            f(&s["gateway_rss_settled_kib"], 0),
            f(&s["gateway_peak_rss_kib"], 0),
            f(&s["kib_per_lab_settled"], 3),
            f(&s["kib_per_lab_peak"], 3),
        );
    }
    let _ = writeln!(md, "\nEvery run:\n");
    for s in r["sizes"].as_array().into_iter().flatten() {
        for run in s["runs"].as_array().into_iter().flatten() {
            let _ = writeln!(md, "- `{run}`");
        }
    }
    md
}
