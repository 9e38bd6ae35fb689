#!/usr/bin/env bash
# Benchmarks shardcast and its peers under the same load generator, in one run.
#
#   scripts/bench.sh [--quick] [--runs N] [--servers a,b,..] [--publish] [scenario...]
#
# A run never touches a tracked file: its results and its own report
# (BENCHMARKS.md, charts) go to a new directory, bench-results/<date>-<time>
# (-quick for --quick, which git ignores), or $BENCH_OUT. --publish is the
# deliberate step that then regenerates the committed report from this run
# (the generated part of BENCHMARKS.md and docs/bench/*.png; the
# hand-written sections are kept), as `scripts/report DIR --publish` does.
#
# Scenarios: fanout rooms idle connect-storm shards inflight bytes cluster
# (default: all but bytes and cluster).
# FANOUT_SUBS="1000" limits fanout to those subscriber counts.
# Servers:   shardcast-json shardcast-raw node-ws tokio-tungstenite
#            python-websockets nats shardcast-tls node-ws-tls shardcast-auth
#            (default: all).
# shardcast-tls and node-ws-tls are shardcast (JSON protocol) and the Node ws
# peer serving wss:// with a self-signed certificate for localhost, made once
# per bench run in bench-results/<date>/.tls/ (removed at the end, never
# committed); the generator speaks TLS to them (--tls-ca). They run in fanout
# and idle only and are skipped in the other scenarios. shardcast-auth is
# shardcast-json with connection tokens required (--jwt-secret); every
# generator connection presents an HS256 token.
# bytes: bytes on the wire and server CPU per delivery for three payload
# shapes (a ~100 B tick, a ~1 KB chat line, a ~10 KB order book), over
# BYTES_SERVERS (default shardcast-json, shardcast-json-deflate,
# shardcast-json-delta, shardcast-json-msgpack, node-ws, node-ws-deflate, nats,
# nats-deflate). A
# -deflate server is the same server with permessage-deflate negotiated: the
# generator offers it as a browser does and inflates (Node ws and NATS
# compress per connection); -delta: subscribers ask for fossil deltas
# (?delta=fossil) and rebuild each publication; -msgpack: subscribers speak
# MessagePack (shardcast.msgpack); -batch (any scenario):
# subscribers ask for batched envelopes (?batch=1). BYTES_RATES="chat:30 ..."
# picks shapes and their publication rates (default tick:100 chat:100
# book:10).
# cluster: three shardcast nodes (--engine redis, one shard each, on the
# server core) through one redis-server (on the generator's core):
# publishers on node a, subscribers on nodes b and c, beside one node alone
# (the memory engine) in the same run, at
# CLUSTER_POINTS (default "1000:100 10:10000 1:100000", subscribers:rate).
# Server CPU is the four processes' together.
# inflight: shardcast's raw rooms beside the uWebSockets peer (server `uws`,
# benches/peers/uws/server.cpp built by benches/peers/uws/build.sh, run from
# UWS_BIN=path, which this script does
# not build; without UWS_BIN only shardcast-raw runs, with a message), 64-byte
# payloads, at INFLIGHT_POINTS (default "100:w32 1000:w32 100:w1000
# 1000:r100": subscribers, then wN = flat out with at most N publications in
# flight, rN = N publications/s). Servers alternate run by run.
# SHARDCAST_BIN=path runs that shardcast server binary instead of the one
# built here. Each server is pinned to core 0 and the generator
# (shardcast-bench) to core 1; each point runs --runs times (default 3).
# Results: one JSON file per run, then scripts/report turns them into the
# run's BENCHMARKS.md beside them. --quick shrinks every scenario to finish
# in a few minutes (after the release build: 5-10 minutes from scratch on 2
# cores, with cargo's progress shown).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
PUBLISH=0
RUNS=3
SERVERS="shardcast-json,shardcast-raw,node-ws,tokio-tungstenite,python-websockets,nats,shardcast-tls,node-ws-tls,shardcast-auth"
SHARDCAST=${SHARDCAST_BIN:-target/release/shardcast}
SCENARIOS=()
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --publish) PUBLISH=1 ;;
    --runs) RUNS=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    -h|--help) sed -n '2,57p' "$0"; exit 0 ;;
    *) SCENARIOS+=("$1") ;;
  esac
  shift
done
((${#SCENARIOS[@]})) || SCENARIOS=(fanout rooms idle connect-storm shards inflight)
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"

# A new directory per run: an earlier run's results (committed or not) are
# never overwritten.
SUFFIX=""
((QUICK)) && SUFFIX=-quick
OUT=${BENCH_OUT:-bench-results/$(date +%Y-%m-%d-%H%M%S)$SUFFIX}
mkdir -p "$OUT"
SERVER_CPU=0
GEN_CPU=1
if (($(nproc) < 2)); then GEN_CPU=0; echo "warning: one CPU: server and generator share it" >&2; fi

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The TLS servers' certificate and key (made by setup when one is selected).
TLS_DIR="$OUT/.tls"
TLS_CERT="$TLS_DIR/cert.pem"
TLS_KEY="$TLS_DIR/key.pem"
is_tls() { [[ "$1" == *-tls ]]; }
is_auth() { [[ "$1" == *-auth ]]; }

# shardcast-auth: connection tokens on (HS256), every generator connection
# presents one with ?token= (permissions: every channel).
JWT_SECRET="bench-secret-$(date +%s)-0123456789abcdefghij"
mint_token() {
  python3 - "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400,
                       "channels": {"sub": [">"], "pub": [">"]}}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
}

# ---- set-up: build and install everything the servers need ----------------
setup() {
  log "building shardcast (release; 5-10 minutes from scratch on 2 cores)"
  cargo build --release --locked --bins
  local bytes_list=()
  [[ " ${SCENARIOS[*]} " == *" bytes "* ]] && IFS=, read -r -a bytes_list <<<"${BYTES_SERVERS:-node-ws,nats}"
  if [[ " ${SCENARIOS[*]} " == *" cluster "* ]]; then
    command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
  fi
  for s in "${SERVER_LIST[@]}" "${bytes_list[@]}"; do
    is_tls "$s" && make_certificate
    case "$(base_of "$s")" in
      node-ws|node-ws-tls)
        command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
        [ -d benches/peers/node-ws/node_modules/ws ] || (cd benches/peers/node-ws && npm ci --no-audit --no-fund --loglevel=error) ;;
      python-websockets)
        python3 -c 'import websockets' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check -r benches/peers/python-websockets/requirements.txt ;;
      tokio-tungstenite)
        log "building the tokio-tungstenite peer"
        (cd benches/peers/tokio-tungstenite && cargo build --release --locked) ;;
      nats)
        command -v nats-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; } ;;
    esac
  done
}

# A self-signed P-256 certificate for localhost and 127.0.0.1, valid 2 days,
# made once per bench run. CA:FALSE: the generator (webpki) refuses a CA
# certificate as a server's own.
make_certificate() {
  [ -n "${TLS_MADE:-}" ] && return 0
  command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  echo '*' >"$TLS_DIR/.gitignore"
  trap 'rm -rf "$TLS_DIR"' EXIT
  log "making a self-signed certificate in $TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null
  TLS_MADE=1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts server $1 (extra shardcast args in $2) on port $3; sets SERVER_PID
# (the process to measure) and RUNNER_PID (the one to signal).
start_server() {
  local name=$1 extra=$2 port=$3 logf="$OUT/.server.log"
  # A -deflate server is its base server with compression negotiated; a
  # -delta one, with deltas asked for.
  name=${name%-delta}
  name=${name%-batch}
  name=${name%-msgpack}
  if [[ "$name" == *-deflate ]]; then
    name=${name%-deflate}
    export PERMESSAGE_DEFLATE=1 NATS_WS_COMPRESSION=true
  else
    unset PERMESSAGE_DEFLATE NATS_WS_COMPRESSION
  fi
  case "$name" in
    shardcast-json|shardcast-raw)
      taskset -c "$SERVER_CPU" "$SHARDCAST" serve --listen "127.0.0.1:$port" --shards 1 $extra >"$logf" 2>&1 & ;;
    shardcast-auth)
      taskset -c "$SERVER_CPU" "$SHARDCAST" serve --listen "127.0.0.1:$port" --shards 1 \
        --jwt-secret "$JWT_SECRET" $extra >"$logf" 2>&1 & ;;
    shardcast-tls)
      taskset -c "$SERVER_CPU" "$SHARDCAST" serve --listen "127.0.0.1:$port" --shards 1 \
        --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY" $extra >"$logf" 2>&1 & ;;
    shardcast-shards-*)
      local n=${name#shardcast-shards-}
      "$SHARDCAST" serve --listen "127.0.0.1:$port" --shards "$n" $extra >"$logf" 2>&1 & ;;
    node-ws)
      taskset -c "$SERVER_CPU" node benches/peers/node-ws/server.mjs "$port" >"$logf" 2>&1 & ;;
    node-ws-tls)
      TLS_CERT="$TLS_CERT" TLS_KEY="$TLS_KEY" \
        taskset -c "$SERVER_CPU" node benches/peers/node-ws/server.mjs "$port" >"$logf" 2>&1 & ;;
    python-websockets)
      taskset -c "$SERVER_CPU" python3 benches/peers/python-websockets/server.py "$port" >"$logf" 2>&1 & ;;
    tokio-tungstenite)
      taskset -c "$SERVER_CPU" benches/peers/tokio-tungstenite/target/release/peer-tokio-tungstenite "$port" >"$logf" 2>&1 & ;;
    nats)
      taskset -c "$SERVER_CPU" benches/peers/nats/run.sh "$port" >"$logf" 2>&1 & ;;
    uws)
      taskset -c "$SERVER_CPU" "$UWS_BIN" "$port" >"$logf" 2>&1 & ;;
  esac
  RUNNER_PID=$!
  local deadline=$((SECONDS + 20))
  until grep -q "listening" "$logf" 2>/dev/null; do
    if ((SECONDS > deadline)) || ! kill -0 "$RUNNER_PID" 2>/dev/null; then
      log "server $name did not start:"; cat "$logf" >&2; return 1
    fi
    sleep 0.05
  done
  SERVER_PID=$RUNNER_PID
  if [ "$name" = nats ]; then SERVER_PID=$(pgrep -P "$RUNNER_PID" nats-server | head -1); fi
}

stop_server() {
  kill -TERM "$RUNNER_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$RUNNER_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  kill -KILL "$RUNNER_PID" 2>/dev/null || true
  wait "$RUNNER_PID" 2>/dev/null || true
}

base_of() { local name=${1%-delta}; name=${name%-batch}; name=${name%-msgpack}; echo "${name%-deflate}"; }

target_of() {
  case "$(base_of "$1")" in
    shardcast-json|shardcast-tls|shardcast-auth|shardcast-shards-*) echo shardcast-json ;;
    shardcast-raw|uws) echo shardcast-raw ;;
    nats) echo nats ;;
    *) echo peer ;;
  esac
}

version_of() {
  case "$(base_of "$1")" in
    shardcast*) "$SHARDCAST" --version | awk '{print $2}' ;;
    node-ws|node-ws-tls) echo "ws $(node -p 'require("./benches/peers/node-ws/node_modules/ws/package.json").version'), node $(node --version)" ;;
    python-websockets) python3 -c 'import websockets,sys; print("websockets", websockets.__version__, "python", sys.version.split()[0])' ;;
    tokio-tungstenite) grep -A1 'name = "tokio-tungstenite"' benches/peers/tokio-tungstenite/Cargo.lock | awk -F'"' '/version/{print "tokio-tungstenite " $2}' ;;
    nats) nats-server --version ;;
    uws) echo "${UWS_VERSION:-uWebSockets}" ;;
  esac
}

# run_point SCENARIO SERVER FILE-TAG [shardcast server args] -- [generator args]
run_point() {
  local scenario=$1 server=$2 tag=$3; shift 3
  local server_args=() gen_args=()
  while (($#)) && [ "$1" != "--" ]; do server_args+=("$1"); shift; done
  (($#)) && shift
  gen_args=("$@")
  if is_tls "$server"; then gen_args+=(--tls-ca "$TLS_CERT"); fi
  if is_auth "$server"; then gen_args+=(--token "$(mint_token)"); fi
  if [[ "$server" == *-deflate ]]; then gen_args+=(--compress); fi
  if [[ "$server" == *-delta ]]; then gen_args+=(--delta); fi
  if [[ "$server" == *-batch ]]; then gen_args+=(--batch); fi
  if [[ "$server" == *-msgpack ]]; then gen_args+=(--msgpack); fi
  # RUN_FIRST/RUN_LAST pick some of the runs (inflight alternates servers).
  for run in $(seq "${RUN_FIRST:-1}" "${RUN_LAST:-$RUNS}"); do
    local port file
    port=$(free_port)
    file="$OUT/$scenario-$tag-$server-run$run.json"
    start_server "$server" "${server_args[*]:-}" "$port" || { log "skipping $server"; return 0; }
    log "$scenario $server $tag run $run"
    taskset -c "$GEN_CPU" target/release/shardcast-bench --server "127.0.0.1:$port" \
      --server-pid "$SERVER_PID" --server-name "$server" --server-version "$(version_of "$server")" \
      --target "$(target_of "$server")" --label "$tag" "${gen_args[@]}" --output "$file" \
      || log "generator failed for $server ($scenario $tag)"
    stop_server
  done
}

# ---- scenarios --------------------------------------------------------------
# p99 (µs) of the last result file of a point, or a huge number if invalid.
last_p99() {
  python3 - "$1" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    lat = r["results"].get("latency_us") or {}
    print(lat.get("p99", 10**12) if r["valid"] else 10**12)
except Exception:
    print(10**12)
PY
}

fanout() {
  # For each server, rates rise until p99 passes 50 ms (or runs go invalid).
  local subs_list rates duration
  if ((QUICK)); then subs_list="1000"; rates="100 1000"; duration=3s
  else subs_list="1000 10000"; rates="10 100 1000 3000 10000 30000"; duration=5s; fi
  subs_list=${FANOUT_SUBS:-$subs_list}
  for subs in $subs_list; do
    for server in "${SERVER_LIST[@]}"; do
      for rate in $rates; do
        run_point fanout "$server" "subs$subs-rate$rate" -- \
          --scenario fanout --subscribers "$subs" --rate "$rate" --size 100 --duration "$duration"
        local p99
        p99=$(last_p99 "$OUT/fanout-subs$subs-rate$rate-$server-run$RUNS.json")
        if ((p99 > 50000)); then
          log "$server: p99 over 50 ms at $subs x $rate msg/s; stopping its sweep"
          break
        fi
      done
    done
  done
}

rooms() {
  local channels=1000 per=10 rate=10000 duration=5s
  if ((QUICK)); then channels=100; rate=1000; duration=3s; fi
  for server in "${SERVER_LIST[@]}"; do
    is_tls "$server" && continue
    run_point rooms "$server" "rooms$channels-x$per-rate$rate" -- \
      --scenario rooms --subscribers $((channels * per)) --channels "$channels" --rate "$rate" \
      --size 100 --duration "$duration"
  done
}

idle() {
  local conns=15000 window=10s
  if ((QUICK)); then conns=2000; window=3s; fi
  for server in "${SERVER_LIST[@]}"; do
    # shardcast pings idle connections every 5 s here so heartbeats run in the window.
    run_point idle "$server" "conns$conns" --ping-interval 5s -- \
      --scenario idle --subscribers "$conns" --channels 100 --duration "$window"
  done
}

connect_storm() {
  local conns=10000
  ((QUICK)) && conns=2000
  for server in "${SERVER_LIST[@]}"; do
    is_tls "$server" && continue
    run_point connect-storm "$server" "conns$conns" -- \
      --scenario connect-storm --subscribers "$conns" --connect-concurrency 512
  done
}

shards() {
  # The machine has 2 cores: with --shards 2 the server uses both and the
  # generator competes with it for CPU. Reported as measured.
  local duration=5s
  ((QUICK)) && duration=3s
  for n in 1 2; do
    run_point shards "shardcast-shards-$n" "subs1000-rate1000" -- \
      --scenario fanout --subscribers 1000 --rate 1000 --size 100 --duration "$duration"
  done
}

inflight() {
  # uWebSockets' good regime (a few publications per read: <= 32 in flight)
  # and its weak one (1,000 in flight), and a paced point; one shard, raw room.
  local duration=5s servers=(shardcast-raw)
  ((QUICK)) && duration=3s
  if [ -n "${UWS_BIN:-}" ] && [ -x "$UWS_BIN" ]; then
    servers+=(uws)
  else
    log "inflight: UWS_BIN is not set (or not executable): the uWebSockets peer is skipped"
  fi
  for run in $(seq 1 "$RUNS"); do
    for point in ${INFLIGHT_POINTS:-100:w32 1000:w32 100:w1000 1000:r100}; do
      local subs=${point%:*} load=${point#*:} args tag
      case "$load" in
        # One latency probe (the window's): 32 prompt readers would make the
        # generator, not the server, the limit flat out.
        w*) args=(--max-in-flight "${load#w}" --latency-probes 1); tag="subs$subs-inflight${load#w}" ;;
        r*) args=(--rate "${load#r}"); tag="subs$subs-rate${load#r}" ;;
        *) log "inflight: bad point $point"; return 1 ;;
      esac
      for server in "${servers[@]}"; do
        RUN_FIRST=$run RUN_LAST=$run run_point inflight "$server" "$tag" -- \
          --scenario fanout --subscribers "$subs" "${args[@]}" --size 64 --duration "$duration"
      done
    done
  done
}

bytes() {
  # Rates keep every server under the loopback's and the generator's limits
  # (a 10 KB book to 1,000 subscribers at 10/s is 100 MB/s uncompressed).
  local subs=1000 duration=5s servers=${BYTES_SERVERS:-shardcast-json,shardcast-json-deflate,shardcast-json-delta,shardcast-json-msgpack,node-ws,node-ws-deflate,nats,nats-deflate}
  ((QUICK)) && { subs=200; duration=3s; }
  IFS=, read -r -a bytes_servers <<<"$servers"
  for shape_rate in ${BYTES_RATES:-tick:100 chat:100 book:10}; do
    local shape=${shape_rate%:*} rate=${shape_rate#*:}
    for server in "${bytes_servers[@]}"; do
      run_point bytes "$server" "$shape-subs$subs-rate$rate" -- \
        --scenario fanout --subscribers "$subs" --rate "$rate" --payload "$shape" --duration "$duration"
    done
  done
}

# Starts redis-server and three nodes on it (server core); sets CLUSTER_PIDS,
# CLUSTER_PORTS (a b c) and REDIS_PID.
start_cluster() {
  local redis_port; redis_port=$(free_port)
  # Redis gets the generator's core: beside three nodes on one core it
  # would have a third of it.
  taskset -c "$GEN_CPU" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
    --appendonly no >"$OUT/.redis.log" 2>&1 &
  REDIS_PID=$!
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
    ((SECONDS > deadline)) && { log "redis-server did not start"; return 1; }
    sleep 0.05
  done
  CLUSTER_PIDS=() CLUSTER_PORTS=()
  for node in a b c; do
    local port; port=$(free_port)
    taskset -c "$SERVER_CPU" "$SHARDCAST" serve --listen "127.0.0.1:$port" --shards 1 \
      --engine redis --redis-url "redis://127.0.0.1:$redis_port" --node-id "$node" \
      >"$OUT/.node-$node.log" 2>&1 &
    CLUSTER_PIDS+=($!) CLUSTER_PORTS+=("$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    deadline=$((SECONDS + 20))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ]; do
      ((SECONDS > deadline)) && { log "a cluster node did not come up"; return 1; }
      sleep 0.05
    done
  done
}

stop_cluster() {
  kill -TERM "${CLUSTER_PIDS[@]}" "$REDIS_PID" 2>/dev/null || true
  wait "${CLUSTER_PIDS[@]}" "$REDIS_PID" 2>/dev/null || true
}

cluster() {
  local duration=5s points=${CLUSTER_POINTS:-1000:100 10:10000 1:100000}
  ((QUICK)) && duration=3s
  for point in $points; do
    local subs=${point%:*} rate=${point#*:} tag
    tag="subs$subs-rate$rate"
    # One node alone, the same load, in the same run.
    run_point cluster shardcast-json "$tag" -- \
      --scenario fanout --subscribers "$subs" --rate "$rate" --size 100 --duration "$duration"
    for run in $(seq 1 "$RUNS"); do
      start_cluster || { stop_cluster; log "skipping the cluster"; return 0; }
      local file="$OUT/cluster-$tag-shardcast-cluster3-run$run.json"
      log "cluster shardcast-cluster3 $tag run $run"
      taskset -c "$GEN_CPU" target/release/shardcast-bench --server "127.0.0.1:${CLUSTER_PORTS[1]}" \
        --also-server "127.0.0.1:${CLUSTER_PORTS[2]}" --publish-server "127.0.0.1:${CLUSTER_PORTS[0]}" \
        --server-pid "${CLUSTER_PIDS[1]}" --also-pid "${CLUSTER_PIDS[0]}" --also-pid "${CLUSTER_PIDS[2]}" \
        --also-pid "$REDIS_PID" --server-name shardcast-cluster3 \
        --server-version "$(version_of shardcast-json), $(redis-server --version | awk '{print $3}')" \
        --target shardcast-json --label "$tag" --scenario fanout --subscribers "$subs" \
        --rate "$rate" --size 100 --duration "$duration" --output "$file" \
        || log "generator failed for the cluster ($tag)"
      stop_cluster
    done
  done
}

setup
for scenario in "${SCENARIOS[@]}"; do
  case "$scenario" in
    fanout) fanout ;;
    rooms) rooms ;;
    idle) idle ;;
    connect-storm) connect_storm ;;
    shards) shards ;;
    inflight) inflight ;;
    bytes) bytes ;;
    cluster) cluster ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
done
log "results in $OUT"
# The run's report goes beside its results; the committed one changes only
# when asked (--publish).
python3 scripts/report "$OUT" --output "$OUT/BENCHMARKS.md"
if ((PUBLISH)); then
  python3 scripts/report "$OUT" --publish
fi
