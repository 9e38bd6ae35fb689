// js_client_node.mjs: tests shardcast.js against the real server.
// Usage: node js_client_node.mjs <path-to-shardcast-binary>
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
// Node 20/21 have WebSocket only behind a flag: the script re-runs itself with it.
import { spawn } from 'node:child_process';
import net from 'node:net';

if (typeof WebSocket === 'undefined') {
  if (process.env.SHARDCAST_TEST_REEXEC) {
    console.log(JSON.stringify({ ok: false, error: 'no WebSocket in this Node' }));
    process.exit(1);
  }
  const child = spawn(process.execPath,
    ['--experimental-websocket', '--disable-warning=ExperimentalWarning', ...process.argv.slice(1)],
    { stdio: 'inherit', env: { ...process.env, SHARDCAST_TEST_REEXEC: '1' } });
  const fwd = (sig) => process.on(sig, () => child.kill(sig));
  fwd('SIGINT'); fwd('SIGTERM');
  child.on('exit', (code) => process.exit(code ?? 1));
} else {
  await main();
}

async function main() {
  const { Shardcast } = await import('../../clients/js/shardcast.js');
  const { assert, httpPublish, killAll, sleep, startServer: start, waitFor } = await import('./js_harness.mjs');
  const BIN = process.argv[2];
  const HARD_TIMEOUT_MS = 60000;
  const clients = new Set();
  const t0 = Date.now();
  const timings = {};

  const finish = (result) => {
    for (const c of clients) c.close();
    killAll();
    console.log(JSON.stringify(result));
    process.exit(result.ok ? 0 : 1);
  };
  setTimeout(() => finish({ ok: false, error: `hard timeout after ${HARD_TIMEOUT_MS} ms`, timings }), HARD_TIMEOUT_MS).unref();
  if (!BIN) finish({ ok: false, error: 'usage: node js_client_node.mjs <path-to-shardcast-binary>' });

  const startServer = (port, extra) => start(BIN, port, extra);

  /** Publish {n: 1..count} every `pace` ms; `hook(n)` runs after each success; retries failures. */
  async function publisher(getPort, ch, count, pace, hook) {
    let next = Date.now();
    for (let n = 1; n <= count;) {
      try { await httpPublish(getPort(), ch, { n }); } catch (e) {
        if (/HTTP publish/.test(e.message)) throw e;
        await sleep(20); continue; // server down: retry the same n
      }
      if (hook) await hook(n);
      n++;
      next += pace;
      await sleep(Math.max(0, next - Date.now()));
    }
  }

  /** WebSocket subclass recording every envelope received (injected through options.WebSocket);
   * the client asks for batches, so a frame may hold several, one per line. */
  function spyClass(frames) {
    return class SpyWS extends WebSocket {
      constructor(url) {
        super(url);
        this.addEventListener('message', (e) => { for (const line of e.data.split('\n')) frames.push(JSON.parse(line)); });
      }
    };
  }

  function makeClient(url, opts = {}) {
    const c = new Shardcast(url, { minReconnectDelay: 100, maxReconnectDelay: 2000, ackTimeout: 5000, ...opts });
    clients.add(c);
    c.closes = [];
    c.states = [];
    c.errors = [];
    c.on('close', (e) => c.closes.push(e.code));
    c.on('state', (s) => c.states.push(s));
    c.on('error', (e) => c.errors.push(String(e.code || e.message)));
    return c;
  }

  /** Subscribe and record deliveries and resets. */
  function record(client, ch) {
    const rec = { got: [], resets: [] };
    rec.sub = client.subscribe(ch, (data, meta) => rec.got.push({ n: data.n, seq: meta.seq, epoch: meta.epoch }),
      { onReset: (info) => rec.resets.push(info) });
    return rec;
  }

  function checkConsecutive(list, what) {
    for (let i = 1; i < list.length; i++) {
      assert(list[i].seq === list[i - 1].seq + 1, `${what}: seq ${list[i].seq} after ${list[i - 1].seq}`);
      assert(list[i].n === list[i - 1].n + 1, `${what}: n ${list[i].n} after ${list[i - 1].n}`);
    }
  }

  const N = 300;
  const summary = {};
  const step = async (name, fn) => { const s = Date.now(); summary[name] = await fn(); timings[name] = Date.now() - s; };

  try {
    // ---- basics: publish acks, errors, queued publish, explicit close ----
    const main = await startServer(0, ['--history-size', '1000']);
    const url = `ws://127.0.0.1:${main.port}/ws`;
    await step('publish', async () => {
      const c = makeClient(url);
      const queued = c.publish('basic', { q: 1 });           // issued before the socket is open
      assert(c.state === 'connecting', `state ${c.state}`);
      const s1 = await queued;
      const s2 = await c.publish('basic', { q: 2 });
      assert(Number.isInteger(s1) && s2 === s1 + 1, `seqs ${s1}, ${s2}`);
      // A retry under its idempotencyKey is answered, not published again.
      const k1 = await c.publish('basic', { q: 3 }, { idempotencyKey: 'q-3' });
      const k2 = await c.publish('basic', { q: 3 }, { idempotencyKey: 'q-3' });
      const s3 = await c.publish('basic', { q: 4 });
      assert(k1 === s2 + 1 && k2 === k1 && s3 === k1 + 1, `keyed seqs ${k1}, ${k2}, then ${s3}`);
      const forbidden = await c.publish('$stats', 1).then(() => null, (e) => e.code);
      const bad = await c.publish('bad name', 1).then(() => null, (e) => e.code);
      assert(forbidden === 'forbidden', `$stats gave ${forbidden}`);
      assert(bad === 'bad_channel', `'bad name' gave ${bad}`);
      const badSub = await c.subscribe('bad name', () => {}).ready.then(() => null, (e) => e.code);
      assert(badSub === 'bad_channel', `sub 'bad name' gave ${badSub}`);
      const rtt = await c.ping();
      c.close();
      assert(c.state === 'closed', 'not closed');
      const afterClose = await c.publish('basic', 1).then(() => null, (e) => e.code);
      assert(afterClose === 'closed', `publish after close gave ${afterClose}`);
      assert(c.states.join() === 'open,closed', `states ${c.states}`);
      return { s1, s2, k1, k2, s3, forbidden, bad, badSub, rtt };
    });

    // ---- keepalive: small ping interval, idle connection stays up ----
    await step('keepalive', async () => {
      const frames = [];
      const c = makeClient(url, { pingInterval: 100, pongTimeout: 1000, WebSocket: spyClass(frames) });
      const rec = record(c, 'idle');
      await rec.sub.ready;
      await waitFor(() => frames.filter((f) => f.op === 'pong').length >= 5, 5000, '5 pongs');
      const seq = await httpPublish(main.port, 'idle', { n: 1 });
      await waitFor(() => rec.got.length === 1, 3000, 'msg on idle channel');
      assert(rec.got[0].seq === seq, 'wrong seq');
      assert(c.closes.length === 0, `connection closed: ${c.closes}`);
      c.close();
      return { pongs: frames.filter((f) => f.op === 'pong').length };
    });

    // ---- a) connection cut while messages flow: must recover with no gap and no duplicate ----
    await step('cut', async () => {
      const frames = [];
      const c = makeClient(url, { pingInterval: 200, pongTimeout: 2000, WebSocket: spyClass(frames) });
      const rec = record(c, 'feed-a');
      const first = await rec.sub.ready;
      await publisher(() => main.port, 'feed-a', N, 5, async (n) => {
        if (n === 100) {
          // Real server-initiated close: a frame over --max-message-bytes (64KiB) makes the
          // server close the connection with 1009 while publications keep flowing.
          c._ws.send(JSON.stringify({ op: 'ping', id: 0, pad: 'x'.repeat(70 * 1024) }));
        }
        if (n === 200) {
          await waitFor(() => c.state === 'open', 5000, 'reconnect after 1009');
          c._ws.close(4001, 'simulated network drop'); // behind the client logic's back
        }
      });
      await waitFor(() => rec.got.length >= N, 15000, `all ${N} messages (got ${rec.got.length})`);
      assert(rec.got.length === N, `got ${rec.got.length} messages`);
      rec.got.forEach((m, i) => assert(m.n === i + 1, `message ${i} is n=${m.n}`));
      checkConsecutive(rec.got, 'cut');
      assert(rec.got[0].seq === first.seq + 1, 'first seq');
      assert(rec.resets.length === 0, `onReset called: ${JSON.stringify(rec.resets)}`);
      const subAcks = frames.filter((f) => f.op === 'ack' && f.epoch);
      assert(subAcks.length === 3, `expected 3 sub acks, saw ${subAcks.length}`);
      assert(subAcks.slice(1).every((f) => f.recovered === true && f.epoch === first.epoch), `resub acks ${JSON.stringify(subAcks)}`);
      assert(c.closes.includes(1009), `no 1009 close seen: ${c.closes}`);
      assert(c.closes.length === 2, `closes ${c.closes}`);
      c.close();
      return { closes: c.closes, acks: subAcks.map((f) => ({ seq: f.seq, recovered: f.recovered })) };
    });

    // ---- c) half-open connection (a proxy stops forwarding): pong timeout must recover ----
    await step('halfOpen', async () => {
      let stalled = false;
      const live = new Set();
      const proxy = net.createServer((down) => {
        const up = net.connect(main.port, '127.0.0.1');
        const pair = { down, up, stalled: false };
        live.add(pair);
        const pipe = (from, to) => from.on('data', (d) => { if (!pair.stalled) to.write(d); });
        pipe(down, up); pipe(up, down);
        const end = () => { down.destroy(); up.destroy(); live.delete(pair); };
        down.on('error', end); up.on('error', end); down.on('close', end); up.on('close', end);
        if (stalled) pair.stalled = true;
      });
      await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
      try {
        const c = makeClient(`ws://127.0.0.1:${proxy.address().port}/ws`, { pingInterval: 150, pongTimeout: 400 });
        const rec = record(c, 'feed-c');
        await rec.sub.ready;
        await publisher(() => main.port, 'feed-c', 100, 5, async (n) => {
          if (n === 40) for (const p of live) p.stalled = true; // blackhole, sockets stay open
        });
        await waitFor(() => rec.got.length >= 100, 10000, `100 messages after half-open (got ${rec.got.length})`);
        rec.got.forEach((m, i) => assert(m.n === i + 1, `message ${i} is n=${m.n}`));
        checkConsecutive(rec.got, 'halfOpen');
        assert(rec.resets.length === 0, 'onReset called');
        assert(c.closes.length >= 1 && c.closes[0] === 4000, `closes ${c.closes}`);
        c.close();
        return { closes: c.closes };
      } finally {
        for (const p of live) { p.down.destroy(); p.up.destroy(); }
        proxy.close();
      }
    });

    // ---- b) server killed (-9) and restarted on the same port while messages flow ----
    await step('restart', async () => {
      let srv = await startServer(0, []);
      const port = srv.port;
      const frames = [];
      const c = makeClient(`ws://127.0.0.1:${port}/ws`, { pingInterval: 200, pongTimeout: 2000, WebSocket: spyClass(frames) });
      const rec = record(c, 'feed-b');
      const first = await rec.sub.ready;
      await publisher(() => port, 'feed-b', N, 5, async (n) => {
        if (n === 100) {
          await waitFor(() => rec.got.length >= 50, 5000, 'messages before the kill');
          srv.proc.kill('SIGKILL');
          srv = await startServer(port, []);
        }
        // 101..200 go out while the client reconnects (some legitimately lost); publish the
        // rest only once it resubscribed, so the final n=N check is deterministic.
        if (n === 200) await waitFor(() => rec.resets.length > 0, 10000, 'onReset after restart');
      });
      await waitFor(() => rec.got.length && rec.got[rec.got.length - 1].n === N, 15000, `message n=${N}`);
      assert(rec.resets.length === 1, `onReset called ${rec.resets.length} times`);
      const reset = rec.resets[0];
      assert(reset.epoch !== first.epoch && reset.reason === 'epoch_changed', `reset ${JSON.stringify(reset)}`);
      const before = rec.got.filter((m) => m.epoch === first.epoch);
      const after = rec.got.filter((m) => m.epoch === reset.epoch);
      assert(before.length + after.length === rec.got.length, 'messages from an unknown epoch');
      assert(before.length >= 50 && before[0].n === 1, `before: ${before.length}`);
      checkConsecutive(before, 'before restart');
      checkConsecutive(after, 'after restart');
      assert(after.length > 0 && after[0].seq === reset.seq + 1, `first after reset ${JSON.stringify(after[0])}, reset.seq ${reset.seq}`);
      // the epoch onReset reported is the new server's, as another client sees it
      const probe = makeClient(`ws://127.0.0.1:${port}/ws`);
      const ack = await probe.subscribe('feed-b', () => {}).ready;
      assert(ack.epoch === reset.epoch, `probe epoch ${ack.epoch} vs reset ${reset.epoch}`);
      probe.close();
      c.close();
      srv.proc.kill('SIGKILL');
      return { before: before.length, after: after.length, resetSeq: reset.seq, oldEpoch: first.epoch, newEpoch: reset.epoch, closes: c.closes };
    });

    // ---- d) tokens: sent first on every connection, refreshed before they expire ----
    await step('token', async () => {
      const SECRET = 'a-test-secret-that-is-long-enough-for-hs256';
      const srv = await startServer(0, ['--jwt-secret', SECRET, '--auth-timeout', '2s']);
      const { createHmac } = await import('node:crypto');
      const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const mint = (claims) => {
        const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
        return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
      };
      let minted = 0;
      const token = () => {
        minted++;
        return mint({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3, channels: { sub: ['feed-d'], pub: [] } });
      };
      const c = makeClient(`ws://127.0.0.1:${srv.port}/ws`, { token, refreshBefore: 1500 });
      const rec = record(c, 'feed-d');
      await rec.sub.ready;
      // 6 s of messages: two token lifetimes, so the connection lives only by refreshing.
      await publisher(() => srv.port, 'feed-d', 40, 150);
      await waitFor(() => rec.got.length >= 40, 5000, `40 messages (got ${rec.got.length})`);
      rec.got.forEach((m, i) => assert(m.n === i + 1, `message ${i} is n=${m.n}`));
      assert(c.closes.length === 0, `closes ${c.closes} (the token lapsed?)`);
      assert(minted >= 3, `token minted ${minted} times`);
      // A channel outside the token: the sub is refused with the server's code.
      const refused = await c.subscribe('elsewhere', () => {}).ready.then(() => null, (e) => e.code);
      assert(refused === 'forbidden', `sub outside the token: ${refused}`);
      c.close();
      srv.proc.kill('SIGKILL');
      return { minted, closes: c.closes };
    });

    // ---- e) a server over its memory budget: the sub is asked again until it is taken ----
    await step('over_capacity', async () => {
      // Two shards of 4 MiB each: fill the history of a channel owned by each.
      const srv = await startServer(0, ['--max-memory', '8MiB', '--history-ttl', '3s']);
      const ownerOf = (name) => {
        let h = 0xcbf29ce484222325n;
        for (const b of Buffer.from(name)) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
        return Number(h % 2n);
      };
      const kept = [0, 1].map((shard) => [...Array(100).keys()].map((i) => `kept${i}`).find((n) => ownerOf(n) === shard));
      const frames = [];
      const c = makeClient(`ws://127.0.0.1:${srv.port}/ws`, { minReconnectDelay: 100, maxReconnectDelay: 400, WebSocket: spyClass(frames) });
      await waitFor(() => c.state === 'open', 5000, 'connected');
      const pad = 'h'.repeat(50000);
      for (const ch of kept) {
        for (let i = 0; i < 100; i++) await httpPublish(srv.port, ch, { i, pad }); // 5 MB of history, for 3 s
      }
      const rec = record(c, 'feed-e');
      const ack = await rec.sub.ready;
      const refusals = frames.filter((f) => f.code === 'over_capacity').length;
      assert(refusals >= 1, `no over_capacity refusal seen (${refusals})`);
      await publisher(() => srv.port, 'feed-e', 5, 10);
      await waitFor(() => rec.got.length >= 5, 5000, `5 messages (got ${rec.got.length})`);
      assert(rec.got[0].seq === ack.seq + 1, `first message after the ack: ${JSON.stringify(rec.got[0])}`);
      c.close();
      srv.proc.kill('SIGKILL');
      return { refusals };
    });

    finish({ ok: true, ms: Date.now() - t0, timings, ...summary });
  } catch (e) {
    finish({ ok: false, error: String(e && e.stack || e), ms: Date.now() - t0, timings });
  }
}
