// js_client_cluster.mjs: the JS client on a two-node service through a real
// redis-server (Debian's package, started here). The client on node b
// receives what is published on node a; then Redis is restarted without
// persistence, the channel's history and epoch are gone, and the server's
// `resync` must reach the app as onReset({reason: 'resync'}) before the
// next message (seq 1 of the new epoch) is delivered.
// Usage: node js_client_cluster.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import { spawn } from 'node:child_process';
import net from 'node:net';
import WebSocket from 'ws';
import { Shardcast } from '../../clients/js/shardcast.js';
import { assert, finisher, httpPublish, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
let client = null;
let redis = null;

const finish = finisher(60000, () => (client ? [client] : []), () => { if (redis) redis.kill('SIGKILL'); });

/** A free TCP port of 127.0.0.1. */
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Whether something answers on `port`. */
function answers(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

async function startRedis(port) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  await waitFor(() => answers(port), 10000, 'redis-server');
  return proc;
}

async function healthy(port) {
  try { return (await fetch(`http://127.0.0.1:${port}/health`)).status === 200; } catch { return false; }
}

try {
  if (!BIN) throw new Error('usage: node js_client_cluster.mjs <path-to-shardcast-binary>');
  const redisPort = await freePort();
  redis = await startRedis(redisPort);
  const engine = ['--engine', 'redis', '--redis-url', `redis://127.0.0.1:${redisPort}`, '--engine-timeout', '500ms'];
  const a = await startServer(BIN, 0, [...engine, '--node-id', 'a']);
  const b = await startServer(BIN, 0, [...engine, '--node-id', 'b']);
  await waitFor(async () => (await healthy(a.port)) && (await healthy(b.port)), 10000, 'both nodes healthy');

  const got = [];
  const resets = [];
  client = new Shardcast(`ws://127.0.0.1:${b.port}/ws`, { pingInterval: 0, WebSocket });
  const sub = client.subscribe('room', (data, meta) => got.push({ data, seq: meta.seq, epoch: meta.epoch }),
    { onReset: (info) => resets.push({ ...info, delivered: got.length }) });
  const first = await sub.ready;
  for (let i = 1; i <= 3; i++) assert(await httpPublish(a.port, 'room', { i }) === i, 'seq from Redis');
  await waitFor(() => got.length === 3, 10000, () => `3 messages across nodes (got ${got.length})`);
  assert(got.every((m, i) => m.seq === i + 1 && m.data.i === i + 1), `in order: ${JSON.stringify(got)}`);

  redis.kill('SIGKILL');
  await waitFor(async () => !(await healthy(b.port)), 10000, 'b degraded');
  redis = await startRedis(redisPort);
  await waitFor(() => resets.length === 1, 10000, 'onReset after Redis lost everything');
  const reset = resets[0];
  assert(reset.reason === 'resync' && reset.seq === 0 && reset.epoch !== first.epoch, `reset: ${JSON.stringify(reset)}`);
  await waitFor(async () => (await healthy(a.port)) && (await healthy(b.port)), 10000, 'both nodes healthy again');
  assert(await httpPublish(a.port, 'room', { i: 'after' }) === 1, 'a new epoch starts at 1');
  await waitFor(() => got.length === 4, 10000, 'the message after the resync');
  assert(got[3].seq === 1 && got[3].epoch === reset.epoch && reset.delivered === 3, `after: ${JSON.stringify(got[3])}`);
  finish({ ok: true, delivered: got.length, epochs: [first.epoch, reset.epoch] });
} catch (e) {
  finish({ ok: false, error: String(e.stack || e) });
}
