// js_client_unreadable.mjs: the JS client against a replay that fails the
// same way every time. A real server of two shards publishes seq 1..6 on a
// channel; every frame bringing seq 3 reaches the client with a raw line
// break inside its data (what a raw room's JSON text once produced, and
// what splits a batched frame into pieces that do not parse), live and in
// every replay. The client reports the gap and asks history again — at
// once, then after a backoff — and after `maxRefills` replays that leave the
// same gap, skips it: onReset with reason 'unreadable', error 'gap_skipped',
// and seq 4, 5, 6 delivered; it does not resubscribe in a loop.
// WebSocket is the `ws` package's (from `npm ci`).
// Usage: node js_client_unreadable.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import WebSocket from 'ws';
import { Shardcast } from '../../clients/js/shardcast.js';
import { assert, finisher, httpPublish, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
let client = null;

const finish = finisher(30000, () => (client ? [client] : []));

try {
  if (!BIN) throw new Error('usage: node js_client_unreadable.mjs <path-to-shardcast-binary>');
  const { port } = await startServer(BIN, 0);
  client = new Shardcast(`ws://127.0.0.1:${port}/ws`, { pingInterval: 0, minReconnectDelay: 50, WebSocket });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  let subs = 0;
  const sendSub = client._sendSub.bind(client);
  client._sendSub = (sub) => { subs++; sendSub(sub); };
  // Seq 3 of bad.1 arrives unreadable, every time.
  let mangled = 0;
  const onFrame = client._onFrame.bind(client);
  client._onFrame = (data) => {
    const text = typeof data === 'string' ? data : String(data);
    const bad = text.replace(/("ch":"bad\.1","seq":3,"data":)3/, (_, head) => { mangled++; return `${head}[3,\n3]`; });
    onFrame(bad);
  };

  const got = [];
  const resets = [];
  const sub = client.subscribe('bad.1', (data, meta) => got.push(meta.seq), { onReset: (r) => resets.push(r) });
  await sub.ready;
  for (let i = 1; i <= 5; i++) await httpPublish(port, 'bad.1', i);
  await waitFor(() => got.includes(5), 10000,
    () => `seq 5 delivered: got ${JSON.stringify(got)}, ${subs} subs sent, ${mangled} frames mangled, errors ${errors.slice(0, 20)}`);
  // A publication after the skip arrives, and nothing was asked again meanwhile.
  await httpPublish(port, 'bad.1', 6);
  await waitFor(() => got.includes(6), 5000, () => `seq 6: ${JSON.stringify(got)}`);
  const count = (code) => errors.filter((c) => c === code).length;
  assert(JSON.stringify(got) === '[1,2,4,5,6]', `in order, seq 3 skipped: ${JSON.stringify(got)}`);
  assert(resets.length === 1 && resets[0].reason === 'unreadable' && resets[0].seq === 3,
    `one reset for the skipped seq: ${JSON.stringify(resets)}`);
  assert(count('gap') === 3 && count('gap_skipped') === 1, `three replays, then skipped: ${errors}`);
  assert(subs === 4, `the first sub and three replays, no more: ${subs}`);
  assert(mangled === 4, `seq 3 came live and in each replay: ${mangled}`);
  finish({ ok: true, subs, mangled, errors: errors.length });
} catch (e) {
  finish({ ok: false, error: String(e.stack || e) });
}
