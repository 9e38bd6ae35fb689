# Benchmark peer: WebSocket pub/sub broadcast server on Python asyncio + websockets.
# Usage: python3 server.py <port>   — /ws?sub=<channel>&pub=<channel>
import asyncio
import signal
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

channels: dict[str, set] = {}  # channel -> set of subscribed connections


async def handler(ws):
    query = parse_qs(urlsplit(ws.request.path).query)
    sub = query.get("sub", [None])[0]
    pub = query.get("pub", [None])[0]

    if sub is not None:
        channels.setdefault(sub, set()).add(ws)
    try:
        # Iterating reads every frame (the library answers pings itself);
        # str for text frames, bytes for binary, so broadcast keeps the opcode.
        async for message in ws:
            if pub is not None and pub in channels:
                broadcast(channels[pub], message)
    except ConnectionClosed:
        pass  # client vanished without a close handshake: not an error here
    finally:
        if sub is not None:
            subs = channels[sub]
            subs.discard(ws)
            if not subs:
                del channels[sub]


def process_request(connection, request):
    if urlsplit(request.path).path != "/ws":
        return connection.respond(404, "Not Found\n")


async def main(port):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # close_timeout=1: on shutdown don't wait the default 10 s for unresponsive clients.
    async with serve(handler, "127.0.0.1", port, process_request=process_request, close_timeout=1):
        print(f"listening on {port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
