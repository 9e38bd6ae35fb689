#!/usr/bin/env python3
"""What presence and webhooks cost: 10,000 clients join one presence channel
(?sub=bench-0, the generator's idle scenario on core 1, 256 connecting at a time) on a shardcast of one
shard (core 0), with --presence and a webhook receiver (this script, counting
requests and events), and the same storm without either, alternating runs.
While they are connected, the member list is read in pages of 1,000 and
the count asked 1,000 times, timed. Server CPU is from /proc (10 ms ticks)
from the storm's start until every client is in and the webhook quiet. Prints a JSON report.

With --engine redis, every run gets a fresh redis-server (on core 1, beside
the generator) and the server runs --engine redis in both kinds: members
then also go to Redis (a hash and an expiry set per channel, refreshed),
lists and counts are read from there, and the node's occupancy entry
(webhooks sent once across nodes) is kept there too; Redis's CPU is
reported beside the server's.

Usage: scripts/presence-cost.py [--runs N] [--clients N] [--engine memory|redis]
(release builds of shardcast and shardcast-bench, as scripts/bench.sh makes
them; redis-server from Debian's package for --engine redis)."""
import argparse, asyncio, http.server, json, os, socket, statistics, subprocess, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/shardcast")
GEN = os.path.join(ROOT, "target/release/shardcast-bench")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Receiver(http.server.BaseHTTPRequestHandler):
    requests = 0
    events = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.requests += 1
        Receiver.events += len(json.loads(body)["events"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(extra):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", f"127.0.0.1:{port}", "--shards", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()
    return proc, port


def start_redis():
    """A fresh redis-server on core 1, keeping nothing on disk."""
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def storm(port, pid, clients):
    """Starts the generator's idle scenario: `clients` connect (256 at a time)
    and stay for 8 s. Returns the process and where its report goes."""
    out = f"/tmp/presence-cost-{port}.json"
    gen = subprocess.Popen(["taskset", "-c", "1", GEN, "--server", f"127.0.0.1:{port}", "--server-pid", str(pid),
                            "--scenario", "idle", "--subscribers", str(clients), "--channels", "1",
                            "--connect-concurrency", "256", "--duration", "8s", "--output", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return gen, out


def connections(port):
    import urllib.request
    stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats"))
    return stats["total"]["connections"]


async def ask(port, ops):
    import websockets
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        answers = []
        for op in ops:
            await ws.send(json.dumps(op))
            while True:
                answer = json.loads(await ws.recv())
                if answer.get("id") == op["id"]:
                    answers.append(answer)
                    break
        return answers


async def read_all(port):
    import websockets
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        seen, cursor, page = 0, None, 0
        while True:
            op = {"op": "presence", "ch": "bench-0", "id": page, "limit": 1000}
            if cursor:
                op["cursor"] = cursor
            await ws.send(json.dumps(op))
            answer = json.loads(await ws.recv())
            seen += len(answer["members"])
            page += 1
            cursor = answer.get("cursor")
            if not cursor:
                return seen, page


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--engine", choices=["memory", "redis"], default="memory")
    args = ap.parse_args()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    report = {"clients": args.clients, "engine": args.engine, "runs": []}
    for run in range(args.runs):
        for kind in ("plain", "presence+webhooks"):
            extra = [] if kind == "plain" else ["--presence", "bench-0", "--webhook-url", hook]
            redis = None
            if args.engine == "redis":
                redis, redis_port = start_redis()
                extra += ["--engine", "redis", "--redis-url", f"redis://127.0.0.1:{redis_port}"]
            proc, port = serve(extra)
            if redis:
                deadline = time.time() + 10
                while subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/health"],
                                     stdout=subprocess.DEVNULL).returncode != 0 and time.time() < deadline:
                    time.sleep(0.05)
            before = (Receiver.requests, Receiver.events)
            cpu0 = cpu_seconds(proc.pid)
            redis_cpu0 = cpu_seconds(redis.pid) if redis else 0
            t0 = time.perf_counter()
            gen, out = storm(port, proc.pid, args.clients)
            deadline = time.time() + 20
            while connections(port) < args.clients and time.time() < deadline:
                time.sleep(0.02)
            joined_s = time.perf_counter() - t0
            # Webhooks still in flight: wait until the events stop coming (bounded).
            last = -1
            while kind != "plain" and Receiver.events != last and time.time() < deadline:
                last = Receiver.events
                time.sleep(0.3)
            cpu = cpu_seconds(proc.pid) - cpu0
            entry = {"kind": kind, "joined_s": joined_s, "server_cpu_s": cpu,
                     "webhook_requests": Receiver.requests - before[0], "webhook_events": Receiver.events - before[1]}
            if redis:
                entry["redis_cpu_s"] = cpu_seconds(redis.pid) - redis_cpu0
            if kind != "plain":
                cpu1 = cpu_seconds(proc.pid)
                t = time.perf_counter()
                seen, pages = asyncio.run(read_all(port))
                entry["list_ms"], entry["listed"], entry["pages"] = (time.perf_counter() - t) * 1e3, seen, pages
                entry["list_cpu_ms"] = (cpu_seconds(proc.pid) - cpu1) * 1e3
                cpu2 = cpu_seconds(proc.pid)
                t = time.perf_counter()
                answers = asyncio.run(ask(port, [{"op": "occupancy", "ch": "bench-0", "id": i} for i in range(1000)]))
                entry["occupancy_us_each"] = (time.perf_counter() - t) * 1e6 / 1000
                entry["occupancy_cpu_ms"] = (cpu_seconds(proc.pid) - cpu2) * 1e3
                entry["occupancy"] = answers[-1]["count"]
            gen.wait()
            entry["connects_per_second"] = json.load(open(out))["results"]["connects_per_second"]
            proc.terminate()
            proc.wait()
            if redis:
                redis.terminate()
                redis.wait()
            report["runs"].append(entry)
            print(json.dumps(entry), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
