#!/usr/bin/env bash
# Builds what goes into the labgate container image, the same way in the
# Containerfile and in CI (no container engine runs on CI machines, so CI runs
# this script directly and the image steps cannot rot):
#   1. cargo build --locked --release of both binaries;
#   2. stages them under <root>/usr/local/bin (default target/image-root);
#   3. checks they start, print their version, and need only the C runtime
#      that the distroless "cc" base image provides.
# Usage: bash scripts/build-image.sh [--root DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root=target/image-root
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    *) echo "usage: $0 [--root DIR]" >&2; exit 2 ;;
  esac
done
target_dir="${CARGO_TARGET_DIR:-target}"

if [ ! -f gateway/web/dist/index.html ]; then
  echo "warning: gateway/web/dist is missing: the gateway in this image serves the API only (run scripts/build-viewer.sh)" >&2
fi
echo "== building labgate-gateway and labgate-admission (release, --locked)"
cargo build --locked --release -q -p labgate-gateway -p labgate-admission

rm -rf "$root"
install -d "$root/usr/local/bin"
for bin in labgate-gateway labgate-admission; do
  install -m 0755 "$target_dir/release/$bin" "$root/usr/local/bin/$bin"
  version=$("$root/usr/local/bin/$bin" --version)
  echo "staged $root/usr/local/bin/$bin ($version)"
  # Only glibc's libraries (and the dynamic loader) may be needed: that is
  # what gcr.io/distroless/cc-debian12 ships. Anything else (e.g. libssl)
  # would fail at start in the image.
  unexpected=$(ldd "$root/usr/local/bin/$bin" | awk '{print $1}' \
    | grep -v -E '^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$' || true)
  if [ -n "$unexpected" ]; then
    echo "error: $bin links libraries the runtime image lacks: $unexpected" >&2
    exit 1
  fi
done
echo "image root ready: $root"
