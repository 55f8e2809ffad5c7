#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine: real upstreams
# (TigerVNC Xvnc, X clients, socat), promtool, Chromium for the browser tests,
# and the browser test page's npm packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  tigervnc-standalone-server # Xvnc: the real VNC server behind the stand-in
  x11-xserver-utils          # xsetroot: a known picture on the VNC screen
  x11-utils                  # xmessage/xdpyinfo for the browser tests
  xterm                      # a window to type into on the VNC screen
  xauth                      # the demo desktop's X cookie (only its holders reach the display)
  socat                      # a real PTY shell as the serial console
  prometheus                 # promtool, to check the /metrics exposition
  chromium                   # headless browser for noVNC and xterm.js
  libnss3-tools              # certutil: Chromium trusts the test CA through an NSS db
  fonts-dejavu-core          # fonts for xterm and chromium
  ca-certificates
  python3-venv               # the chart checks' virtualenv (helm-python-sdk, kubernetes-validate)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The machine image ships Node.js with npm (nodesource); Debian's npm package
# would fight with it, so only install Debian's when there is no node at all.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  ${sudo_cmd:-} apt-get install -y -qq --no-install-recommends nodejs npm
fi

for tool in Xvnc xauth xsetroot xterm socat promtool chromium certutil node npm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is still missing" >&2; exit 1; }
done

if [ -f tests/browser/package-lock.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# The viewer page the gateway embeds: built before cargo builds the gateway (its build.rs
# includes gateway/web/dist/ and re-runs when it changes).
bash scripts/build-viewer.sh
