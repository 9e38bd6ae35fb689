// js_client_msgpack.mjs: the MessagePack protocol in the JS client.
// shardcast.js's own codec is checked against the npm @msgpack/msgpack
// package both ways (every type and length boundary the protocol can
// meet), then a client with {protocol: 'msgpack'} subscribes, publishes and
// receives against a real server with two shards, beside a JSON client of
// the same channel, and gets a raw room's binary frame as a Uint8Array.
// Usage: node js_client_msgpack.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import { encode as npmEncode, decode as npmDecode } from '@msgpack/msgpack';
import { isDeepStrictEqual } from 'node:util';
import WebSocket from 'ws';
import { Shardcast, msgpack } from '../../clients/js/shardcast.js';
import { assert, finisher, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
const t0 = Date.now();
const clients = [];

const finish = finisher(60000, () => clients);

try {
  if (!BIN) throw new Error('usage: node js_client_msgpack.mjs <path-to-shardcast-binary>');

  // 1. The codec, against @msgpack/msgpack, both ways.
  const ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53) + 1];
  const strings = [0, 1, 31, 32, 255, 256, 65535, 65536].map((n) => 'é'.repeat(Math.ceil(n / 2)).slice(0, n));
  const bins = [0, 1, 255, 256, 65536].map((n) => Uint8Array.from({ length: n }, (_, i) => i & 0xff));
  const arrays = [0, 15, 16, 65536].map((n) => Array.from({ length: n }, (_, i) => i % 3 ? i : null));
  const maps = [0, 15, 16, 70000].map((n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i % 2 === 0])));
  const values = [null, true, false, 1.5, -0.25, 1e300, ...ints, ...strings, ...bins, ...arrays, ...maps,
    { op: 'msg', ch: 'c', seq: 42, data: { px: 187.25, tags: ['a', 'b'], nested: [[1, [2, { x: null }]]] } }];
  for (const value of values) {
    const ours = msgpack.encode(value);
    assert(isDeepStrictEqual(npmDecode(ours), value), `@msgpack/msgpack decodes ours: ${JSON.stringify(value).slice(0, 80)}`);
    assert(isDeepStrictEqual(msgpack.decode(npmEncode(value)), value), `ours decodes @msgpack/msgpack's: ${JSON.stringify(value).slice(0, 80)}`);
  }
  for (const bad of [[0xc1], [0x92, 0x01], [0xd9, 0x05, 0x61], [0xc7, 0x01, 0x01, 0x00], [0x01, 0x02]]) {
    let refused = false;
    try { msgpack.decode(Uint8Array.from(bad)); } catch { refused = true; }
    assert(refused, `malformed ${bad} decoded`);
  }

  // 2. Against the server.
  const { port } = await startServer(BIN, 0, []);
  const url = `ws://127.0.0.1:${port}/ws`;
  const mp = new Shardcast(url, { protocol: 'msgpack', WebSocket, pingInterval: 0 });
  const js = new Shardcast(url, { WebSocket, pingInterval: 0 });
  clients.push(mp, js);
  const errors = [];
  for (const c of clients) c.on('error', (e) => errors.push(String(e.code || e.message)));
  const gotMp = [], gotJs = [], gotRoom = [];
  const subMp = mp.subscribe('prices', (data, meta) => gotMp.push({ data, seq: meta.seq }));
  const subJs = js.subscribe('prices', (data, meta) => gotJs.push({ data, seq: meta.seq }));
  const subRoom = mp.subscribe('mp-room', (data) => gotRoom.push(data));
  await Promise.all([subMp.ready, subJs.ready, subRoom.ready]);
  await waitFor(() => mp._ws.protocol === 'shardcast.msgpack', 5000, 'the msgpack subprotocol');

  const a = { px: 187.25, sym: 'AAPL', levels: [[1, 2], [3, 4]] };
  const b = [1, 'two', null, -7];
  const ackA = await mp.publish('prices', a);
  const ackB = await js.publish('prices', b);
  assert(ackA === 1 && ackB === 2, `acks ${JSON.stringify([ackA, ackB])}`);
  await waitFor(() => gotMp.length === 2 && gotJs.length === 2, 5000, 'both publications on both clients');
  for (const got of [gotMp, gotJs]) {
    assert(isDeepStrictEqual(got[0].data, a) && isDeepStrictEqual(got[1].data, b), `got ${JSON.stringify(got)}`);
  }
  const room = new WebSocket(`ws://127.0.0.1:${port}/ws/mp-room?echo=0`);
  await waitFor(() => room.readyState === 1, 5000, 'the room member');
  room.send(Buffer.from([0, 1, 254, 255]));
  await waitFor(() => gotRoom.length === 1, 5000, "the room's binary frame");
  assert(gotRoom[0] instanceof Uint8Array && isDeepStrictEqual([...gotRoom[0]], [0, 1, 254, 255]), `room ${gotRoom[0]}`);
  room.close();
  assert(errors.length === 0, `client errors: ${errors}`);
  finish({ ok: true, ms: Date.now() - t0, values: values.length });
} catch (e) {
  finish({ ok: false, error: String(e && e.stack || e), ms: Date.now() - t0 });
}
