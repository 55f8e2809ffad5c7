#!/usr/bin/env bash
# Builds the viewer page that labgate-gateway embeds: npm ci (pinned noVNC, xterm.js and esbuild
# from gateway/web/package-lock.json), then esbuild into gateway/web/dist/ with content-hashed
# names. Run it before building the gateway; a gateway built without it serves the API only.
# Needs Node.js >= 20 and npm.
set -euo pipefail
cd "$(dirname "$0")/../gateway/web"
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "error: the viewer needs Node.js >= 20 and npm (apt-get install nodejs npm)" >&2
  exit 1
fi
echo "== viewer page: npm ci + esbuild (gateway/web -> gateway/web/dist)"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs
