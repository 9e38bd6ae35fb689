#!/bin/bash
# idle 15k: glommio receive path vs ring multishot receive (experiment); RSS/conn and kernel slab delta
port=18100
slab() { awk '/^Slab:/{print $2}' /proc/meminfo; }
for i in 1 2 3; do for mode in task ring; do
  if [ $mode = ring ]; then export SHARDCAST_RECV_RING=1; else unset SHARDCAST_RECV_RING; fi
  port=$((port+1)); (SHARDCAST_IO=uring taskset -c 0 /tmp/bin-ring/shardcast-exp serve --listen 127.0.0.1:$port --shards 1 --anonymous --ping-interval 5s >/tmp/srvexp.log 2>&1 &)
  for k in $(seq 50); do curl -s 127.0.0.1:$port/health >/dev/null && break; sleep 0.1; done
  pid=$(pgrep -f "listen 127.0.0.1:$port")
  s0=$(slab)
  (taskset -c 1 /work/main/target/release/shardcast-bench --server 127.0.0.1:$port --server-pid $pid --server-name shardcast-json --target shardcast-json --scenario idle --subscribers 15000 --channels 100 --duration 10s > /tmp/exp-$mode-$i.txt 2>&1 &)
  sleep 9; s1=$(slab); open=$(curl -s 127.0.0.1:$port/api/stats | python3 -c "import json,sys; print(json.load(sys.stdin)['total']['connections'])")
  while pgrep -f "shardcast-bench --server 127.0.0.1:$port" >/dev/null; do sleep 0.5; done
  echo "$mode run $i: $(grep -E '^Idle' /tmp/exp-$mode-$i.txt | sed 's/.*connections, //') | slab +$(( (s1-s0)*1024/15000 )) B/conn (both ends) | open $open"
  kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.2; done
done; done
unset SHARDCAST_RECV_RING
