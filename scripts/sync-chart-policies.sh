#!/usr/bin/env bash
# Copies the manifests that have one definition in policies/manifests/ into the
# Helm chart (Helm cannot read files outside the chart). The chart test fails
# when the copies differ, so run this after changing anything in policies/manifests/.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in validating-webhook.yaml baseline-admin-network-policy.yaml; do
  cp "policies/manifests/$f" "helm/labgate/files/$f"
done
echo "synced policies/manifests -> helm/labgate/files"
