// js_client_drain.mjs: a draining server's advice ({"op":"reconnect",
// "after_ms":N} then close 1012) is honoured: the JS client reconnects no
// sooner than N ms after the close, to a server started again on the port.
// Usage: node js_client_drain.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import WebSocket from 'ws';
import { Shardcast } from '../../clients/js/shardcast.js';
import { assert, finisher, startServer, waitFor } from './js_harness.mjs';

const BIN = process.argv[2];
let client = null;

const finish = finisher(30000, () => (client ? [client] : []));

try {
  if (!BIN) throw new Error('usage: node js_client_drain.mjs <path-to-shardcast-binary>');
  const first = await startServer(BIN, 0, ['--drain-spread', '1500ms']);
  const port = first.port;
  let closedAt = 0;
  let closeCode = 0;
  const opens = [];
  client = new Shardcast(`ws://127.0.0.1:${port}/ws`, { pingInterval: 0, WebSocket, minReconnectDelay: 10 });
  client.on('open', () => opens.push(Date.now()));
  client.on('close', (e) => { closedAt = Date.now(); closeCode = e.code; });
  await waitFor(() => opens.length === 1, 5000, 'connected');
  const advised = new Promise((resolve) => {
    const original = client._onParsed.bind(client);
    client._onParsed = (f, text) => { if (f && f.op === 'reconnect') resolve(f.after_ms); original(f, text); };
  });
  first.proc.kill('SIGTERM');
  const afterMs = await advised;
  await waitFor(() => closedAt > 0, 5000, 'the close');
  assert(closeCode === 1012, `close code ${closeCode}`);
  await startServer(BIN, port, []);
  await waitFor(() => opens.length === 2, 10000, 'the reconnect');
  const waited = opens[1] - closedAt;
  assert(waited >= afterMs - 20, `reconnected after ${waited} ms, advised ${afterMs} ms`);
  finish({ ok: true, advised_ms: afterMs, waited_ms: waited });
} catch (e) {
  finish({ ok: false, error: String(e.stack || e) });
}
