// Benchmark peer: WebSocket pub/sub broadcast server on Node.js + ws.
// Usage: node server.mjs <port>   — /ws?sub=<channel>&pub=<channel>
// With TLS_CERT and TLS_KEY (PEM files) in the environment it serves wss://
// through https.createServer instead of plain ws://. With PERMESSAGE_DEFLATE=1
// it negotiates permessage-deflate (ws compresses per connection), threshold
// 256 B and level 3 as shardcast's defaults.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { WebSocketServer, WebSocket } from 'ws';

const port = Number(process.argv[2]);
const channels = new Map(); // channel -> Set<WebSocket>

const { TLS_CERT, TLS_KEY, PERMESSAGE_DEFLATE } = process.env;
const perMessageDeflate = PERMESSAGE_DEFLATE === '1'
  ? { threshold: 256, zlibDeflateOptions: { level: 3 } }
  : false;
let wss;
if (TLS_CERT || TLS_KEY) {
  if (!TLS_CERT || !TLS_KEY) throw new Error('TLS needs both TLS_CERT and TLS_KEY');
  const https = createServer({ cert: readFileSync(TLS_CERT), key: readFileSync(TLS_KEY) });
  wss = new WebSocketServer({ server: https, path: '/ws', perMessageDeflate });
  https.listen(port, '127.0.0.1', () => process.stdout.write(`listening on ${port} (TLS)\n`));
} else {
  wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws', perMessageDeflate });
  wss.on('listening', () => process.stdout.write(`listening on ${port}\n`));
}

wss.on('connection', (ws, req) => {
  const params = new URL(req.url, 'http://localhost').searchParams;
  const sub = params.get('sub');
  const pub = params.get('pub');

  if (sub !== null) {
    let set = channels.get(sub);
    if (!set) channels.set(sub, (set = new Set()));
    set.add(ws);
    ws.on('close', () => {
      set.delete(ws);
      if (set.size === 0 && channels.get(sub) === set) channels.delete(sub);
    });
  }

  if (pub !== null) {
    ws.on('message', (data, isBinary) => {
      const set = channels.get(pub);
      if (!set) return;
      for (const client of set) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  }

  ws.on('error', () => {}); // a client dropping must not crash the server
});

const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
