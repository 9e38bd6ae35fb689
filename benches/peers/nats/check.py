#!/usr/bin/env python3
"""End-to-end check of the NATS WebSocket benchmark peer.

Starts run.sh on a free port, connects 3 WebSocket subscribers (SUB c 1),
publishes 1000 x 100-byte messages to "c" from a 4th WebSocket client and
checks that every subscriber receives all of them, in order, using a
streaming NATS protocol parser over the concatenated WebSocket frame
payloads (frames need not align with protocol messages). Finally SIGTERMs
run.sh and checks that it (and nats-server) exit within 5 s.
"""
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time

from websockets.asyncio.client import connect

HERE = os.path.dirname(os.path.abspath(__file__))
N_SUBS = 3
N_MSGS = 1000
PAYLOAD_LEN = 100
SUBJECT = "c"
TIMEOUT = 20.0


def free_port():
    # need PORT (websocket) and PORT+1 (client) both free
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p >= 65535:
            continue
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        finally:
            t.close()
        return p
    raise RuntimeError("no free port pair")


class ProtoError(Exception):
    pass


class NatsParser:
    """Incremental parser for the server->client NATS text protocol.

    feed(bytes) returns a list of events:
      ("INFO", json_bytes) ("MSG", subject, sid, reply, payload)
      ("PING",) ("PONG",) ("+OK",) ("-ERR", text)
    Bytes may arrive in arbitrary chunks; incomplete data stays buffered.
    """

    def __init__(self):
        self.buf = bytearray()
        self.pending_msg = None  # (subject, sid, reply, nbytes) awaiting payload

    def feed(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.buf += data
        out = []
        while True:
            if self.pending_msg is not None:
                subj, sid, reply, n = self.pending_msg
                if len(self.buf) < n + 2:
                    break
                payload = bytes(self.buf[:n])
                if self.buf[n:n + 2] != b"\r\n":
                    raise ProtoError("payload not followed by CRLF")
                del self.buf[:n + 2]
                self.pending_msg = None
                out.append(("MSG", subj, sid, reply, payload))
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                if len(self.buf) > 1 << 20:
                    raise ProtoError("control line too long")
                break
            line = bytes(self.buf[:i])
            del self.buf[:i + 2]
            op, _, rest = line.partition(b" ")
            op = op.upper()
            if op == b"MSG":
                parts = rest.split()
                if len(parts) == 3:
                    subj, sid, n = parts
                    reply = None
                elif len(parts) == 4:
                    subj, sid, reply, n = parts
                else:
                    raise ProtoError(f"bad MSG line {line!r}")
                self.pending_msg = (subj.decode(), sid.decode(), reply, int(n))
            elif op == b"PING":
                out.append(("PING",))
            elif op == b"PONG":
                out.append(("PONG",))
            elif op == b"INFO":
                out.append(("INFO", rest))
            elif op == b"+OK":
                out.append(("+OK",))
            elif op == b"-ERR":
                out.append(("-ERR", rest.decode(errors="replace")))
            else:
                raise ProtoError(f"unknown op in line {line!r}")
        return out


class Client:
    def __init__(self, name, url):
        self.name, self.url = name, url
        self.parser = NatsParser()
        self.events = []
        self.frames = 0
        self.frame_types = set()

    async def open(self):
        # compression=None: do not offer permessage-deflate; max_size=None:
        # the server may coalesce a lot of pending data into one frame.
        self.ws = await connect(self.url, max_size=None, compression=None)
        ev = await self.next_event()
        assert ev[0] == "INFO", ev
        await self.ws.send(b'CONNECT {"verbose":false,"pedantic":false,"echo":true}\r\n')

    async def next_event(self):
        while not self.events:
            frame = await self.ws.recv()
            self.frames += 1
            self.frame_types.add(type(frame).__name__)
            for ev in self.parser.feed(frame):
                if ev[0] == "PING":           # keepalive: must be answered
                    await self.ws.send(b"PONG\r\n")
                elif ev[0] == "-ERR":
                    raise ProtoError(f"{self.name}: server error {ev[1]}")
                else:
                    self.events.append(ev)
        return self.events.pop(0)

    async def ping_pong(self):
        await self.ws.send(b"PING\r\n")
        while True:
            ev = await self.next_event()
            if ev[0] == "PONG":
                return
            raise ProtoError(f"{self.name}: unexpected {ev[:2]} before PONG")


def payload_for(i):
    head = b"%06d:" % i
    return head + bytes([97 + (i + k) % 26 for k in range(PAYLOAD_LEN - len(head))])


async def scenario(url):
    subs = [Client(f"sub{i}", url) for i in range(N_SUBS)]
    for s in subs:
        await s.open()
        await s.ws.send(f"SUB {SUBJECT} 1\r\n".encode())
        await s.ping_pong()        # SUB is in effect once PONG arrives
    pub = Client("pub", url)
    await pub.open()

    # Build the PUB stream and send it in random-size binary chunks, so that
    # commands are split across client frames too.
    stream = b"".join(b"PUB %s %d\r\n%s\r\n" % (SUBJECT.encode(), PAYLOAD_LEN, payload_for(i))
                      for i in range(N_MSGS))
    rnd = random.Random(1)
    pos, chunks = 0, 0
    while pos < len(stream):
        n = rnd.choice([1, 7, 50, 113, 600, 4096, 20000])
        await pub.ws.send(stream[pos:pos + n])
        pos += n
        chunks += 1
    await pub.ping_pong()           # all PUBs processed by the server
    t_pub = time.perf_counter()

    async def drain(s):
        got = 0
        while got < N_MSGS:
            ev = await s.next_event()
            if ev[0] != "MSG":
                raise ProtoError(f"{s.name}: unexpected {ev}")
            _, subj, sid, reply, payload = ev
            assert subj == SUBJECT and sid == "1" and reply is None, ev[:4]
            assert payload == payload_for(got), (s.name, got, payload[:10])
            got += 1
        return got

    counts = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in subs)), TIMEOUT)
    for s in subs:
        assert not s.events and not s.parser.buf and s.parser.pending_msg is None, \
            f"{s.name}: leftover data"
        print(f"  {s.name}: {N_MSGS} MSGs in order, carried by {s.frames} WS frames "
              f"(types: {sorted(s.frame_types)}), incl. INFO+PONG")
    print(f"  publisher sent {N_MSGS} PUBs in {chunks} binary frames of random size")
    for c in subs + [pub]:
        await c.ws.close()
    return counts


def parser_selftest():
    wire = (b'INFO {"x":1}\r\nPING\r\n+OK\r\nMSG a.b 7 5\r\nhello\r\n'
            b'MSG a 1 _INBOX.x 0\r\n\r\nMSG c 1 4\r\n\r\n\r\n\r\nPONG\r\n')
    want = NatsParser().feed(wire)
    assert [e[0] for e in want] == ["INFO", "PING", "+OK", "MSG", "MSG", "MSG", "PONG"], want
    assert want[5][4] == b"\r\n\r\n" and want[4][3] == b"_INBOX.x"
    for step in (1, 2, 3, 5, 11):
        p, got = NatsParser(), []
        for k in range(0, len(wire), step):
            got += p.feed(wire[k:k + step])
        assert got == want, step
    print("parser self-test (arbitrary chunking) OK")


def main():
    parser_selftest()
    port = free_port()
    cmd = [os.path.join(HERE, "run.sh"), str(port)]
    print("starting:", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ok = False
    try:
        line = proc.stdout.readline().rstrip("\n")
        assert line == f"listening on {port}", repr(line)
        print("run.sh printed:", line)
        counts = asyncio.run(asyncio.wait_for(scenario(f"ws://127.0.0.1:{port}/"), TIMEOUT + 10))
        assert counts == [N_MSGS] * N_SUBS, counts
        print(f"OK: {N_SUBS} subscribers x {N_MSGS} msgs of {PAYLOAD_LEN} B received in order")
        ok = True
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("FAIL: run.sh did not exit within 5 s of SIGTERM")
            sys.exit(1)
        dt = time.monotonic() - t0
        rest = proc.stdout.read()
        assert rest == "", f"extra stdout: {rest!r}"
        # the server must be gone too: both ports refuse connections
        for p in (port, port + 1):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open"
        print(f"SIGTERM: run.sh exited rc={rc} in {dt:.3f}s; ports {port},{port+1} closed")
        if ok:
            assert rc == 0, rc
    print("PASS")


if __name__ == "__main__":
    main()
