#!/usr/bin/env bash
# Usage: run.sh PORT
# Starts nats-server with a plain-text WebSocket listener on 127.0.0.1:PORT
# (permessage-deflate with NATS_WS_COMPRESSION=true)
# and the normal NATS client listener on 127.0.0.1:PORT+1.
# Prints exactly one line "listening on PORT" to stdout once the WebSocket port
# accepts TCP connections. Server logs go to stderr. SIGTERM/SIGINT stop it.
set -u
if [ $# -ne 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 PORT" >&2
  exit 2
fi
PORT=$1
CPORT=$((PORT + 1))

TMPD=$(mktemp -d /tmp/nats-peer.XXXXXX)
CONF="$TMPD/nats.conf"
cat > "$CONF" <<CONF
host: 127.0.0.1
port: $CPORT
# raise these for large fan-out benchmarks if needed
max_pending: 64MB
write_deadline: "10s"
websocket {
  host: 127.0.0.1
  port: $PORT
  no_tls: true
  compression: ${NATS_WS_COMPRESSION:-false}
}
CONF

PID=
SIGNALLED=0
cleanup() { rm -rf "$TMPD"; }
forward() {
  SIGNALLED=1
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null; fi
}
trap forward TERM INT
trap cleanup EXIT

# nats-server logs to stderr; keep our stdout clean.
nats-server -c "$CONF" >&2 &
PID=$!

ok=0
for _ in $(seq 1 100); do          # max ~10 s
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "nats-server exited during startup" >&2
    wait "$PID"; exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ok=1; break; fi
  sleep 0.1
done
if [ "$ok" != 1 ]; then
  echo "timeout waiting for 127.0.0.1:$PORT" >&2
  kill -TERM "$PID" 2>/dev/null; wait "$PID"; exit 1
fi

echo "listening on $PORT"

# wait returns early (>128) when a trapped signal arrives; keep waiting until
# the server has really exited, then return its status.
while :; do
  wait "$PID"; rc=$?
  if ! kill -0 "$PID" 2>/dev/null; then break; fi
done
# nats-server exits with status 1 after a clean shutdown on SIGTERM/SIGINT;
# report that as success when we were asked to stop.
if [ "$SIGNALLED" = 1 ] && [ "$rc" -le 1 ]; then exit 0; fi
exit $rc
