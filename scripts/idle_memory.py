#!/usr/bin/env python3
"""Measures the server memory one idle WebSocket connection costs.

Starts `shardcast serve` (release build), reads its RSS, opens N connections
(each subscribed with ?sub=, handshake done by hand so the client stays
light), spread over source addresses 127.0.0.2, 127.0.0.3, ... so ports do
not run out, reads RSS again, and prints the difference per connection. Then
stops the server with SIGTERM and prints its per-shard connection counts
(how SO_REUSEPORT spread the connections).

Usage: scripts/idle_memory.py [N] [--shards S] [--channels C]
"""
import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SOURCE = 20000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_one(host, port, source, path):
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return reader, writer


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=10000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--channels", type=int, default=100)
    args = ap.parse_args()
    binary = os.path.join(ROOT, "target/release/shardcast")
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--shards", str(args.shards)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    # Warm up: one connection through every code path, then baseline.
    warm = [await open_one("127.0.0.1", port, "127.0.0.1", "/ws?sub=warm") for _ in range(8)]
    time.sleep(0.5)
    before = rss_kib(server.pid)
    conns = []
    started = time.monotonic()
    batch = 500
    for start in range(0, args.n, batch):
        tasks = []
        for i in range(start, min(start + batch, args.n)):
            source = f"127.0.0.{2 + i // PER_SOURCE}"
            tasks.append(open_one("127.0.0.1", port, source, f"/ws?sub=idle-{i % args.channels}"))
        conns += await asyncio.gather(*tasks)
    opened_in = time.monotonic() - started
    time.sleep(1.0)
    after = rss_kib(server.pid)
    per_conn = (after - before) * 1024 / args.n
    print(f"connections: {args.n} over {args.shards} shards, {args.channels} channels, opened in {opened_in:.1f}s")
    print(f"server RSS: {before} KiB before, {after} KiB after: {per_conn:.0f} bytes per idle connection")
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=30)
    counts = [int(m) for m in re.findall(r"connections_opened\S*?=\S*?(\d+)", err)]
    print(f"per-shard connections (SO_REUSEPORT spread): {counts}")
    for _, w in conns + warm:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
