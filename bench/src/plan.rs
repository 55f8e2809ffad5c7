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
    pub scenarios: Vec<Scenario>,
}

impl Plan {
    /// `open_files` is the per-process hard limit: a proxy needs two descriptors per session.
    pub fn new(smoke: bool, repeats: Option<usize>, open_files: u64) -> Self {
        // Two descriptors per proxied session, and headroom: nginx needs about 2.1 connections
        // per upgraded session ("worker_connections are not enough" at 9,334 of 19,900).
        let fd_cap = (open_files.saturating_sub(2_000) / 2) as usize;
        let (secs, warm, many, rtt_n, hs_c, idle, idle_fork) = if smoke {
            ("0.3", "0.1", 2, 4, 4, 100, 10)
        } else {
            ("3", "1", 50, 50, 32, 10_000, 200)
        };
        let idle = idle.min(fd_cap);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let scenarios = vec![
            Scenario {
                id: "thr-one",
                title: "throughput, 1 session".into(),
                load_command: "throughput",
                load_args: s(&["--sessions", "1", "--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "thr-many",
                title: format!("throughput, {many} sessions"),
                load_command: "throughput",
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
                load_args: s(&["--concurrency", "1", "--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "first-byte",
                title: "time to first screen byte, one session after another".into(),
                load_command: "first-byte",
                load_args: s(&["--seconds", secs, "--warmup", warm]),
            },
            Scenario {
                id: "idle",
                title: format!("idle sessions ({idle}; websockify {idle_fork})"),
                load_command: "idle",
                load_args: if smoke {
                    s(&["--settle", "0.1", "--after-close", "0.1"])
                } else {
                    s(&["--settle", "2"])
                },
            },
        ];
        Self {
            smoke,
            repeats: repeats.unwrap_or(if smoke { 1 } else { 3 }),
            many_sessions: many,
            rtt_sessions: rtt_n,
            idle_sessions: idle,
            idle_sessions_forking: idle_fork.min(idle),
            scenarios,
        }
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
