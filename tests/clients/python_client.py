"""A standard client: Python `websockets` drives shardcast.

Usage: python_client.py ws://HOST:PORT
Subscribes (by op and by ?sub=), publishes with an id, checks the ack's seq
and the delivered envelope, then round-trips a raw room. Compression is on,
as websockets has it by default: a large publication goes compressed both
ways (permessage-deflate). Exits non-zero with a message on any mismatch;
every wait is bounded.
"""

import asyncio
import json
import sys

import websockets

TIMEOUT = 10


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def main(base):
    async with websockets.connect(f"{base}/ws") as alice, websockets.connect(
        f"{base}/ws?sub=py-news"
    ) as bob:
        await alice.send(json.dumps({"op": "sub", "ch": "py-news", "id": 1}))
        ack = await recv_json(alice)
        assert ack["op"] == "ack" and ack["id"] == 1, ack
        assert ack["seq"] == 0 and isinstance(ack["epoch"], str), ack
        # bob subscribed via ?sub=: live once his upgrade was answered.
        await alice.send(json.dumps({"op": "pub", "ch": "py-news", "data": {"n": 1}, "id": 101}))
        got = {}
        while "ack" not in got or "msg" not in got:
            m = await recv_json(alice)
            got[m["op"]] = m
        assert got["ack"] == {"op": "ack", "id": 101, "seq": 1}, got
        assert got["msg"] == {"op": "msg", "ch": "py-news", "seq": 1, "data": {"n": 1}}, got
        assert await recv_json(bob) == got["msg"]

        extensions = alice.response.headers.get("Sec-WebSocket-Extensions", "")
        assert extensions.startswith("permessage-deflate"), extensions
        # websockets compresses what it sends; shardcast compresses it once
        # for both subscribers.
        big = {"text": "the quick brown fox jumps over the lazy dog " * 100}
        await alice.send(json.dumps({"op": "pub", "ch": "py-news", "data": big}))
        for ws in (alice, bob):
            while True:
                m = await recv_json(ws)
                if m["op"] == "msg" and m["data"] == big:
                    break

    async with websockets.connect(f"{base}/ws/py-room") as a, websockets.connect(
        f"{base}/ws/py-room?echo=0"
    ) as b:
        await b.send("hello from b")
        assert await asyncio.wait_for(a.recv(), TIMEOUT) == "hello from b"
        await a.send(b"\x00\xffbinary")
        assert await asyncio.wait_for(b.recv(), TIMEOUT) == b"\x00\xffbinary"
    print("python websockets client: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
