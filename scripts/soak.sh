#!/usr/bin/env bash
# Soak test: runs shardcast under a mixed load for a while and reports drift.
# Load (generator pinned to core 1, server to core 0 unless --shards > 1):
#   - steady fan-out: 2,000 subscribers on 20 channels, 2,000 publications/s
#     for the whole run (shardcast-bench, which also counts loss);
#   - churn: chat rooms that connect, publish and leave every few seconds,
#     alternating with connect storms, until the time is up.
# Every 10 s it samples /api/stats (RSS, connections, deliveries/s, the worst
# shard's last-second p50/p99). At the end it compares the first and last
# minutes (RSS and p99 drift), checks that the steady subscribers lost
# nothing, and that once the load is gone the server is back to zero
# connections and subscriptions. Output: a table on stdout and
# bench-results/soak-<date>/{samples.csv,summary.json}.
# Usage: scripts/soak.sh [duration, default 10m] [--shards N]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10m}
shift || true
shards=1
[ "${1:-}" = "--shards" ] && shards=$2
seconds=$(python3 -c "import sys,re; m=re.fullmatch(r'(\d+)(s|m|h)?', sys.argv[1]); print(int(m[1])*{'s':1,'m':60,'h':3600,None:1}[m[2]])" "$duration")

cargo build --release --locked --bins >/dev/null
out="bench-results/soak-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
cores=$(nproc)
server_cpus=0
gen_cpus=$((cores > 1 ? 1 : 0))
[ "$shards" -gt 1 ] && server_cpus="0-$((shards - 1))"

log=$(mktemp)
taskset -c "$server_cpus" target/release/shardcast serve --listen 127.0.0.1:0 --shards "$shards" \
  >"$log.out" 2>"$log" &
server=$!
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$server" 2>/dev/null || true
  rm -f "$log" "$log.out"
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q listening "$log.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*http://||p' "$log.out" | head -1)
[ -n "$addr" ] || { echo "server did not start"; cat "$log"; exit 1; }
echo "soak: shardcast on $addr ($shards shard(s)) for ${seconds}s"

bench() { taskset -c "$gen_cpus" target/release/shardcast-bench --server "$addr" "$@"; }

bench --scenario fanout --subscribers 2000 --channels 20 --rate 2000 \
  --duration "${seconds}s" --server-pid "$server" >"$out/steady.json" 2>"$out/steady.log" &
steady=$!
pids+=("$steady")

end=$(( $(date +%s) + seconds ))
(
  round=0
  while [ "$(date +%s)" -lt $((end - 15)) ]; do
    if ((round % 2)); then
      # A fresh source address each round: TIME_WAIT never exhausts ports.
      bench --scenario connect-storm --subscribers 2000 --source "127.1.$((round % 250)).1" \
        >/dev/null 2>&1 || true
    else
      bench --scenario rooms --subscribers 500 --channels 50 --rate 500 --duration 5s \
        --source "127.2.$((round % 250)).1" >/dev/null 2>&1 || true
    fi
    round=$((round + 1))
  done
) &
pids+=("$!")

python3 - "$addr" "$seconds" "$out" "$steady" <<'PY'
import csv, json, os, sys, time, urllib.request

addr, seconds, out, steady = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def stats():
    with urllib.request.urlopen(f"http://{addr}/api/stats", timeout=5) as r:
        return json.load(r)

rows, last = [], None
start = time.time()
print(f"{'t_s':>6} {'rss_MiB':>8} {'conns':>6} {'deliv/s':>9} {'p50_ms':>7} {'p99_ms':>7}")
while time.time() - start < seconds:
    time.sleep(10)
    s = stats()
    now, delivered = time.time(), s["total"]["messages_delivered"]
    rate = (delivered - last[1]) / (now - last[0]) if last else 0.0
    last = (now, delivered)
    shards = s["shard"]
    row = {
        "t_s": round(now - start),
        "rss_mib": s["process"]["rss_bytes"] / 2**20,
        "connections": s["total"]["connections"],
        "deliveries_per_s": rate,
        "p50_ms": max(x["latency_us"]["p50"] for x in shards) / 1e3,
        "p99_ms": max(x["latency_us"]["p99"] for x in shards) / 1e3,
        "history_messages": s["total"]["history_messages"],
        "frames_dropped": s["total"]["frames_dropped"],
    }
    rows.append(row)
    print(f"{row['t_s']:>6} {row['rss_mib']:>8.1f} {row['connections']:>6} {rate:>9.0f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}", flush=True)

# Wait for the steady load to finish, then for the server to be idle.
while os.path.exists(f"/proc/{steady}") and open(f"/proc/{steady}/stat").read().split()[2] != "Z":
    time.sleep(0.5)
deadline = time.time() + 30
while True:
    s = stats()
    if s["total"]["connections"] == 0 or time.time() > deadline:
        break
    time.sleep(0.5)

with open(f"{out}/samples.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)

def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0

window = max(1, min(6, len(rows) // 3))  # a minute of samples at each end
first, final = rows[:window], rows[-window:]
try:
    steady_report = json.load(open(f"{out}/steady.json"))["results"]
except Exception:
    steady_report = {}
summary = {
    "seconds": seconds,
    "rss_mib_first_minute": median([r["rss_mib"] for r in first]),
    "rss_mib_last_minute": median([r["rss_mib"] for r in final]),
    "p99_ms_first_minute": median([r["p99_ms"] for r in first]),
    "p99_ms_last_minute": median([r["p99_ms"] for r in final]),
    "deliveries_per_s_median": median([r["deliveries_per_s"] for r in rows[1:]]),
    "steady_lost": steady_report.get("lost"),
    "steady_received": steady_report.get("received"),
    "after_load": {
        "connections": s["total"]["connections"],
        "subscriptions": s["total"]["subscriptions"],
        "outbox_bytes": s["total"]["outbox_bytes"],
        "rss_mib": s["process"]["rss_bytes"] / 2**20,
    },
}
summary["rss_drift_pct"] = 100 * (summary["rss_mib_last_minute"] / summary["rss_mib_first_minute"] - 1)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
ok = summary["after_load"]["connections"] == 0 and summary["after_load"]["subscriptions"] == 0 and summary["steady_lost"] == 0
print("soak:", "ok" if ok else "PROBLEM (see above)")
sys.exit(0 if ok else 1)
PY
