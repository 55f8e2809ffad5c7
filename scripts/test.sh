#!/usr/bin/env bash
# Runs every check and test of labgate. Fails loudly on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== helm chart (real Helm engine, strict Kubernetes schemas)"
bash scripts/chart-test.sh
echo "== cargo test"
cargo test --workspace
if [ -f bench/run.sh ]; then
  echo "== benchmark smoke run"
  bash bench/run.sh --smoke
fi
echo "== container image contents (the Containerfile's build step)"
bash scripts/build-image.sh
echo "== all tests passed"
