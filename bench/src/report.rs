//! The results of one run, their medians, the ratios and target checks, and the Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::plan::{METRICS, Metric, Plan};
use crate::stats::median;

/// Whether a contender ran, and why not if it did not.
#[derive(Clone, Debug, Serialize)]
pub struct ContenderStatus {
    pub name: String,
    pub description: String,
    pub tls: bool,
    /// `ran`, `failed: ...` or `skipped: ...`.
    pub status: String,
}

/// One scenario run against one contender.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub contender: String,
    pub repeat: usize,
    pub scenario: String,
    pub result: Value,
}

impl RunRecord {
    pub fn ok(&self) -> bool {
        self.result["ok"].as_bool().unwrap_or(false)
    }
}

/// The median of one metric for one contender.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub median: Option<f64>,
    pub values: Vec<f64>,
    /// Some repeat of the scenario failed its functional checks.
    pub failed: bool,
}

/// Everything one run produced; serialised to results.json and rendered to RESULTS.md.
#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub machine: BTreeMap<String, String>,
    pub plan: Plan,
    pub contenders: Vec<ContenderStatus>,
    pub runs: Vec<RunRecord>,
    pub summary: BTreeMap<String, BTreeMap<String, Summary>>,
    pub targets: Vec<TargetCheck>,
    pub profile: Option<String>,
}

/// One target from the issue, checked on this run's medians.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub labgate: Option<f64>,
    pub reference: Option<f64>,
    /// labgate / reference (or reference / labgate where the target is "N× better").
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

impl Results {
    /// Medians of every metric over the repeats that produced it.
    pub fn summarize(&mut self) {
        self.summary.clear();
        for c in &self.contenders {
            let mut per_metric = BTreeMap::new();
            for m in METRICS {
                let runs: Vec<&RunRecord> = self
                    .runs
                    .iter()
                    .filter(|r| r.contender == c.name && r.scenario == m.scenario)
                    .collect();
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.ok())
                    .filter_map(|r| r.result[m.field].as_f64())
                    .collect();
                per_metric.insert(
                    m.key.to_owned(),
                    Summary {
                        median: median(&values),
                        values,
                        failed: runs.iter().any(|r| !r.ok()),
                    },
                );
            }
            self.summary.insert(c.name.clone(), per_metric);
        }
        self.targets = self.check_targets();
    }

    pub fn value(&self, contender: &str, metric: &str) -> Option<f64> {
        self.summary.get(contender)?.get(metric)?.median
    }

    /// Any scenario of any contender that failed its functional checks.
    pub fn failures(&self) -> Vec<&RunRecord> {
        self.runs.iter().filter(|r| !r.ok()).collect()
    }

    fn check_targets(&self) -> Vec<TargetCheck> {
        let mut checks = Vec::new();
        let mut ratio_check = |target: String,
                               lab: &str,
                               reference: &str,
                               metric: &str,
                               invert: bool,
                               ok: &dyn Fn(f64) -> bool| {
            let (l, r) = (self.value(lab, metric), self.value(reference, metric));
            let ratio = match (l, r) {
                (Some(l), Some(r)) if !invert && r > 0.0 => Some(l / r),
                (Some(l), Some(r)) if invert && l > 0.0 => Some(r / l),
                _ => None,
            };
            checks.push(TargetCheck {
                target,
                labgate: l,
                reference: r,
                ratio,
                met: ratio.map(ok),
            });
        };
        for (lab, nginx) in [
            ("labgate", "nginx-tuned"),
            ("labgate-tls", "nginx-tuned-tls"),
            ("labgate-prod", "nginx-prod"),
        ] {
            ratio_check(
                format!("{lab}: throughput 1 session ≥ {nginx}"),
                lab,
                nginx,
                "thr_one",
                false,
                &|x| x >= 1.0,
            );
            ratio_check(
                format!("{lab}: throughput many sessions ≥ {nginx}"),
                lab,
                nginx,
                "thr_many",
                false,
                &|x| x >= 1.0,
            );
            ratio_check(
                format!("{lab}: CPU s/GB (1 session) ≤ 0.85× {nginx}"),
                lab,
                nginx,
                "cpu_one",
                false,
                &|x| x <= 0.85,
            );
            ratio_check(
                format!("{lab}: CPU s/GB (many sessions) ≤ 0.85× {nginx}"),
                lab,
                nginx,
                "cpu_many",
                false,
                &|x| x <= 0.85,
            );
            ratio_check(
                format!("{lab}: RTT p99 ≤ {nginx}"),
                lab,
                nginx,
                "rtt_p99",
                false,
                &|x| x <= 1.0,
            );
        }
        ratio_check(
            "labgate: handshakes/s ≥ 1.5× nginx-tuned (plain)".into(),
            "labgate",
            "nginx-tuned",
            "hs_rate",
            false,
            &|x| x >= 1.5,
        );
        ratio_check(
            "labgate-tls: handshakes/s vs nginx-tuned-tls (information)".into(),
            "labgate-tls",
            "nginx-tuned-tls",
            "hs_rate",
            false,
            &|x| x >= 1.0,
        );
        // Issue 12, the production path (wss → proxy → HTTPS API server).
        for (metric, what) in [("hs_cpu", "in bursts"), ("hs_seq_cpu", "sequential")] {
            ratio_check(
                format!("labgate-prod: proxy CPU per session ({what}) ≤ 0.7× nginx-prod"),
                "labgate-prod",
                "nginx-prod",
                metric,
                false,
                &|x| x <= 0.7,
            );
        }
        for other in ["websockify", "python-relay"] {
            ratio_check(
                format!("labgate: RTT p99 ≥ 4× better than {other}"),
                "labgate",
                other,
                "rtt_p99",
                true,
                &|x| x >= 4.0,
            );
        }
        let (lab, direct) = (
            self.value("labgate-prod", "first_byte_p50"),
            self.value("direct-prod", "first_byte_p50"),
        );
        checks.push(TargetCheck {
            target: "labgate-prod: time to first screen byte (p50) within 1 ms of direct-prod \
                     (ratio column: the difference in µs)"
                .into(),
            labgate: lab,
            reference: direct,
            ratio: lab.zip(direct).map(|(l, d)| l - d),
            met: lab.zip(direct).map(|(l, d)| l - d <= 1000.0),
        });
        let idle = self.value("labgate", "idle_kib");
        checks.push(TargetCheck {
            target: "labgate: ≤ 8 KiB proxy memory per idle session".into(),
            labgate: idle,
            reference: Some(8.0),
            ratio: idle.map(|v| v / 8.0),
            met: idle.map(|v| v <= 8.0),
        });
        checks
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.plan;
        let _ = writeln!(md, "# labgate benchmark results ({})\n", self.mode);
        let _ = writeln!(
            md,
            "Run {} → {} UTC. Medians of {} repeat(s) per scenario; every number in one table comes from the same run. \
             Generated by `bench/run.sh`{}; raw data in `results.json`, chart in `chart.png`.\n",
            self.started_utc,
            self.finished_utc,
            p.repeats,
            if p.smoke {
                " --smoke (1 short repeat: functional check, the numbers mean little)"
            } else {
                ""
            }
        );
        // A run of only scenarios outside the default run (the crowd) has no medians table,
        // ratios, targets or chart: those are about the default scenarios' metrics.
        let default_metrics = METRICS.iter().any(|m| p.runs(m.scenario));
        if default_metrics {
            let _ = writeln!(md, "![chart](chart.png)\n");
        }
        let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(md, "| {k} | {} |", v.replace('|', "/").replace('\n', " "));
        }
        let _ = writeln!(md, "\n## Setup\n");
        let _ = writeln!(
            md,
            "- Every proxy runs pinned to core 1 (`taskset -c 1`, so labgate's runtime has one worker thread, nginx one worker, \
             Python one process); the load generator and the upstream share core 0. Direct has no proxy, so core 1 is idle.\n\
             - Stream sessions receive 64 KiB binary messages as fast as the sockets take them; every byte is checked. \
             CPU s/GB = proxy utime+stime (whole process tree, /proc) during the window ÷ GB relayed.\n\
             - RTT: {} echo sessions, each sending 64 B every 10 ms (paced, not closed-loop) and timing the echo.\n\
             - Handshakes: workers loop TCP connect (+TLS, no session resumption) → websocket handshake with a freshly minted \
             HS256 token (labgate, python-relay check it; nginx and websockify check none) → first echo; closes run in the background.\n\
             - Idle: proxy memory (PSS summed over the process tree) before and after opening {} sessions (websockify {}; it \
             forks per connection), divided by the sessions. {}\n\
             - Scenarios: {}. Each repeat runs every contender with a fresh upstream; the order rotates by one contender per \
             repeat.\n",
            p.rtt_sessions,
            p.idle_sessions,
            p.idle_sessions_forking,
            if p.idle_sessions < 10_000 && !p.smoke {
                "10,000 sessions need 20,000+ descriptors in the proxy; this machine's hard open-files limit allows fewer, hence the count \
                 (limit − 2,000 headroom, ÷ 2: nginx ran out of worker connections at 9,334 sessions with 19,900)."
            } else {
                ""
            },
            p.scenarios
                .iter()
                .map(|s| s.title.clone())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let _ = writeln!(
            md,
            "## Contenders\n\n| Contender | What | Status |\n|---|---|---|"
        );
        for c in &self.contenders {
            let _ = writeln!(md, "| {} | {} | {} |", c.name, c.description, c.status);
        }
        if default_metrics {
            self.metric_tables(&mut md);
        }
        self.crowd_table(&mut md);
        let failures = self.failures();
        if !failures.is_empty() {
            let _ = writeln!(
                md,
                "\n## Failures\n\n| Contender | Repeat | Scenario | Errors | First errors |\n|---|---|---|---|---|"
            );
            for r in failures {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    r.contender,
                    r.repeat,
                    r.scenario,
                    r.result["errors"],
                    r.result["error_samples"].to_string().replace('|', "/")
                );
            }
        }
        if let Some(profile) = &self.profile {
            let _ = writeln!(
                md,
                "\n## Profile: labgate under the many-session throughput scenario\n\n{profile}"
            );
        }
        md
    }

    /// Medians, ratios and the targets of the default run's metrics.
    fn metric_tables(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Results (medians)\n");
        let header: Vec<String> = METRICS
            .iter()
            .map(|m| format!("{} ({})", m.title, m.unit))
            .collect();
        let _ = writeln!(md, "| Contender | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(METRICS.len()));
        for c in self.ran() {
            let cells: Vec<String> = METRICS.iter().map(|m| self.cell(&c.name, m)).collect();
            let _ = writeln!(md, "| {} | {} |", c.name, cells.join(" | "));
        }
        let _ = writeln!(
            md,
            "\n## Ratios\n\nTo direct (throughput) and to tuned nginx of the same transport (plain or TLS); \
            for throughput and handshakes higher is better, for CPU, latency and memory lower is better.\n"
        );
        let _ = writeln!(
            md,
            "| Contender | thr 1 / direct | thr many / direct | thr 1 / nginx | thr many / nginx | CPU/GB 1 / nginx | CPU/GB many / nginx | RTT p99 / nginx | handshakes / nginx | idle KiB / nginx |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in self.ran() {
            let (nginx, direct) = if c.name.ends_with("-prod") {
                ("nginx-prod", "direct-prod")
            } else if c.tls {
                ("nginx-tuned-tls", "direct")
            } else {
                ("nginx-tuned", "direct")
            };
            let r = |metric: &str, reference: &str| match (
                self.value(&c.name, metric),
                self.value(reference, metric),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                r("thr_one", direct),
                r("thr_many", direct),
                r("thr_one", nginx),
                r("thr_many", nginx),
                r("cpu_one", nginx),
                r("cpu_many", nginx),
                r("rtt_p99", nginx),
                r("hs_rate", nginx),
                r("idle_kib", nginx)
            );
        }
        let _ = writeln!(
            md,
            "\n## Targets (issue 5)\n\n| Target | labgate | reference | ratio | met |\n|---|---:|---:|---:|---|"
        );
        for t in &self.targets {
            let f = |v: Option<f64>| v.map(|x| format_number(x, 3)).unwrap_or_else(|| "–".into());
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {met} |",
                t.target,
                f(t.labgate),
                f(t.reference),
                f(t.ratio)
            );
        }
    }

    /// One row per crowd run: sessions, checks at both ends, traffic, proxy memory.
    fn crowd_table(&self, md: &mut String) {
        let runs: Vec<&RunRecord> = self.runs.iter().filter(|r| r.scenario == "crowd").collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## Crowd: sessions open together, traffic on a share, checksums at both ends\n\n\
             Each session is proven with an echo when it opens and again at the end with all open; active ones \
             send pattern bytes and check every echoed byte; each side keeps a byte count and CRC-32 per session \
             and direction, compared per session with the upstream's (`bench-upstream --echo-ledger-file`). Proxy \
             memory: PSS (and RSS) of its process tree; per session = (all open − before) ÷ sessions open.\n"
        );
        let _ = writeln!(
            md,
            "| Contender | Repeat | Sessions open / answering at end | Active | Errors | Pings answered | Traffic MB/s each way | Round trips (p50 / p99 µs) | Bytes verified at both ends (→ VM / ← VM) | Sessions mismatched / missing upstream | Proxy PSS before / all open / traffic / after close (KiB) | KiB per session (PSS / RSS) | fds per session | Proxy RSS all open / with traffic |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---:|---:|---:|---:|---|---|---|---|---|---:|---|"
        );
        let n = |v: &Value| {
            v.as_u64()
                .map(|x| x.to_string())
                .unwrap_or_else(|| "–".into())
        };
        let f = |v: &Value, d: usize| {
            v.as_f64()
                .map(|x| format!("{x:.d$}"))
                .unwrap_or_else(|| "–".into())
        };
        for r in &runs {
            let v = &r.result;
            let up = &v["upstream"];
            let _ = writeln!(
                md,
                "| {} | {} | {} / {} of {} | {} | {} | {} | {} | {} ({} / {}) | {} / {} | {} / {} | {} / {} / {} / {} | {} / {} | {} | {} KiB / {} KiB |",
                r.contender,
                r.repeat,
                n(&v["sessions_open"]),
                n(&v["sessions_answering_at_end"]),
                n(&v["sessions"]),
                n(&v["sessions_active"]),
                n(&v["errors"]),
                n(&v["pings_answered"]),
                f(&v["traffic_mb_per_s_each_way"], 1),
                n(&v["round_trips"]),
                n(&v["rtt_p50_us"]),
                n(&v["rtt_p99_us"]),
                n(&up["bytes_verified_client_to_upstream"]),
                n(&up["bytes_verified_upstream_to_client"]),
                n(&up["sessions_mismatched"]),
                n(&up["sessions_missing"]),
                n(&v["proxy_before"]["pss_kib"]),
                n(&v["proxy_all_open"]["pss_kib"]),
                n(&v["proxy_with_traffic"]["pss_kib"]),
                n(&v["proxy_after_close"]["pss_kib"]),
                f(&v["proxy_kib_per_session"], 1),
                f(&v["proxy_rss_kib_per_session"], 1),
                f(&v["proxy_fds_per_session"], 2),
                n(&v["proxy_rss_kib_all_open"]),
                n(&v["proxy_rss_kib_with_traffic"]),
            );
        }
        for r in &runs {
            if let Some(note) = r.result["limits"]["note"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                let _ = writeln!(md, "\n{} (repeat {}): {note}.", r.contender, r.repeat);
            }
        }
    }

    fn ran(&self) -> impl Iterator<Item = &ContenderStatus> {
        self.contenders
            .iter()
            .filter(|c| !c.status.starts_with("skipped"))
    }

    fn cell(&self, contender: &str, m: &Metric) -> String {
        let Some(s) = self.summary.get(contender).and_then(|s| s.get(m.key)) else {
            return "–".into();
        };
        let digits = match m.unit {
            "s/GB" => 3,
            "KiB" => 1,
            _ => 0,
        };
        match (s.median, s.failed) {
            (Some(v), false) => format_number(v, digits),
            (Some(v), true) => format!("{} (some repeats FAILED)", format_number(v, digits)),
            (None, true) => "FAILED".into(),
            (None, false) => "–".into(),
        }
    }
}

fn format_number(v: f64, digits: usize) -> String {
    if digits == 0 || v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.digits$}")
    }
}
