"""The MessagePack protocol, driven by Python `websockets` and `msgpack`.

Usage: msgpack_client.py ws://HOST:PORT
A client that offers `shardcast.msgpack` speaks the JSON protocol's ops in
MessagePack maps: it subscribes and is acknowledged, publishes and is
acknowledged, and receives what JSON clients and raw rooms publish (binary
data as bytes, no base64); a JSON client receives what it publishes.
Refused input gets an `err` map. Exits non-zero on any mismatch; every wait
is bounded.
"""

import asyncio
import json
import sys

import msgpack
import websockets

TIMEOUT = 10


async def recv_map(ws):
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, bytes), f"a binary frame, got {frame!r}"
    return msgpack.unpackb(frame)


async def recv_op(ws, op):
    while True:
        m = await recv_map(ws)
        if m["op"] == op:
            return m


async def main(base):
    async with websockets.connect(f"{base}/ws", subprotocols=["shardcast.msgpack"]) as mp, \
            websockets.connect(f"{base}/ws", subprotocols=["shardcast.json"]) as js, \
            websockets.connect(f"{base}/ws/mp-room") as room:
        assert mp.subprotocol == "shardcast.msgpack", mp.subprotocol
        assert js.subprotocol == "shardcast.json", js.subprotocol
        for ch, i in (("mp", 1), ("mp-room", 2)):
            await mp.send(msgpack.packb({"op": "sub", "ch": ch, "id": i}))
            ack = await recv_map(mp)
            assert ack["op"] == "ack" and ack["id"] == i and ack["seq"] == 0, ack
            assert isinstance(ack["epoch"], str), ack
        await js.send(json.dumps({"op": "sub", "ch": "mp", "id": "j"}))
        assert json.loads(await asyncio.wait_for(js.recv(), TIMEOUT))["op"] == "ack"

        # MessagePack in, JSON and MessagePack out.
        data = {"px": 187.25, "tags": ["a", "b"], "n": -3, "ok": True, "none": None}
        await mp.send(msgpack.packb({"op": "pub", "ch": "mp", "data": data, "id": 3}))
        got = {}
        while "ack" not in got or "msg" not in got:
            m = await recv_map(mp)
            got[m["op"]] = m
        assert got["ack"] == {"op": "ack", "id": 3, "seq": 1}, got
        assert got["msg"] == {"op": "msg", "ch": "mp", "seq": 1, "data": data}, got
        m = json.loads(await asyncio.wait_for(js.recv(), TIMEOUT))
        assert m == {"op": "msg", "ch": "mp", "seq": 1, "data": data}, m

        # JSON in, MessagePack out.
        await js.send(json.dumps({"op": "pub", "ch": "mp", "data": [1, "two", None]}))
        m = await recv_op(mp, "msg")
        assert m == {"op": "msg", "ch": "mp", "seq": 2, "data": [1, "two", None]}, m
        assert json.loads(await asyncio.wait_for(js.recv(), TIMEOUT))["seq"] == 2

        # Binary data: bytes to MessagePack clients, base64 to JSON ones.
        await mp.send(msgpack.packb({"op": "pub", "ch": "mp", "data": b"\x00\xff\x10"}))
        m = await recv_op(mp, "msg")
        assert m == {"op": "msg", "ch": "mp", "seq": 3, "bin": b"\x00\xff\x10"}, m
        m = json.loads(await asyncio.wait_for(js.recv(), TIMEOUT))
        assert m == {"op": "msg", "ch": "mp", "seq": 3, "bin": "AP8Q"}, m
        # A raw room's binary frame, as bytes.
        await room.send(b"\x01\x02")
        m = await recv_op(mp, "msg")
        assert m["ch"] == "mp-room" and m["bin"] == b"\x01\x02", m

        # What the protocol refuses, it says in MessagePack.
        for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"op": "pub", "ch": "bad name!", "data": 1, "id": 9})):
            await mp.send(bad)
            err = await recv_op(mp, "err")
            assert err["code"] in ("bad_json", "bad_channel"), err
        await mp.send("a text frame")
        err = await recv_op(mp, "err")
        assert err["code"] == "bad_json", err
        await mp.send(msgpack.packb({"op": "ping", "id": "p"}))
        assert await recv_op(mp, "pong") == {"op": "pong", "id": "p"}
    print("python msgpack client: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
