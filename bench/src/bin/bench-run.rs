//! The benchmark orchestrator: prepares certificates, tokens and the lab index, starts the
//! upstream and each contender pinned to its core, runs every scenario with `bench-load`,
//! repeats round-robin, profiles labgate with perf, and writes results.json, RESULTS.md and
//! (through bench/chart.py) chart.png. Exits non-zero if any contender failed to relay correctly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use labgate_bench::contender::{
    Contender, Kind, LOAD_CORE, Running, Setup, pinned, roster, start_upstream,
    upstream_ledger_file, upstream_stats_file,
};
use labgate_bench::plan::{Plan, Scenario};
use labgate_bench::procfs::open_files_hard_limit;
use labgate_bench::report::{ContenderStatus, Results, RunRecord};
use labgate_bench::token::{LAB_NAMESPACE, LAB_OWNER};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Run the labgate benchmarks against every available contender")]
struct Args {
    /// Short functional run: every contender, every scenario, about half a second each.
    #[arg(long)]
    smoke: bool,
    /// Where results.json, RESULTS.md and chart.png go.
    #[arg(long)]
    out: PathBuf,
    /// Directory with bench-upstream, bench-load and labgate-gateway (release builds).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The labgate-gateway binary to benchmark (default: BIN_DIR/labgate-gateway).
    #[arg(long)]
    labgate_bin: Option<PathBuf>,
    /// Python virtualenv with websockify, websockets, PyJWT and matplotlib.
    #[arg(long, default_value = "target/labgate-bench/venv")]
    venv: PathBuf,
    /// The bench/ directory (python relay, chart script).
    #[arg(long, default_value = "bench")]
    bench_dir: PathBuf,
    /// Scratch directory for certificates, configs and logs.
    #[arg(long, default_value = "target/labgate-bench/work")]
    work: PathBuf,
    /// Comma-separated contender names (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Repeats per scenario (default 3, smoke 1).
    #[arg(long)]
    repeats: Option<usize>,
    /// Record a perf profile of labgate under the many-session throughput scenario.
    #[arg(long)]
    profile: bool,
    /// Comma-separated scenario ids to run (default: every scenario of the full run; `crowd`
    /// runs only when named here).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Sessions of the crowd scenario (default: 10,000 or what the open-files limit allows).
    #[arg(long)]
    crowd_sessions: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let began = Instant::now();
    let started_utc = utc_now();
    let open_files = open_files_hard_limit().unwrap_or(20_000);
    let plan = Plan::new(
        args.smoke,
        args.repeats,
        open_files,
        &args.scenarios,
        args.crowd_sessions,
    )?;
    let setup = prepare(&args, &plan)?;
    let contenders: Vec<Contender> = roster()
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.name))
        .collect();
    let mut statuses: Vec<ContenderStatus> = contenders
        .iter()
        .map(|c| ContenderStatus {
            name: c.name.into(),
            description: c.description.into(),
            tls: c.tls,
            status: match c.unavailable(&setup) {
                Some(why) => format!("skipped: {why}"),
                None => "ran".into(),
            },
        })
        .collect();
    let mut machine = describe_machine(&args);
    let mut runs = Vec::new();
    for repeat in 1..=plan.repeats {
        // Each repeat starts one contender further on, so no contender always
        // runs right after the same one (e.g. after direct tears down its
        // thousands of idle sessions).
        let n = contenders.len().max(1);
        let order = (0..n).map(|i| (i + repeat - 1) % n);
        for i in order {
            let c = &contenders[i];
            let status = &mut statuses[i];
            if status.status.starts_with("skipped") {
                continue;
            }
            eprintln!(
                "[{:>5.0}s] repeat {repeat}/{}: {}",
                began.elapsed().as_secs_f64(),
                plan.repeats,
                c.name
            );
            match run_contender(&setup, &plan, c, repeat, args.crowd_sessions) {
                Ok(records) => {
                    for r in &records {
                        if !r.ok() {
                            eprintln!("    FAILED {}: {}", r.scenario, r.result);
                        }
                    }
                    runs.extend(records);
                }
                Err(e) => {
                    eprintln!("    could not run {}: {e:#}", c.name);
                    status.status = format!("failed: {e:#}");
                    runs.push(RunRecord {
                        contender: c.name.into(),
                        repeat,
                        scenario: "start".into(),
                        result: serde_json::json!({"ok": false, "errors": 1, "error_samples": [format!("{e:#}")]}),
                    });
                }
            }
        }
    }
    // The profile runs the many-session throughput scenario: only alongside it.
    let profile = if args.profile && plan.runs("thr-many") {
        Some(profile_labgate(&setup, &plan, &args.out))
    } else {
        None
    };
    machine.insert("load average (end)".into(), read_trimmed("/proc/loadavg"));
    let chart = !args.smoke && plan.runs("thr-one");
    let mut results = Results {
        mode: if args.smoke {
            "smoke".into()
        } else {
            "full".into()
        },
        started_utc,
        finished_utc: utc_now(),
        machine,
        plan,
        contenders: statuses,
        runs,
        summary: BTreeMap::new(),
        targets: Vec::new(),
        profile,
    };
    results.summarize();
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(args.out.join("RESULTS.md"), results.markdown())?;
    // The smoke run checks function only; its venv has no matplotlib. The chart draws
    // the default run's metrics, so a run of other scenarios has none.
    if chart {
        draw_chart(&args, &json_path);
    }
    eprintln!(
        "wrote {} in {:.0} s",
        args.out.join("RESULTS.md").display(),
        began.elapsed().as_secs_f64()
    );
    let failures = results.failures();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!(
                "FAILED: {} {} (repeat {}): {}",
                f.contender, f.scenario, f.repeat, f.result["error_samples"]
            );
        }
        std::process::exit(1);
    }
    Ok(())
}

/// Work directory with a fresh test CA, server certificate, JWT secret, kube token and lab index.
fn prepare(args: &Args, plan: &Plan) -> anyhow::Result<Setup> {
    let work = args.work.clone();
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clear {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    let (ca_pem, cert_pem, key_pem) = make_certificates()?;
    let file = |name: &str, contents: &[u8]| -> anyhow::Result<PathBuf> {
        let path = work.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    };
    let secret = random_hex(32)?;
    let labs =
        format!("labs:\n  - namespace: {LAB_NAMESPACE}\n    owner: {LAB_OWNER}\n    members: []\n");
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    Ok(Setup {
        bin_dir: abs(&args.bin_dir),
        labgate_bin: abs(&args
            .labgate_bin
            .clone()
            .unwrap_or_else(|| args.bin_dir.join("labgate-gateway"))),
        venv: abs(&args.venv),
        bench_dir: abs(&args.bench_dir),
        secret_file: file("jwt-secret", secret.as_bytes())?,
        // No trailing newline: kube sends the token file verbatim as the bearer token.
        kube_token_file: file("kube-token", b"bench-service-account-token")?,
        labs_file: file("labs.yaml", labs.as_bytes())?,
        ca_file: file("ca.pem", ca_pem.as_bytes())?,
        cert_file: file("server.pem", cert_pem.as_bytes())?,
        key_file: file("server.key", key_pem.as_bytes())?,
        max_sessions: plan.idle_sessions.max(if plan.runs("crowd") {
            plan.crowd_sessions
        } else {
            0
        }) + 50,
        work,
    })
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A test CA and a server certificate for 127.0.0.1 and localhost signed by it (PEM).
fn make_certificates() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "labgate bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Starts a fresh upstream and the contender, runs every scenario once, stops both.
fn run_contender(
    setup: &Setup,
    plan: &Plan,
    c: &Contender,
    repeat: usize,
    crowd_sessions: Option<usize>,
) -> anyhow::Result<Vec<RunRecord>> {
    // The crowd compares both ends of every echo session: the websocket upstream keeps a
    // ledger of them (websockify reaches the plain TCP upstream, which keeps none).
    let ledger =
        (plan.runs("crowd") && c.kind != Kind::Websockify).then(|| upstream_ledger_file(setup));
    let (upstream, addrs) = start_upstream(setup, c.upstream_tls, ledger.as_deref())?;
    let running = c.start(setup, addrs)?;
    let upstream_pid = c.upstream_tls.then_some(upstream.pid);
    let mut records = Vec::new();
    for scenario in &plan.scenarios {
        let mut extra = Vec::new();
        if scenario.id == "idle" {
            let n = if c.kind == Kind::Websockify {
                plan.idle_sessions_forking
            } else {
                plan.idle_sessions
            };
            extra = vec!["--sessions".to_string(), n.to_string()];
        }
        if scenario.id == "crowd" {
            // Unless chosen, bench-load picks the count from the proxy's open-files limit and
            // says so; websockify forks a process per connection, as in the idle scenario.
            let n = if c.kind == Kind::Websockify {
                Some(plan.idle_sessions_forking.min(plan.crowd_sessions))
            } else {
                crowd_sessions.or(plan.smoke.then_some(plan.crowd_sessions))
            };
            if let Some(n) = n {
                extra = vec!["--sessions".to_string(), n.to_string()];
            }
            if let Some(file) = &ledger {
                extra.push("--upstream-ledger-file".into());
                extra.push(file.display().to_string());
            }
        }
        let result = run_load(setup, &running, upstream_pid, scenario, &extra)?;
        records.push(RunRecord {
            contender: c.name.into(),
            repeat,
            scenario: scenario.id.into(),
            result,
        });
        // Let closed sessions drain before the next scenario.
        std::thread::sleep(Duration::from_millis(if plan.smoke { 100 } else { 500 }));
    }
    drop(running);
    upstream.stop();
    Ok(records)
}

/// Runs `bench-load` (pinned to the load core) for one scenario and parses its JSON.
fn run_load(
    setup: &Setup,
    running: &Running,
    upstream_pid: Option<u32>,
    scenario: &Scenario,
    extra: &[String],
) -> anyhow::Result<Value> {
    let output = load_command(setup, running, upstream_pid, scenario, extra)
        .stderr(Stdio::inherit())
        .output()
        .context("run bench-load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) => Ok(v),
        Err(_) => Ok(serde_json::json!({
            "ok": false,
            "errors": 1,
            "error_samples": [format!("bench-load exited with {} and printed {:?}", output.status, text.trim())],
        })),
    }
}

fn load_command(
    setup: &Setup,
    running: &Running,
    upstream_pid: Option<u32>,
    scenario: &Scenario,
    extra: &[String],
) -> Command {
    let mut cmd = pinned(LOAD_CORE, setup.bin_dir.join("bench-load"));
    cmd.arg("--url").arg(&running.url);
    if running.tls {
        cmd.arg("--ca-file").arg(&setup.ca_file);
    }
    if running.needs_token {
        cmd.arg("--jwt-secret-file").arg(&setup.secret_file);
    }
    if running.tcp_mode_selector {
        cmd.arg("--tcp-mode-selector");
    }
    if let Some(pid) = running.pid() {
        cmd.arg("--proxy-pid").arg(pid.to_string());
    }
    if running.sends_bearer {
        cmd.arg("--bearer-token-file").arg(&setup.kube_token_file);
    }
    // The HTTPS stand-in's side of each handshake: its CPU and full vs resumed TLS sessions.
    if let Some(pid) = upstream_pid {
        cmd.arg("--upstream-pid").arg(pid.to_string());
        cmd.arg("--upstream-stats-file")
            .arg(upstream_stats_file(setup));
    }
    cmd.arg(scenario.load_command)
        .args(&scenario.load_args)
        .args(extra);
    cmd
}

/// perf record (DWARF call graphs) of labgate while the many-session throughput scenario runs;
/// returns the Markdown summary and writes the full report next to the results.
fn profile_labgate(setup: &Setup, plan: &Plan, out: &Path) -> String {
    match try_profile(setup, plan, out) {
        Ok(summary) => summary,
        Err(e) => format!("No profile: {e:#}\n"),
    }
}

fn try_profile(setup: &Setup, plan: &Plan, out: &Path) -> anyhow::Result<String> {
    let perf_ok = Command::new("perf")
        .args(["record", "-q", "-o", "/dev/null", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(perf_ok, "perf is not usable here");
    let c = roster()
        .into_iter()
        .find(|c| c.name == "labgate")
        .context("no labgate contender")?;
    if let Some(why) = c.unavailable(setup) {
        anyhow::bail!("labgate unavailable: {why}");
    }
    let (upstream, addrs) = start_upstream(setup, c.upstream_tls, None)?;
    let running = c.start(setup, addrs)?;
    let pid = running.pid().context("labgate has no pid")?;
    let record_secs = if plan.smoke { 1 } else { 4 };
    let scenario = Scenario {
        id: "profile",
        title: "profile".into(),
        load_command: "throughput",
        in_default_run: false,
        load_args: [
            "--sessions",
            &plan.many_sessions.to_string(),
            "--seconds",
            &(record_secs + 1).to_string(),
            "--warmup",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    let load = load_command(setup, &running, None, &scenario, &[])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1200));
    let data = setup.work.join("perf.data");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &record_secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let load_out = load.wait_with_output()?;
    drop(running);
    upstream.stop();
    anyhow::ensure!(status.success(), "perf record failed");
    let report = |extra: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-header",
                "-g",
                "none",
                "--percent-limit",
                "1",
                "-i",
            ])
            .arg(&data)
            .args(extra)
            .stderr(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let self_time = report(&["--no-children", "--sort", "dso,symbol"])?;
    let inclusive = report(&["--children", "--sort", "symbol"])?;
    let full = format!(
        "# perf report: self time\n{self_time}\n# perf report: including callees\n{inclusive}"
    );
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("profile-labgate.txt"), &full)?;
    // Runtime plumbing (task harness, catch_unwind, inlined wrappers) says nothing; leave it out.
    let generic = [
        "(inlined)",
        "catch_unwind",
        "harness::",
        "Harness<",
        "Core<T,S>",
        "0xffffffff",
        "poll_fn::PollFn",
        "TrackedFuture",
    ];
    let top = |text: &str, n: usize| -> String {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter(|l| !generic.iter().any(|g| l.contains(g)))
            .map(|l| l.trim_end().trim_end_matches(['-', ' ']))
            .take(n)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let load_json = String::from_utf8_lossy(&load_out.stdout).trim().to_owned();
    Ok(format!(
        "`perf record -F 499 --call-graph dwarf` for {record_secs} s on labgate (pinned to core 1) while {} stream sessions \
         ran; load result during the profile: `{load_json}`. Full report: `profile-labgate.txt`.\n\n\
         Top frames by self time:\n\n```\n{}\n```\n\nTop frames including callees:\n\n```\n{}\n```\n",
        plan.many_sessions,
        top(&self_time, 25),
        top(&inclusive, 25)
    ))
}

fn draw_chart(args: &Args, json: &Path) {
    let python = args.venv.join("bin/python");
    let status = Command::new(&python)
        .arg(args.bench_dir.join("chart.py"))
        .arg(json)
        .arg(args.out.join("chart.png"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!(
            "warning: chart.png was not drawn ({} bench/chart.py failed)",
            python.display()
        );
    }
}

fn utc_now() -> String {
    run_text("date", &["-u", "+%Y-%m-%d %H:%M:%S"])
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// stdout (or stderr, for tools that print versions there) of a command, trimmed.
fn run_text(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        }
        Err(_) => "unavailable".into(),
    }
}

fn describe_machine(args: &Args) -> BTreeMap<String, String> {
    let cpuinfo = read_trimmed("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let mem = read_trimmed("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let pip = args.venv.join("bin/pip");
    let py_versions = run_text(pip.to_str().unwrap_or("pip"), &["freeze"])
        .lines()
        .filter(|l| {
            ["websockify", "websockets", "PyJWT", "matplotlib"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut m = BTreeMap::new();
    m.insert("cpus (nproc)".into(), run_text("nproc", &[]));
    m.insert("cpu model".into(), model);
    m.insert(
        "memory".into(),
        mem.replace("MemTotal:", "").trim().to_owned(),
    );
    m.insert("kernel".into(), run_text("uname", &["-sr"]));
    m.insert(
        "open files (hard limit)".into(),
        open_files_hard_limit()
            .map(|v| v.to_string())
            .unwrap_or_default(),
    );
    m.insert("load average (start)".into(), read_trimmed("/proc/loadavg"));
    m.insert("rustc".into(), run_text("rustc", &["-V"]));
    m.insert("nginx".into(), run_text("nginx", &["-v"]));
    m.insert(
        "python".into(),
        run_text(
            args.venv.join("bin/python").to_str().unwrap_or("python3"),
            &["--version"],
        ),
    );
    m.insert("python packages".into(), py_versions);
    m.insert("perf".into(), run_text("perf", &["--version"]));
    m.insert(
        "labgate commit".into(),
        run_text("git", &["rev-parse", "--short", "HEAD"]),
    );
    let labgate_bin = args
        .labgate_bin
        .clone()
        .unwrap_or_else(|| args.bin_dir.join("labgate-gateway"));
    m.insert("labgate binary".into(), labgate_bin.display().to_string());
    m
}
