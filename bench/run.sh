#!/usr/bin/env bash
# One command for the labgate benchmarks: installs the contenders (nginx, websockify, the Python
# relay's packages, perf), builds labgate and the bench tools in release mode, runs every scenario
# against every contender and writes RESULTS.md, results.json and chart.png.
#   bash bench/run.sh           full run (3 repeats, ~12 min) -> bench/results/
#   bash bench/run.sh --smoke   functional check (~1 min after the build, a 10 s bench-soak
#                               included) -> target/labgate-bench/smoke/
#   bash bench/run.sh --only labgate-prod --scenarios crowd --repeats 1   -> bench/results/crowd/
# Extra arguments go to bench-run (e.g. --only labgate,nginx-tuned --repeats 1). A run that names
# its scenarios writes to bench/results/<scenarios>/ unless --out says where, so it never
# overwrites the full run's bench/results/RESULTS.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$target_dir/labgate-bench"
venv="$work/venv"

smoke=0
args=()
scenarios=""
out=""
expect=""
for a in "$@"; do
    case "$expect" in
        scenarios) scenarios="$a"; expect=""; args+=("$a"); continue ;;
        out) out="$a"; expect=""; continue ;;
    esac
    case "$a" in
        --smoke) smoke=1 ;;
        --scenarios) expect=scenarios; args+=("$a") ;;
        --scenarios=*) scenarios="${a#--scenarios=}"; args+=("$a") ;;
        --out) expect=out ;;
        --out=*) out="${a#--out=}" ;;
        *) args+=("$a") ;;
    esac
done

log() { echo "bench/run.sh: $*" >&2; }

# The profile and the chart belong to the default scenarios (thr-many, thr-one).
default_scenarios=1
case ",$scenarios," in
    ,,|*,thr-one,*|*,thr-many,*) ;;
    *) default_scenarios=0 ;;
esac

# 1. Debian packages: nginx (the reference proxy), taskset, and perf for the full run's profile.
apt_packages=()
command -v nginx >/dev/null 2>&1 || apt_packages+=(nginx-light)
command -v taskset >/dev/null 2>&1 || apt_packages+=(util-linux)
if [ "$smoke" = 0 ] && [ "$default_scenarios" = 1 ] && ! command -v perf >/dev/null 2>&1; then apt_packages+=(linux-perf); fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_packages+=(python3-venv python3-pip); fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    log "installing ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

# 2. Python contenders (pinned) in a private virtualenv; matplotlib only for the full run's chart.
mkdir -p "$work"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
requirements=(-r bench/requirements.txt)
[ "$smoke" = 1 ] || [ "$default_scenarios" = 0 ] || requirements+=(-r bench/requirements-chart.txt)
"$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]}"

# 3. Release builds of labgate and the bench tools.
log "building labgate-gateway and labgate-bench (release)"
cargo build --release -q -p labgate-gateway -p labgate-bench

# 4. A proxy holds two descriptors per session: take the highest limit we may.
ulimit -n "$(ulimit -Hn)"

# 5. Run.
if [ "$smoke" = 1 ]; then
    out="${out:-$work/smoke}"
    run_args=(--smoke)
    # A 10-second soak (churn, revocations, trend report) so bench-soak cannot rot.
    log "running bench-soak --seconds 10 -> $out/soak"
    "$target_dir/release/bench-soak" --seconds 10 --out "$out/soak" >/dev/null
elif [ -n "$scenarios" ]; then
    out="${out:-$root/bench/results/${scenarios//,/-}}"
    run_args=(--profile)
else
    out="${out:-$root/bench/results}"
    run_args=(--profile)
fi
log "running (${run_args[*]}) -> $out"
exec "$target_dir/release/bench-run" "${run_args[@]}" \
    --out "$out" \
    --bin-dir "$target_dir/release" \
    --venv "$venv" \
    --bench-dir "$root/bench" \
    --work "$work/work" \
    ${args[@]+"${args[@]}"}
