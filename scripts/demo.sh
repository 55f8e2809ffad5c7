#!/usr/bin/env bash
# Runs the labgate demo with a real desktop: installs TigerVNC's Xvnc, xauth,
# xterm and xsetroot (and Node.js/npm for the viewer page) if they are missing
# (Debian/Ubuntu, via apt-get; root or sudo), builds the viewer page and the
# release binary, and starts `labgate-gateway --demo`, which prints the viewer
# URL. Ctrl-C stops the gateway and everything it started.
# Extra arguments go to the gateway, e.g. `bash scripts/demo.sh --listen 127.0.0.1:9090`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

packages=(tigervnc-standalone-server xauth xterm x11-xserver-utils)
missing=()
for tool_package in Xvnc:tigervnc-standalone-server xauth:xauth xterm:xterm xsetroot:x11-xserver-utils; do
  command -v "${tool_package%%:*}" >/dev/null || missing+=("${tool_package#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "demo: installing the desktop's packages: ${missing[*]} (apt-get, ${sudo_cmd:-as root})"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "demo: no apt-get here; install ${packages[*]} (or your system's TigerVNC Xvnc, xauth," \
      "xterm and xsetroot) for the desktop. Starting with the shells only." >&2
  fi
fi

# The viewer page (noVNC + xterm.js) is bundled with npm and embedded in the binary.
# Rebuilt only when its sources are newer than the last bundle.
web=gateway/web
if [ ! -f "$web/dist/index.html" ] ||
  [ -n "$(find "$web/src" "$web/index.html" "$web/build.mjs" "$web/package-lock.json" \
    -newer "$web/dist/index.html" 2>/dev/null | head -1)" ]; then
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    if command -v apt-get >/dev/null; then
      sudo_cmd=""
      [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
      echo "demo: installing Node.js and npm to build the viewer page (apt-get, ${sudo_cmd:-as root})"
      export DEBIAN_FRONTEND=noninteractive
      $sudo_cmd apt-get update -qq
      $sudo_cmd apt-get install -y -qq --no-install-recommends nodejs npm
    fi
  fi
  echo "demo: building the viewer page (npm ci + esbuild, pinned versions)"
  if ! bash scripts/build-viewer.sh; then
    echo "demo: the viewer page did not build (it needs Node.js >= 20 and npm); the demo" \
      "will serve the websocket API only" >&2
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "demo: cargo is missing: install Rust from https://rustup.rs, then run this again" >&2
  exit 1
fi

echo "demo: building labgate-gateway (release; the first build takes a few minutes)"
cargo build --release -q -p labgate-gateway
echo "demo: built after $(($(date +%s) - started))s; starting the gateway"
# exec: Ctrl-C reaches the gateway directly, and it stops what it started.
exec "${CARGO_TARGET_DIR:-target}/release/labgate-gateway" --demo "$@"
