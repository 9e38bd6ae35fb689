#!/usr/bin/env bash
# Builds the uWebSockets broadcast peer (server.cpp, beside this script) for
# scripts/bench.sh's inflight scenario (UWS_BIN=OUT). Not part of the test
# command. The checkouts are not kept here: bring uNetworking/uWebSockets and
# uNetworking/uSockets to this machine first (measured with uWebSockets
# v20.79.0-17-g66dcff3 and uSockets v0.8.8-17-g86097c4).
#
#   benches/peers/uws/build.sh UWS_DIR USOCKETS_DIR OUT
set -euo pipefail
(($# == 3)) || { sed -n '2,8p' "$0"; exit 2; }
UWS=$(realpath "$1"); US=$(realpath "$2"); OUT=$3
SRC=$(dirname "$(realpath "$0")")/server.cpp
# uSockets.a, no SSL (LIBUS_NO_SSL), its own flags (-O3 -flto).
make -C "$US" -j"$(nproc)" >/dev/null
g++ -std=c++20 -O2 -flto -DLIBUS_NO_SSL -I"$UWS/src" -I"$US/src" \
  "$SRC" "$US/uSockets.a" -lz -o "$OUT"
echo "built $OUT"
