//! What one benchmark run measures: the scenarios with their parameters (full or smoke),
//! and the metrics the report derives from the load generator's JSON.

use serde::Serialize;

/// One scenario: the arguments given to `bench-load` for it.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub title: String,
    /// Arguments after the scenario name (`throughput`, `rtt`, ...).
    pub load_args: Vec<String>,
    pub load_command: &'static str,
    /// Part of a run that names no scenarios (`--scenarios`); long, single-purpose ones are not.
    pub in_default_run: bool,
}

/// The crowd scenario's target: sessions held open at once through one proxy.
pub const CROWD_TARGET: usize = 10_000;
/// Descriptors a proxy needs besides two per session: listeners, epoll, eventfds, its log,
/// the files it watches for reloads.
pub const PROXY_FD_RESERVE: u64 = 20;

/// How many sessions the crowd holds by default: [`CROWD_TARGET`], or what `open_files`
/// allows a proxy holding two descriptors per session; and whether the limit capped it.
pub fn crowd_sessions(open_files: u64) -> (usize, bool) {
    let allowed = (open_files.saturating_sub(PROXY_FD_RESERVE) / 2) as usize;
    (allowed.min(CROWD_TARGET), allowed < CROWD_TARGET)
}

/// Durations and sizes for a run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub smoke: bool,
    pub repeats: usize,
    pub many_sessions: usize,
    pub rtt_sessions: usize,
    pub idle_sessions: usize,
    /// websockify forks a process per connection; its idle count is capped to keep the machine usable.
    pub idle_sessions_forking: usize,
    /// Sessions of the crowd scenario (when it runs) and whether the open-files limit capped them.
    pub crowd_sessions: usize,
    pub crowd_capped_by_open_files: bool,
    pub scenarios: Vec<Scenario>,
}

impl Plan {
    /// `open_files` is the per-process hard limit: a proxy needs two descriptors per session.
    /// `only` names the scenarios to run (by id); empty means every scenario of the default run.
    /// `crowd` overrides the crowd's session count.
    ///
    /// # Errors
    /// A scenario id in `only` that does not exist.
    pub fn new(
        smoke: bool,
        repeats: Option<usize>,
        open_files: u64,
        only: &[String],
        crowd: Option<usize>,
    ) -> anyhow::Result<Self> {
        // Two descriptors per proxied session, and headroom: nginx needs about 2.1 connections
        // per upgraded session ("worker_connections are not enough" at 9,334 of 19,900).
        let fd_cap = (open_files.saturating_sub(2_000) / 2) as usize;
        let (secs, warm, many, rtt_n, hs_c, idle, idle_fork) = if smoke {
            ("0.3", "0.1", 2, 4, 4, 100, 10)
        } else {
            ("3", "1", 50, 50, 32, 10_000, 200)
        };
        let idle = idle.min(fd_cap);
        let (crowd_default, crowd_capped) = crowd_sessions(open_files);
        let crowd_sessions = match (crowd, smoke) {
            (Some(n), _) => n,
            (None, true) => 100,
            (None, false) => crowd_default,
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let scenarios = vec![
            Scenario {
                id: "thr-one",
                title: "throughput, 1 session".into(),
                load_command: "throughput",
                in_default_run: true,
                load_args: s(&["--sessions", "1", "--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "thr-many",
                title: format!("throughput, {many} sessions"),
                load_command: "throughput",
                in_default_run: true,
                load_args: s(&[
                    "--sessions",
                    &many.to_string(),
                    "--seconds",
                    secs,
                    "--warmup",
                    warm,
                ]),
            },
            Scenario {
                id: "rtt",
                title: format!("round trip, {rtt_n} sessions, 64 B every 10 ms each"),
                load_command: "rtt",
                in_default_run: true,
                load_args: s(&[
                    "--sessions",
                    &rtt_n.to_string(),
                    "--seconds",
                    secs,
                    "--warmup",
                    warm,
                ]),
            },
            Scenario {
                id: "handshake",
                title: format!("handshakes, {hs_c} concurrent workers"),
                load_command: "handshake",
                in_default_run: true,
                load_args: s(&[
                    "--concurrency",
                    &hs_c.to_string(),
                    "--seconds",
                    secs,
                    "--warmup",
                    warm,
                ]),
            },
            Scenario {
                id: "handshake-seq",
                title: "handshakes, one after another".into(),
                load_command: "handshake",
                in_default_run: true,
                load_args: s(&["--concurrency", "1", "--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "first-byte",
                title: "time to first screen byte, one session after another".into(),
                load_command: "first-byte",
                in_default_run: true,
                load_args: s(&["--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "idle",
                title: format!("idle sessions ({idle}; websockify {idle_fork})"),
                load_command: "idle",
                in_default_run: true,
                load_args: if smoke {
                    s(&["--settle", "0.1", "--after-close", "0.1"])
                } else {
                    s(&["--settle", "2"])
                },
            },
            // Long, and only meaningful through one gateway (labgate-prod, labgate): run by name.
            Scenario {
                id: "crowd",
                title: format!(
                    "crowd: {crowd_sessions} sessions open together, traffic on 10 % of them, checksums at both ends"
                ),
                load_command: "crowd",
                in_default_run: false,
                // `--sessions` comes from the runner (crowd_sessions; websockify fewer).
                load_args: if smoke {
                    s(&["--seconds", "1", "--settle", "0.1", "--after-close", "0.1"])
                } else {
                    s(&["--seconds", "60"])
                },
            },
        ];
        let scenarios: Vec<Scenario> = if only.is_empty() {
            scenarios.into_iter().filter(|s| s.in_default_run).collect()
        } else {
            if let Some(unknown) = only.iter().find(|o| !scenarios.iter().any(|s| s.id == *o)) {
                let known: Vec<&str> = scenarios.iter().map(|s| s.id).collect();
                anyhow::bail!(
                    "no scenario {unknown:?}; the scenarios are {}",
                    known.join(", ")
                );
            }
            scenarios
                .into_iter()
                .filter(|s| only.iter().any(|o| o == s.id))
                .collect()
        };
        Ok(Self {
            smoke,
            repeats: repeats.unwrap_or(if smoke { 1 } else { 3 }),
            many_sessions: many,
            rtt_sessions: rtt_n,
            idle_sessions: idle,
            idle_sessions_forking: idle_fork.min(idle),
            crowd_sessions,
            crowd_capped_by_open_files: crowd.is_none() && !smoke && crowd_capped,
            scenarios,
        })
    }

    /// Whether the scenario `id` is part of this run.
    pub fn runs(&self, id: &str) -> bool {
        self.scenarios.iter().any(|s| s.id == id)
    }
}

/// A number the report shows per contender: the median of one field of one scenario's JSON.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Metric {
    pub key: &'static str,
    pub scenario: &'static str,
    pub field: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

pub const METRICS: &[Metric] = &[
    Metric {
        key: "thr_one",
        scenario: "thr-one",
        field: "mb_per_s",
        title: "Throughput 1 session",
        unit: "MB/s",
        higher_is_better: true,
    },
    Metric {
        key: "thr_many",
        scenario: "thr-many",
        field: "mb_per_s",
        title: "Throughput many sessions",
        unit: "MB/s",
        higher_is_better: true,
    },
    Metric {
        key: "cpu_one",
        scenario: "thr-one",
        field: "proxy_cpu_s_per_gb",
        title: "Proxy CPU, 1 session",
        unit: "s/GB",
        higher_is_better: false,
    },
    Metric {
        key: "cpu_many",
        scenario: "thr-many",
        field: "proxy_cpu_s_per_gb",
        title: "Proxy CPU, many sessions",
        unit: "s/GB",
        higher_is_better: false,
    },
    Metric {
        key: "rtt_p50",
        scenario: "rtt",
        field: "p50_us",
        title: "RTT p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "rtt_p99",
        scenario: "rtt",
        field: "p99_us",
        title: "RTT p99",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "rtt_max",
        scenario: "rtt",
        field: "max_us",
        title: "RTT max",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "hs_rate",
        scenario: "handshake",
        field: "per_second",
        title: "Handshakes",
        unit: "/s",
        higher_is_better: true,
    },
    Metric {
        key: "hs_cpu",
        scenario: "handshake",
        field: "proxy_cpu_us_per_handshake",
        title: "Proxy CPU per handshake",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "hs_up_cpu",
        scenario: "handshake",
        field: "upstream_cpu_us_per_handshake",
        title: "Upstream CPU per handshake (HTTPS stand-in)",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "hs_up_resumed",
        scenario: "handshake",
        field: "upstream_tls_resumed",
        title: "Upstream TLS sessions resumed (bursts)",
        unit: "",
        higher_is_better: true,
    },
    Metric {
        key: "hs_up_full",
        scenario: "handshake",
        field: "upstream_tls_full",
        title: "Upstream full TLS handshakes (bursts)",
        unit: "",
        higher_is_better: false,
    },
    Metric {
        key: "hs_seq_rate",
        scenario: "handshake-seq",
        field: "per_second",
        title: "Handshakes, sequential",
        unit: "/s",
        higher_is_better: true,
    },
    Metric {
        key: "hs_seq_cpu",
        scenario: "handshake-seq",
        field: "proxy_cpu_us_per_handshake",
        title: "Proxy CPU per handshake, sequential",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "first_byte_p50",
        scenario: "first-byte",
        field: "p50_us",
        title: "Time to first screen byte p50",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "first_byte_p99",
        scenario: "first-byte",
        field: "p99_us",
        title: "Time to first screen byte p99",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        key: "idle_kib",
        scenario: "idle",
        field: "proxy_kib_per_session",
        title: "Memory per idle session",
        unit: "KiB",
        higher_is_better: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(plan: &Plan) -> Vec<&'static str> {
        plan.scenarios.iter().map(|s| s.id).collect()
    }

    #[test]
    fn the_crowd_runs_only_by_name() {
        let full = Plan::new(false, None, 20_000, &[], None).unwrap();
        assert!(!full.runs("crowd"));
        assert!(full.runs("idle") && full.runs("thr-one"));
        let crowd = Plan::new(false, Some(1), 20_000, &["crowd".into()], None).unwrap();
        assert_eq!(ids(&crowd), ["crowd"]);
        assert_eq!(crowd.crowd_sessions, 9_990);
        assert!(crowd.crowd_capped_by_open_files);
        let both = Plan::new(true, None, 20_000, &["idle".into(), "crowd".into()], None).unwrap();
        assert_eq!(ids(&both), ["idle", "crowd"]);
        let err = Plan::new(false, None, 20_000, &["crowds".into()], None).unwrap_err();
        assert!(err.to_string().contains("idle, crowd"), "{err}");
        let chosen = Plan::new(false, None, 20_000, &["crowd".into()], Some(5_000)).unwrap();
        assert_eq!(chosen.crowd_sessions, 5_000);
        assert!(!chosen.crowd_capped_by_open_files);
    }

    #[test]
    fn crowd_sessions_follow_the_open_files_limit() {
        assert_eq!(crowd_sessions(20_000), (9_990, true));
        assert_eq!(crowd_sessions(1_048_576), (CROWD_TARGET, false));
        assert_eq!(crowd_sessions(20_020), (CROWD_TARGET, false));
        assert_eq!(crowd_sessions(10), (0, true));
    }
}
