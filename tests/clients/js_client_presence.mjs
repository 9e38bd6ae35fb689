// js_client_presence.mjs: the JS client's presence API against a real server
// of two shards (--presence room.*): onJoin/onLeave on a subscription, the
// member list and the count, a refusal for a channel without presence, and
// a subscription the server API ends (not resubscribed on reconnect).
// WebSocket is the `ws` package's (from `npm ci`).
// Usage: node js_client_presence.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import WebSocket from 'ws';
import { Shardcast } from '../../clients/js/shardcast.js';
import { assert, finisher, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
const clients = [];

const finish = finisher(30000, () => clients);

try {
  if (!BIN) throw new Error('usage: node js_client_presence.mjs <path-to-shardcast-binary>');
  const API_KEY = 'js-presence-test-api-key-0123456789';
  const { port } = await startServer(BIN, 0, ['--presence', 'room.*', '--api-key', API_KEY]);
  const url = `ws://127.0.0.1:${port}/ws`;
  const open = () => { const c = new Shardcast(url, { pingInterval: 0, WebSocket }); clients.push(c); return c; };
  const watcher = open();
  const joins = [];
  const leaves = [];
  const sub = watcher.subscribe('room.1', () => {}, {
    onJoin: (m) => joins.push(m),
    onLeave: (m) => leaves.push(m),
  });
  await sub.ready;
  await waitFor(() => joins.length === 1, 5000, 'its own join');
  const others = [open(), open(), open()];
  await Promise.all(others.map((c) => c.subscribe('room.1', () => {}).ready));
  await waitFor(() => joins.length === 4, 5000, () => `the others' joins (${joins.length})`);
  assert(joins.every((m) => m.ch === 'room.1' && typeof m.conn === 'string' && m.user === undefined), JSON.stringify(joins));
  const everyone = await watcher.presence('room.1');
  assert(everyone.count === 4 && everyone.members.length === 4 && everyone.cursor === undefined, JSON.stringify(everyone));
  const first = await watcher.presence('room.1', { limit: 3 });
  assert(first.members.length === 3 && typeof first.cursor === 'string', JSON.stringify(first));
  const rest = await watcher.presence('room.1', { limit: 3, cursor: first.cursor });
  const conns = new Set([...first.members, ...rest.members].map((m) => m.conn));
  assert(conns.size === 4 && rest.cursor === undefined, 'two pages cover everyone once');
  assert(await watcher.occupancy('room.1') === 4, 'occupancy');
  others[0].close();
  await waitFor(() => leaves.length === 1, 5000, 'a leave');
  assert(leaves[0].conn === joins[1].conn || joins.some((j) => j.conn === leaves[0].conn), 'the leave names a member that joined');
  assert(await watcher.occupancy('room.1') === 3, 'one fewer');
  let refused = null;
  try { await watcher.presence('plain'); } catch (e) { refused = e.code; }
  assert(refused === 'no_presence', `refusal: ${refused}`);
  // The server API ends the watcher's subscription: the client forgets it
  // and does not bring it back when it reconnects.
  const ended = [];
  watcher.on('unsubscribed', (info) => ended.push(info));
  const answer = await fetch(`http://127.0.0.1:${port}/api/unsubscribe`, {
    method: 'POST', headers: { 'X-API-Key': API_KEY }, body: JSON.stringify({ conn: joins[0].conn, ch: 'room.1' }),
  });
  assert(answer.status === 200, `unsubscribe: ${answer.status}`);
  assert((await answer.json()).unsubscribed === 1, 'one connection acted on');
  await waitFor(() => ended.length === 1, 5000, 'the unsubscribed event');
  assert(ended[0].ch === 'room.1' && ended[0].reason === 'server', JSON.stringify(ended));
  assert(!sub.active && !watcher._subs.has('room.1'), 'the subscription is forgotten');
  assert(await others[1].occupancy('room.1') === 2, 'the watcher left the channel');
  const opened = new Promise((r) => watcher.on('open', r));
  watcher._ws.terminate();
  await opened;
  const again = await watcher.subscribe('plain.1', () => {}).ready;
  assert(again.seq === 0, 'the reconnected client works');
  assert(await others[1].occupancy('room.1') === 2, 'not resubscribed on reconnect');
  finish({ ok: true, joins: joins.length, leaves: leaves.length });
} catch (e) {
  finish({ ok: false, error: String(e.stack || e) });
}
