// js_client_delta.mjs: fossil deltas, end to end. shardcast.js's applyDelta
// is checked against the npm `fossil-delta` package both ways (its deltas
// applied by ours, the server's applied by its), then a server with two
// shards sends an order book's updates as deltas to the JS client (which
// must hand its handler every update whole) and to a plain WebSocket that
// records the frames. WebSocket is the `ws` package's (from `npm ci`).
// Usage: node js_client_delta.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import { createDelta, applyDelta as npmApply } from 'fossil-delta';
import WebSocket from 'ws';
import { Shardcast, applyDelta } from '../../clients/js/shardcast.js';
import { assert, finisher, httpPublish, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
const enc = new TextEncoder();
const dec = new TextDecoder();
const t0 = Date.now();
let client = null;

const finish = finisher(60000, () => (client ? [client] : []));

/** An order book of `levels` a side; `update` changes `changes` of them. */
function book(levels) {
  const bids = Array.from({ length: levels }, (_, i) => [10000 - i * 0.25, 100 + ((i * 7919) % 1000)]);
  const asks = Array.from({ length: levels }, (_, i) => [10000.25 + i * 0.25, 100 + ((i * 104729) % 1000)]);
  let n = 0;
  return {
    update(changes) {
      n++;
      for (let c = 0; c < changes; c++) {
        const side = (n + c) % 2 ? bids : asks;
        side[(n * 31 + c * 17) % levels][1] = 100 + ((n * 977 + c * 13) % 5000);
      }
      return { n, sym: 'AAPL', bids, asks };
    },
  };
}

try {
  if (!BIN) throw new Error('usage: node js_client_delta.mjs <path-to-shardcast-binary>');

  // 1. Our applyDelta reads what fossil-delta writes, byte for byte.
  const pairs = [];
  const b = book(200);
  let prev = enc.encode(JSON.stringify(b.update(0)));
  for (let i = 0; i < 20; i++) {
    const next = enc.encode(JSON.stringify(b.update(1 + (i % 12))));
    pairs.push([prev, next]);
    prev = next;
  }
  pairs.push([enc.encode('short'), enc.encode('shorter still, and different')]);
  pairs.push([enc.encode('ünïcödé text ' .repeat(20)), enc.encode('ünïcödé text, edited '.repeat(20))]);
  pairs.push([new Uint8Array(0), enc.encode('from nothing')]);
  for (const [source, target] of pairs) {
    const delta = createDelta(source, target);
    assert(Buffer.from(applyDelta(source, Uint8Array.from(delta))).equals(Buffer.from(target)), 'applyDelta differs from fossil-delta');
  }
  let refused = 0;
  const [s0, t0b] = pairs[0];
  const broken = Uint8Array.from(createDelta(s0, t0b));
  broken[broken.length - 3] ^= 1; // the checksum
  try { applyDelta(s0, broken); } catch { refused++; }
  try { applyDelta(s0, broken.subarray(0, broken.length / 2)); } catch { refused++; }
  assert(refused === 2, 'a damaged delta was applied');

  // 2. The server's deltas, to the JS client and to a plain WebSocket.
  const { port } = await startServer(BIN, 0, []);
  const ch = 'book';
  const got = [];
  const errors = [];
  client = new Shardcast(`ws://127.0.0.1:${port}/ws`, { pingInterval: 0, WebSocket });
  client.on('error', (e) => errors.push(String(e.code || e.message)));
  const sub = client.subscribe(ch, (data, meta) => got.push({ data, seq: meta.seq }), { delta: 'fossil' });
  await sub.ready;
  // Subscribed with an id: its ack means the channel's owner knows.
  const frames = [];
  let acked = false;
  const raw = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  raw.onmessage = (e) => { const text = String(e.data); if (JSON.parse(text).op === 'ack') acked = true; else frames.push(text); };
  await waitFor(() => raw.readyState === 1, 5000, 'plain WebSocket open');
  raw.send(JSON.stringify({ op: 'sub', ch, id: 1, delta: 'fossil' }));
  await waitFor(() => acked, 5000, 'the plain socket\'s sub ack');

  const published = [];
  const server = book(320);
  for (let i = 0; i < 30; i++) {
    const data = server.update(10);
    published.push(JSON.stringify(data));
    await httpPublish(port, ch, data);
  }
  await waitFor(() => got.length === 30 && frames.length === 30, 10000,
    () => `30 messages; the client has ${got.length}, the plain socket ${frames.length}`);
  assert(errors.length === 0, `client errors: ${errors}`);
  got.forEach((m, i) => assert(JSON.stringify(m.data) === published[i] && m.seq === i + 1, `update ${i + 1} differs`));

  // The plain socket: the first message whole, the rest deltas that
  // fossil-delta turns into the published text, each far smaller.
  let base = null, deltas = 0, deltaBytes = 0, fullBytes = 0;
  frames.forEach((text, i) => {
    const f = JSON.parse(text);
    assert(f.seq === i + 1, `frame ${i} has seq ${f.seq}`);
    let data;
    if (f.delta === true) {
      deltas++;
      const bytes = Uint8Array.from(f.data, (c) => c.charCodeAt(0));
      deltaBytes += text.length;
      data = dec.decode(Uint8Array.from(npmApply(base, bytes)));
    } else {
      data = text.slice(text.indexOf(',"data":') + 8, -1);
    }
    fullBytes += published[i].length;
    assert(data === published[i], `frame ${i + 1} does not rebuild the update`);
    base = enc.encode(data);
  });
  assert(deltas === 29, `${deltas} deltas`);
  const ratio = deltaBytes / (fullBytes - published[0].length);
  assert(ratio < 0.1, `deltas are ${ratio.toFixed(3)} of the updates`);
  const stats = (await (await fetch(`http://127.0.0.1:${port}/api/stats`)).json()).total;
  assert(stats.deltas_computed === 29, `deltas_computed ${stats.deltas_computed}`);
  assert(stats.deliveries_delta === 58, `deliveries_delta ${stats.deliveries_delta}`);
  raw.close();
  finish({ ok: true, ms: Date.now() - t0, deltas, ratio: Number(ratio.toFixed(4)) });
} catch (e) {
  finish({ ok: false, error: String(e && e.stack || e), ms: Date.now() - t0 });
}
