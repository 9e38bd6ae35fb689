#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzingclient (the WebSocket conformance suite
# tungstenite and uWebSockets run) against a shardcast raw room, which echoes
# every message to its sender like the suite's echo server. Cases 1-10,
# and all of 12 and 13 (permessage-deflate, with every offer the suite
# makes, messages up to 1000 x 128 KiB): 517 cases, 7 to 20 minutes on
# the debug build (7 on an idle 2-core machine, 18 measured while other
# builds shared it), most of it the Python 2 suite's own work; a line is
# printed as each case group starts, and one a minute. Fails unless every
# case is OK, NON-STRICT or INFORMATIONAL and each matches the result
# committed in scripts/autobahn/expected.json.
# Installs the suite when missing: Autobahn runs on Python 2.7 (CPython
# 2.7.18 under pyenv, or python2.7 on the PATH), in a virtualenv under
# target/. Usage: scripts/autobahn.sh [path to shardcast, default
# target/debug/shardcast] (AUTOBAHN_CASES="1.*,2.*" narrows the run).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/debug/shardcast}
work=$(pwd)/target/autobahn
venv=$work/venv
mkdir -p "$work"

if [ ! -x "$venv/bin/wstest" ]; then
  py=""
  if command -v pyenv >/dev/null; then
    if [ ! -x "$(pyenv root)/versions/2.7.18/bin/python2.7" ]; then
      echo "autobahn: building CPython 2.7.18 with pyenv (a few minutes, once)"
      pyenv install --skip-existing 2.7.18 || {
        echo "autobahn: FAILED: pyenv could not build CPython 2.7.18; it needs build-essential" \
          "libssl-dev zlib1g-dev libbz2-dev libreadline-dev libsqlite3-dev libffi-dev" >&2
        exit 1
      }
    fi
    py="$(pyenv root)/versions/2.7.18/bin/python2.7"
  elif command -v python2.7 >/dev/null; then
    py=$(command -v python2.7)
  else
    cat >&2 <<'MSG'
autobahn: FAILED: Autobahn|Testsuite needs Python 2.7, and neither pyenv nor
python2.7 is installed (Debian no longer packages Python 2). Either:
  curl -fsSL https://pyenv.run | bash        # installs pyenv into ~/.pyenv
  export PATH="$HOME/.pyenv/bin:$PATH"
  pyenv install 2.7.18                       # builds CPython 2.7.18 (a few minutes;
                                             # needs build-essential libssl-dev zlib1g-dev
                                             # libbz2-dev libreadline-dev libsqlite3-dev libffi-dev)
or put any python2.7 on the PATH; then run scripts/autobahn.sh again.
MSG
    exit 1
  fi
  echo "installing autobahntestsuite into $venv"
  "$py" -m pip install --quiet --disable-pip-version-check "virtualenv<20.22" 2>/dev/null
  "$py" -m virtualenv --quiet "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check autobahntestsuite 2>/dev/null
fi

# A port of our own, outside the ephemeral range.
port=$((20000 + RANDOM % 10000))
# Case 9 sends messages up to 16 MiB; a JSON subscriber could receive one
# six times over, so the queue must allow that (see --max-queue-bytes).
"$bin" serve --listen "127.0.0.1:$port" --shards 1 --history-size 0 \
  --max-message-bytes 17MiB --max-queue-bytes 120MiB --message-timeout 60s \
  >"$work/server.out" 2>"$work/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$work/server.out" || { echo "autobahn: server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

# A bound against a hung suite, well above a normal run.
limit=1800
IFS=, read -r -a cases <<<"${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,12.*,13.*}"
python3 - "$work" "$port" "${cases[@]}" <<'EOF'
import json, sys
work, port, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
spec = {
    "outdir": work + "/report",
    "servers": [{"agent": "shardcast", "url": "ws://127.0.0.1:%s/ws/autobahn" % port}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
json.dump(spec, open(work + "/spec.json", "w"), indent=1)
EOF
rm -rf "$work/report" "$work/wstest.log"
total="?"
[ -z "${AUTOBAHN_CASES:-}" ] && total=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' scripts/autobahn/expected.json)
echo "autobahn: running $total cases against $bin (7-20 minutes; a line per case group)"
# Unbuffered, so that the log shows each case as it starts.
(cd "$work" && PYTHONUNBUFFERED=1 exec timeout "$limit" venv/bin/wstest -m fuzzingclient -s spec.json >wstest.log 2>&1) &
wstest=$!
trap 'kill "$server" "$wstest" 2>/dev/null || true' EXIT
started=$SECONDS group="" said=$SECONDS
# Progress: the suite logs "Running test case ID 5.3 for agent ..." per case.
while kill -0 "$wstest" 2>/dev/null; do
  sleep 2
  current=$(grep -ao 'Running test case ID [0-9.]*' "$work/wstest.log" 2>/dev/null | tail -1 | awk '{print $5}') || true
  count=$(grep -ac 'Running test case ID' "$work/wstest.log" 2>/dev/null) || true
  elapsed=$(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s
  if [ -n "$current" ] && [ "${current%%.*}" != "$group" ]; then
    group=${current%%.*} said=$SECONDS
    echo "autobahn: cases $group.* (case ${count:-0} of $total, $elapsed)"
  elif ((SECONDS - said >= 60)); then
    said=$SECONDS
    echo "autobahn: case ${current:-?} (${count:-0} of $total, $elapsed)"
  fi
done
wait "$wstest" || {
  echo "autobahn: wstest failed" >&2; tail -20 "$work/wstest.log" >&2; exit 1; }

python3 - "$work/report/index.json" scripts/autobahn/expected.json "${UPDATE_EXPECTED:-0}" <<'EOF'
import json, sys
index, expected_path, update = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
results = json.load(open(index))["shardcast"]
got = {case: r["behavior"] for case, r in results.items()}
good = {"OK", "NON-STRICT", "INFORMATIONAL"}
bad = {case: b for case, b in got.items() if b not in good}
key = lambda c: [int(p) for p in c.split(".")]
if update:
    json.dump(dict(sorted(got.items(), key=lambda kv: key(kv[0]))), open(expected_path, "w"), indent=1)
    print("wrote", expected_path)
expected = json.load(open(expected_path))
changed = {c: (expected.get(c), b) for c, b in got.items() if expected.get(c) != b}
counts = {}
for b in got.values():
    counts[b] = counts.get(b, 0) + 1
print("autobahn: %d cases: %s" % (len(got), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
for case in sorted(bad, key=key):
    print("  FAILED %s: %s" % (case, bad[case]))
for case in sorted(changed, key=key):
    print("  CHANGED %s: expected %s, got %s" % (case, changed[case][0], changed[case][1]))
missing = sorted(set(expected) - set(got), key=key)
if missing and len(got) >= len(expected):
    print("  MISSING", missing)
sys.exit(1 if bad or changed else 0)
EOF
