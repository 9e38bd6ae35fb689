#!/bin/bash
# Before/after the own read path, alternating: /tmp/shardcast-main (main) and
# /tmp/shardcast-readpath. Run from the project root.
for i in 1 2 3; do
  for v in main readpath; do
    BENCH_OUT=/tmp/bench2/$v-fanout-$i SHARDCAST_BIN=/tmp/shardcast-$v scripts/bench.sh --quick --runs 1 --servers shardcast-json,shardcast-raw fanout > /tmp/bench2-$v-f-$i.log 2>&1
    BENCH_OUT=/tmp/bench2/$v-idle-$i SHARDCAST_BIN=/tmp/shardcast-$v scripts/bench.sh --runs 1 --servers shardcast-json,shardcast-raw idle > /tmp/bench2-$v-i-$i.log 2>&1
  done
done
echo done > /tmp/bench2/DONE
