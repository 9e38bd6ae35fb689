#!/usr/bin/env bash
# Runs every test of shardcast: unit tests, integration tests against the real
# server, the standard-client tests (Python websockets, Node ws), the metrics
# test (Python prometheus_client parses /metrics), the Prometheus test
# (promtool, and a real Prometheus answering the documented queries), the
# dashboard test (headless Chromium via npm playwright-core), then
# Autobahn|Testsuite's conformance cases (scripts/autobahn.sh). Every step
# runs even after a failure; the closing line (scripts/test-summary) says how
# many tests passed and failed and which binaries or steps failed or did not
# run, and the exit status is non-zero if any did. Installs what
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

# Every test binary runs even after one fails (--no-fail-fast), and
# Autobahn after them; the closing line counts the tests and names what
# failed, what crashed and what did not run. No doc-tests (there are none).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
# WebSocket conformance of the server the tests just built (Autobahn cases
# 1-10, 12 and 13 against a raw room; results must match
# scripts/autobahn/expected.json), whatever the tests' outcome.
if (($#)); then
  autobahn="not run (extra cargo test arguments)"
elif [ ! -x target/debug/shardcast ] || grep -qE '^error(\[E[0-9]+\])?: could not compile' "$log"; then
  autobahn="not run (the build failed)"
  status=1
elif bash scripts/autobahn.sh target/debug/shardcast; then
  autobahn=ok
else
  autobahn=failed
  status=1
fi
filtered=()
(($#)) && filtered=(--filtered)
python3 scripts/test-summary "$log" "${filtered[@]}" --step "autobahn=$autobahn" || status=1
exit "$status"
