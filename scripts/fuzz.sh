#!/usr/bin/env bash
# Fuzzes the parsers that read network input with cargo-fuzz (libFuzzer):
# the JSON envelope (client_op), HTTP request heads (http_request) and the
# WebSocket frame decoder with its round trip (frame_decode), each
# for a bounded time. Installs the nightly toolchain and cargo-fuzz when
# missing. A crash's input is copied to fuzz/regressions/<target>/ (replayed
# by tests/fuzz_regressions.rs from then on) and the script fails.
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(client_op http_request frame_decode)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

work=target/fuzz-corpus
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "fuzz/regressions/$target"
  artifacts="target/fuzz-artifacts/$target"
  rm -rf "$artifacts" && mkdir -p "$artifacts"
  echo "fuzzing $target for ${seconds}s"
  if ! cargo +nightly fuzz run "$target" "$work/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1; then
    failed=1
  fi
  for crash in "$artifacts"/*; do
    [ -e "$crash" ] || continue
    cp "$crash" "fuzz/regressions/$target/"
    echo "kept $crash as fuzz/regressions/$target/$(basename "$crash")"
    failed=1
  done
done
exit "$failed"
