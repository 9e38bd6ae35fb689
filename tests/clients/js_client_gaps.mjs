// js_client_gaps.mjs: the JS client's seq guard against a real server of two
// shards (--conflate px.*). On a channel that does not conflate, a frame lost
// on its way in (the test drops it before the client sees it) is a gap: the
// client reports it and resubscribes from its last seq, and history fills it
// in order, once. On a channel whose ack says it conflates, a skip that
// `conflated` accounts for is accepted; one that replaces more than was
// skipped is reported. WebSocket is the `ws` package's (from `npm ci`).
// Usage: node js_client_gaps.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import WebSocket from 'ws';
import { Shardcast } from '../../clients/js/shardcast.js';
import { assert, finisher, httpPublish, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
let client = null;

const finish = finisher(30000, () => (client ? [client] : []));

try {
  if (!BIN) throw new Error('usage: node js_client_gaps.mjs <path-to-shardcast-binary>');
  const { port } = await startServer(BIN, 0, ['--conflate', 'px.*']);
  client = new Shardcast(`ws://127.0.0.1:${port}/ws`, { pingInterval: 0, WebSocket });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  const trace = [];
  const parse0 = client._onParsed.bind(client);
  client._onParsed = (f, text) => { trace.push(JSON.stringify(f)); parse0(f, text); };

  const got = [];
  const sub = client.subscribe('gap.1', (data, meta) => got.push([meta.seq, data]));
  const ack = await sub.ready;
  assert(ack.seq === 0 && sub._conflates === false, `a plain channel: ${JSON.stringify(ack)}`);
  // The frame of seq 3 is lost on its way in.
  const parse = client._onParsed;
  let dropped = 0;
  client._onParsed = (f, text) => {
    if (f && f.op === 'msg' && f.ch === 'gap.1' && f.seq === 3 && dropped++ === 0) return;
    parse(f, text);
  };
  for (let i = 1; i <= 5; i++) await httpPublish(port, 'gap.1', i);
  await waitFor(() => got.length >= 5, 5000, () => `five messages (${JSON.stringify(got)}) ${errors} ${trace.join(' ')}`);
  assert(JSON.stringify(got) === '[[1,1],[2,2],[3,3],[4,4],[5,5]]', `in order, once: ${JSON.stringify(got)}`);
  assert(dropped >= 1 && errors.filter((c) => c === 'gap').length === 1, `one gap reported: ${errors}`);
  client._onParsed = parse;

  const prices = [];
  const px = client.subscribe('px.1', (data, meta) => prices.push([meta.seq, meta.conflated]));
  await px.ready;
  assert(px._conflates === true, 'the ack says px.1 conflates');
  // What conflation sends a subscriber that fell behind: seq 3 stands for 1 and 2.
  client._onParsed({ op: 'msg', ch: 'px.1', seq: 3, data: 'c', conflated: 2 }, null);
  assert(JSON.stringify(prices) === '[[3,2]]' && !errors.includes('bad_conflation'), `accepted: ${JSON.stringify(prices)} ${errors}`);
  assert(errors.filter((c) => c === 'gap').length === 1, 'no gap reported for a conflation');
  // Replacing more than was skipped is not what conflation does.
  client._onParsed({ op: 'msg', ch: 'px.1', seq: 4, data: 'd', conflated: 1 }, null);
  assert(errors.includes('bad_conflation'), `reported: ${errors}`);
  finish({ ok: true, errors });
} catch (e) {
  finish({ ok: false, error: String(e.stack || e) });
}
