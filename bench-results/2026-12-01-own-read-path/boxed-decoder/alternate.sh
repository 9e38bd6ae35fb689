#!/bin/bash
for i in 1 2 3; do
  for v in readpath boxed; do
    BENCH_OUT=/tmp/bench3/$v-idle-$i SHARDCAST_BIN=/tmp/shardcast-$v scripts/bench.sh --runs 1 --servers shardcast-json,shardcast-raw idle > /tmp/bench3-$v-$i.log 2>&1
  done
done
echo done > /tmp/bench3/DONE
