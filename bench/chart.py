"""Draws bench/results/chart.png from results.json (medians per contender and metric)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("thr_one", "Throughput, 1 session (MB/s, higher is better)", False),
    ("thr_many", "Throughput, many sessions (MB/s, higher is better)", False),
    ("cpu_many", "Proxy CPU per GB, many sessions (s/GB, lower is better)", False),
    ("rtt_p99", "RTT p99 (µs, log scale, lower is better)", True),
    ("hs_rate", "Handshakes per second (higher is better)", False),
    ("idle_kib", "Proxy memory per idle session (KiB, log scale)", True),
]


def main(src, dst):
    with open(src) as f:
        results = json.load(f)
    names = [c["name"] for c in results["contenders"] if not c["status"].startswith("skipped")]
    summary = results["summary"]
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    for ax, (key, title, log) in zip(axes.flat, PANELS):
        values = [(summary.get(n, {}).get(key) or {}).get("median") for n in names]
        shown = [(n, v) for n, v in zip(names, values) if v is not None and v > 0]
        colors = ["#d62728" if n.startswith("labgate") else "#1f77b4" if n.startswith("nginx") else "#7f7f7f" for n, _ in shown]
        ax.barh([n for n, _ in shown], [v for _, v in shown], color=colors)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        for i, (_, v) in enumerate(shown):
            ax.text(v, i, f" {v:,.0f}" if v >= 10 else f" {v:.2f}", va="center", fontsize=8)
        ax.margins(x=0.25)
    fig.suptitle(f"labgate benchmark ({results['mode']}, medians of {results['plan']['repeats']} repeats, {results['started_utc']} UTC)")
    fig.tight_layout()
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
