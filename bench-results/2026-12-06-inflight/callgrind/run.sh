#!/usr/bin/env bash
# run.sh NAME OUTDIR -- server command (PORT substituted): the server under
# callgrind on core 0, shardcast-bench on core 1 (100 subscribers, <= 32 in
# flight, 64-byte payloads); counters zeroed once every connection is up and
# dumped after the generator ends. Hold /tmp/bench.lock around it.
set -euo pipefail
name=$1 out=$2; shift 3
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SUBS=${SUBS:-100} INFL=${INFL:-32} DUR=${DUR:-20s}
cmd=("${@//PORT/$port}")
mkdir -p "$out"
taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$name" "${cmd[@]}" >"$out/$name.server.log" 2>&1 &
vpid=$!
until grep -q listening "$out/$name.server.log"; do sleep 0.2; kill -0 $vpid || exit 1; done
target=${TARGET:-shardcast-raw}
taskset -c 1 /work/wt-uws/target/release/shardcast-bench --server 127.0.0.1:$port --server-pid $vpid \
  --server-name "$name-callgrind" --target "$target" --scenario fanout --subscribers $SUBS \
  --max-in-flight $INFL --size 64 --duration $DUR --latency-probes 1 --output "$out/$name.json" \
  2>"$out/$name.gen.log" &
gpid=$!
# Zero once every connection is established (warm-up markers follow; measured
# publications start after every subscriber has heard one).
until [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge $((SUBS + 1)) ]; do sleep 0.2; done
sleep 1
callgrind_control -z $vpid >/dev/null
wait $gpid
callgrind_control -d $vpid >/dev/null
kill -TERM $vpid; wait $vpid || true
cat "$out/$name.gen.log"
