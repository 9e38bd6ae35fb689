// Benchmark peer: WebSocket pub/sub broadcast server on Node.js + ws.
// Usage: node server.mjs <port>   — /ws?sub=<channel>&pub=<channel>
import { WebSocketServer, WebSocket } from 'ws';

const port = Number(process.argv[2]);
const channels = new Map(); // channel -> Set<WebSocket>

const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });

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

wss.on('listening', () => process.stdout.write(`listening on ${port}\n`));

const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
