#!/bin/bash
# Before/after the fixes of issue 11, alternating: /tmp/shardcast-before is the
# release build of aafc6ab, /tmp/shardcast-after of this change. Run from the
# project root.
for i in 1 2 3 4 5; do
  for v in before after; do
    BENCH_OUT=/tmp/bench/$v-$i SHARDCAST_BIN=/tmp/shardcast-$v scripts/bench.sh --quick --runs 1 --servers shardcast-json,shardcast-raw fanout idle > /tmp/bench-$v-$i.log 2>&1
  done
done
echo done > /tmp/bench/DONE
