// js_client_browser.mjs: runs shardcast.js in headless Chromium against the real server.
// Usage: node js_client_browser.mjs <path-to-shardcast-binary>
// Needs `npm install` (playwright-core) and a Chromium (CHROMIUM env, default /usr/bin/chromium).
// Prints one JSON line ({"ok":true,...} exit 0, or {"ok":false,"error":...} exit 1).
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { assert, httpPublish, killAll, sleep, startServer as start, waitFor } from './js_harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.argv[2];
const HARD_TIMEOUT_MS = 60000;
const N = 300;
const PAD = 'the quick brown fox jumps over the lazy dog. '.repeat(12);
const t0 = Date.now();
const timings = {};
let browser = null;
let staticServer = null;

let finished = false;
async function finish(result) {
  if (finished) return;
  finished = true;
  killAll();
  const closeBrowser = browser ? browser.close().catch(() => {}) : Promise.resolve();
  await Promise.race([closeBrowser, new Promise((r) => setTimeout(r, 5000))]);
  if (staticServer) staticServer.closeAllConnections?.(), staticServer.close();
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
setTimeout(() => finish({ ok: false, error: `hard timeout after ${HARD_TIMEOUT_MS} ms`, timings }), HARD_TIMEOUT_MS).unref();

const startServer = (port, extra) => start(BIN, port, extra);

/** Serve js_client_page.html and shardcast.js (and nothing else) on 127.0.0.1:0. */
async function startStatic() {
  // The page from here, the client from clients/js/.
  const files = {
    '/js_client_page.html': ['text/html', path.join(HERE, 'js_client_page.html')],
    '/shardcast.js': ['text/javascript', path.join(HERE, '..', '..', 'clients', 'js', 'shardcast.js')],
  };
  const srv = http.createServer(async (req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (p === '/favicon.ico') { res.writeHead(204).end(); return; }
    if (!files[p]) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': files[p][0], 'cache-control': 'no-store' });
    res.end(await readFile(files[p][1]));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return srv;
}

try {
  if (!BIN) throw new Error('usage: node js_client_browser.mjs <path-to-shardcast-binary>');
  let srv = await startServer(0, ['--history-size', '1000']);
  const port = srv.port;
  staticServer = await startStatic();

  let s = Date.now();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/WebSocket/.test(m.text())) pageErrors.push(m.text()); });
  const ch = 'browser-feed';
  const pageUrl = `http://127.0.0.1:${staticServer.address().port}/js_client_page.html?ws=${encodeURIComponent(`ws://127.0.0.1:${port}/ws`)}&ch=${ch}`;
  await page.goto(pageUrl);
  const results = () => page.evaluate(() => window.results);
  const first = await waitFor(async () => (await page.evaluate(() => window.results && window.results.ready)), 10000, 'first ack in page');
  timings.launch = Date.now() - s;
  assert(pageErrors.length === 0, `page errors: ${pageErrors}`);
  const extensions = await page.evaluate(() => window.client._ws.extensions);
  assert(/permessage-deflate/.test(extensions), `Chromium negotiated "${extensions}"`);

  // Publish 1..N from Node; cuts: server-side 1009 at n=60, in-page drop at n=130, kill -9 at n=200.
  s = Date.now();
  let next = Date.now();
  for (let n = 1; n <= N;) {
    // Padded past --compression-min-bytes: each goes out compressed once per
    // shard, and Chromium inflates it (permessage-deflate, negotiated below).
    try { await httpPublish(port, ch, { n, pad: PAD }); } catch (e) {
      if (/HTTP publish/.test(e.message)) throw e;
      await sleep(20); continue;
    }
    if (n === 60) {
      await page.evaluate(() => window.client._ws.send('x'.repeat(70 * 1024))); // server closes 1009
    } else if (n === 130) {
      await waitFor(() => page.evaluate(() => window.client.state === 'open'), 5000, 'reconnect after 1009');
      await page.evaluate(() => window.client._ws.close(4001, 'simulated network drop'));
    } else if (n === 200) {
      // Every publication made so far must have reached the page before the
      // kill (the assertions below count on it): on a loaded machine the
      // last few may still be on their way when the 200th is answered.
      await waitFor(() => page.evaluate(() => window.client.state === 'open' && window.results.got.length >= 200), 10000,
        async () => `messages before kill: ${JSON.stringify((await results()).got.length)}`);
      srv.proc.kill('SIGKILL');
      srv = await startServer(port, []);
    } else if (n === 250) {
      // 201..250 went out while the page reconnects (some legitimately lost); make sure the
      // rest is published after the resubscription so the final n=N check is deterministic.
      await waitFor(() => page.evaluate(() => window.results.resets.length > 0), 10000, 'onReset after restart');
    }
    n++;
    next += 5;
    await sleep(Math.max(0, next - Date.now()));
  }
  await waitFor(async () => (await page.evaluate(() => { const g = window.results.got; return g.length && g[g.length - 1].n; })) === N,
    15000, async () => `message n=${N}; got ${(await results()).got.length}`);
  timings.run = Date.now() - s;
  const r = await results();

  assert(pageErrors.length === 0, `page errors: ${pageErrors}`);
  assert(r.resets.length === 1, `onReset called ${r.resets.length} times`);
  const reset = r.resets[0];
  assert(reset.epoch !== first.epoch && reset.reason === 'epoch_changed', `reset ${JSON.stringify(reset)}`);
  const before = r.got.filter((m) => m.epoch === first.epoch);
  const after = r.got.filter((m) => m.epoch === reset.epoch);
  assert(before.length + after.length === r.got.length, 'messages from an unknown epoch');
  // Everything published before the kill reached the page exactly once, in order, across
  // the 1009 close and the forced drop (both recovered on the same epoch).
  assert(before.length >= 200, `only ${before.length} messages before the kill`);
  before.forEach((m, i) => assert(m.n === i + 1 && m.seq === first.seq + i + 1, `before[${i}] = ${JSON.stringify(m)}`));
  after.forEach((m, i) => assert(m.seq === reset.seq + i + 1, `after[${i}] = ${JSON.stringify(m)} (reset.seq ${reset.seq})`));
  for (let i = 1; i < after.length; i++) assert(after[i].n === after[i - 1].n + 1, `after: n ${after[i].n} after ${after[i - 1].n}`);
  // The server drains the rest of the oversized frame after its close frame, so Chromium
  // sees the 1009 itself (a reset would have turned it into 1006). The kill is a 1006; on
  // a loaded machine a reconnect may also try before the restarted server listens, and
  // each such refused attempt closes with 1006 too.
  assert(r.closes.length >= 3 && r.closes[0] === 1009 && r.closes[1] === 4001
    && r.closes.slice(2).every((c) => c === 1006), `closes ${r.closes}`);
  assert(r.got.every((m) => m.padded), 'a message lost its padding');
  // The restarted server compressed what it sent and inflated what Chromium sent.
  const stats = await (await fetch(`http://127.0.0.1:${port}/api/stats`)).json();
  assert(stats.total.deliveries_compressed >= N - 250, `compressed ${stats.total.deliveries_compressed}`);
  assert(stats.total.messages_inflated >= 1, `inflated ${stats.total.messages_inflated}`);

  await finish({ ok: true, ms: Date.now() - t0, timings, before: before.length, after: after.length,
    closes: r.closes, reset, states: r.states.join(','), errors: r.errors });
} catch (e) {
  await finish({ ok: false, error: String(e && e.stack || e), ms: Date.now() - t0, timings });
}
