#!/usr/bin/env bash
# Checks the Helm chart with the real Helm engine (PyPI helm-python-sdk, no
# helm binary needed) and the Kubernetes schemas (kubernetes-validate --strict):
# renders seven value sets, lints, validates every object, asserts RBAC,
# pod security and the webhook's single definition. Installs its tools into
# target/chart-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/chart-venv
if [ ! -x "$venv/bin/pytest" ]; then
  echo "creating $venv (helm-python-sdk, kubernetes-validate, pytest)"
  python3 -m venv "$venv" || { echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
fi
exec "$venv/bin/pytest" -q tests/chart "$@"
