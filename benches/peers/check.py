# Conformance check for benchmark peers: python3 check.py <cmd> [args...]
# Starts the peer on a free port (appended as last argument), checks pub/sub fan-out,
# opcodes, ordering, self-echo, ping, abrupt disconnects, and prompt exit on SIGTERM
# even with an unresponsive client connected.
import asyncio
import os
import signal
import socket
import sys
import time

from websockets.asyncio.client import connect

TIMEOUT = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def recv_all(ws, n):
    return [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(n)]


async def run(cmd):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(*cmd, str(port), stdout=asyncio.subprocess.PIPE)
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    assert line == f"listening on {port}\n", f"bad ready line: {line!r}"
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        # A subscriber that vanishes without a close handshake must not hurt anyone.
        rude = await connect(f"{url}?sub=c")
        rude.transport.abort()

        subs = [await connect(f"{url}?sub=c") for _ in range(3)]
        publisher = await connect(f"{url}?pub=c")
        await asyncio.sleep(0.2)  # let the server register everyone

        frames = [f"text {i} ✓" for i in range(100)]
        frames += [bytes([i]) * size for i, size in enumerate([0, 1, 125, 126, 127, 65535, 65536, 100_000, 7, 3])]
        for f in frames:
            await publisher.send(f)  # str -> text frame, bytes -> binary frame
        for i, ws in enumerate(subs):
            got = await recv_all(ws, len(frames))
            assert got == frames, f"subscriber {i}: frames differ"  # also checks str/bytes = opcode
        print(f"ok: 3 subscribers got all {len(frames)} frames in order with right opcodes")

        pong = await subs[0].ping(b"hi")
        await asyncio.wait_for(pong, TIMEOUT)
        print("ok: ping answered")

        both = await connect(f"{url}?sub=r&pub=r")
        await asyncio.sleep(0.1)
        await both.send("echo me")
        await both.send(b"\x00\xffbin")
        assert await recv_all(both, 2) == ["echo me", b"\x00\xffbin"], "self-echo failed"
        for ws in subs:  # nothing from channel r leaked into c
            try:
                extra = await asyncio.wait_for(ws.recv(), 0.2)
                raise AssertionError(f"unexpected frame on c: {extra!r}")
            except TimeoutError:
                pass
        print("ok: sub=r&pub=r connection got its own frames back; no cross-channel leak")
        # Leave connections open: the peer must exit promptly even with live clients,
        # including one that completed the handshake and then stopped responding.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /ws?sub=c HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 101"), "stuck client: no 101"
    finally:
        if proc.returncode is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), TIMEOUT)
            except TimeoutError:
                proc.kill()
                raise AssertionError("peer did not exit within 5 s of SIGTERM")
            print(f"ok: exited {time.monotonic() - t0:.2f} s after SIGTERM (code {proc.returncode}, live + unresponsive clients connected)")


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1:]))
    print("PASS")
