#!/bin/sh
# Prepares a checkout for `npm start`, `npm test` and `npm run bench`:
# node dependencies, nats-server (plus curl, socat, openssl and promtool for
# some tests), and a fresh build in dist/. Idempotent and quiet when nothing is missing.
set -eu

cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*"; }
warn() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- Node ---------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1; then
  warn 'node not found: install Node.js 22 or 24'
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  warn "Node.js $(node --version) is too old: 22 or 24 is required"
  exit 1
fi
# 20 still runs everything, but it is past end of life and no longer tested.
if [ "$node_major" -lt 22 ]; then
  warn "Node.js $(node --version) is past end of life and untested; use 22 or 24"
fi

# --- node_modules -------------------------------------------------------------
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] ||
  [ -n "$(find package-lock.json -newer node_modules/.package-lock.json 2>/dev/null)" ]; then
  say 'installing node dependencies (npm ci)'
  npm ci --no-audit --no-fund --loglevel=error
fi

# --- system packages ----------------------------------------------------------
is_root() { [ "$(id -u)" = 0 ]; }
have_apt() { command -v apt-get >/dev/null 2>&1; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_nats_server() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    [ -f "$NATS_SERVER_BIN" ] && [ -x "$NATS_SERVER_BIN" ]
    return
  fi
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || [ -x /usr/local/bin/nats-server ]
}

if ! find_nats_server; then
  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    warn "NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file"
    exit 1
  fi
  if is_root && have_apt; then
    say 'installing nats-server (apt-get)'
    apt_install nats-server
  fi
  if ! find_nats_server; then
    warn 'nats-server not found: install it with `sudo apt-get install nats-server` or set NATS_SERVER_BIN'
    exit 1
  fi
fi

missing_tools=
for tool in curl socat openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing_tools="$missing_tools $tool"
done
if [ -n "$missing_tools" ]; then
  if is_root && have_apt; then
    say "installing${missing_tools} (apt-get)"
    # shellcheck disable=SC2086 # word splitting intended
    apt_install $missing_tools
  else
    warn "missing${missing_tools}: some tests need them (sudo apt-get install${missing_tools})"
  fi
fi

# promtool lints /metrics and tests the alert rules under deploy/prometheus;
# Debian ships it in the "prometheus" package.
if ! command -v promtool >/dev/null 2>&1; then
  if is_root && have_apt; then
    say 'installing promtool (apt-get: prometheus)'
    apt_install prometheus
  else
    warn 'missing promtool: the metrics lint and alert-rule tests need it (sudo apt-get install prometheus)'
  fi
fi

# --- build --------------------------------------------------------------------
npm run build --silent
