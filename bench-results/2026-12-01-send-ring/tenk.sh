#!/bin/bash
# 10k subscribers x 10 msg/s, glommio vs uring, alternating; prints the summary lines
port=18095
for i in 1 2 3; do for io in glommio uring; do
  (taskset -c 0 /tmp/bin-ring/shardcast serve --listen 127.0.0.1:$port --shards 1 --anonymous --io $io >/tmp/srv10k.log 2>&1 &)
  for k in $(seq 50); do curl -s 127.0.0.1:$port/health >/dev/null && break; sleep 0.1; done
  pid=$(pgrep -f "listen 127.0.0.1:$port")
  taskset -c 1 /work/main/target/release/shardcast-bench --server 127.0.0.1:$port --server-pid $pid --server-name shardcast-json --target shardcast-json --scenario fanout --subscribers 10000 --rate 10 --size 100 --duration 5s --output /tmp/tenk-$io-$i.json 2>&1 | grep -E "^Fanout" | sed "s/^/$io /"
  kill $pid; sleep 1
done; done
