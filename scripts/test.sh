#!/usr/bin/env bash
# Runs every test of shardcast: unit tests, integration tests against the real
# server, the standard-client tests (Python websockets, Node ws), the metrics
# test (Python prometheus_client parses /metrics), the Prometheus test
# (promtool, and a real Prometheus answering the documented queries), the
# dashboard test (headless Chromium via npm playwright-core), then
# Autobahn|Testsuite's conformance cases (scripts/autobahn.sh). Installs what
# those need when it is missing (pip, npm; apt-get for node, python3,
# chromium, prometheus, redis-server and nats-server).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v chromium >/dev/null || need_apt+=(chromium)
{ command -v prometheus && command -v promtool; } >/dev/null || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v ip >/dev/null || need_apt+=(iproute2)
if ((${#need_apt[@]})); then
  echo "installing with apt-get: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! python3 -c 'import websockets, prometheus_client, msgpack' 2>/dev/null; then
  echo "installing Python websockets, prometheus_client and msgpack"
  python3 -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
fi

if [ ! -d tests/clients/node_modules/ws ] || [ ! -d tests/clients/node_modules/playwright-core ] \
  || [ ! -d tests/clients/node_modules/fossil-delta ] || [ ! -d tests/clients/node_modules/@msgpack/msgpack ]; then
  echo "installing Node ws, playwright-core, fossil-delta and @msgpack/msgpack"
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
fi

# No doc-tests (there are none); end with one total line over every binary.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# WebSocket conformance of the server the tests just built (Autobahn cases
# 1-10 against a raw room; results must match scripts/autobahn/expected.json).
if ((status == 0)) && (($# == 0)); then
  bash scripts/autobahn.sh target/debug/shardcast || status=$?
fi
exit "$status"
