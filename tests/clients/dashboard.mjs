#!/usr/bin/env node
// Headless check of the shardcast dashboard (GET /).
// Usage: node dashboard.mjs <url> <expected-connections> <screenshot.png> [timeout-seconds=30]
// Waits until #total-connections == expected and the charts have >= 3 points,
// with no console/page errors; saves a full-page screenshot; prints one JSON line.
// Exit 0 on success, 1 on failure (2 on bad usage). Needs npm `playwright-core`
// and a system Chromium ($CHROMIUM or /usr/bin/chromium).
import { chromium } from 'playwright-core';

const [url, expectedArg, shotPath, timeoutArg = '30'] = process.argv.slice(2);
const out = obj => process.stdout.write(JSON.stringify(obj) + '\n');
if (!url || !expectedArg || !shotPath || !/^\d+$/.test(expectedArg) || !(Number(timeoutArg) > 0)) {
  out({ ok: false, error: 'usage: node dashboard.mjs <url> <expected-connections> <screenshot.png> [timeout-seconds=30]', last_seen: '' });
  process.exit(2);
}
const expected = expectedArg.replace(/^0+(?=\d)/, '');
const timeoutMs = Number(timeoutArg) * 1000;
const deadline = Date.now() + timeoutMs;
const MIN_POINTS = 3;

let browser = null;
let lastSeen = '';
let finished = false;

async function closeBrowser() {
  if (!browser) return;
  const b = browser; browser = null;
  // never let a stuck close hang the process
  await Promise.race([b.close().catch(() => {}), new Promise(r => setTimeout(r, 5000))]);
}

async function finish(code, obj) {
  if (finished) return;
  finished = true;
  clearTimeout(hardTimer);
  await closeBrowser();
  out(obj);
  process.exit(code);
}

// Hard overall timeout: the wait deadline plus a margin for launch, screenshot and close.
const hardTimer = setTimeout(() => {
  finish(1, { ok: false, error: `hard timeout after ${Math.round((timeoutMs + 20000) / 1000)} s`, last_seen: lastSeen });
  setTimeout(() => process.exit(1), 7000).unref();  // in case close() itself hangs
}, timeoutMs + 20000);

const remaining = () => Math.max(1000, deadline - Date.now());

async function main() {
  const errors = [];
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
    timeout: 30000,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', m => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', e => errors.push(`pageerror: ${e.message}`));

  const screenshot = async () => {
    try { await page.screenshot({ path: shotPath, fullPage: true, timeout: 10000 }); return true; } catch { return false; }
  };
  const fail = async error => {
    await screenshot();
    await finish(1, { ok: false, error, last_seen: lastSeen });
  };

  try {
    const resp = await page.goto(url, { timeout: remaining(), waitUntil: 'load' });
    if (!resp || !resp.ok()) return fail(`GET ${url} -> ${resp ? resp.status() : 'no response'}`);
  } catch (e) {
    return fail(`navigation failed: ${e.message.split('\n')[0]}`);
  }

  let state = null;
  // poll the page until the condition holds or the deadline passes
  for (;;) {
    try {
      state = await page.evaluate(() => {
        const el = document.getElementById('total-connections');
        const ds = document.body.dataset;
        return {
          conn: el ? el.textContent : null,
          node: (document.getElementById('m-node') || {}).textContent || null,
          samples: Number(ds.samples || 0),
          points: Number(ds.points || 0),
          shards: Number(ds.shards || 0),
          rows: document.querySelectorAll('#shards tbody tr[data-shard]').length,
        };
      });
    } catch (e) {
      return fail(`page evaluate failed: ${e.message.split('\n')[0]}`);
    }
    lastSeen = state.conn == null ? '<no #total-connections>' : state.conn;
    if (errors.length) return fail(errors.join(' | ').slice(0, 2000));
    if (state.conn === expected && state.points >= MIN_POINTS && state.shards > 0 && state.rows === state.shards) break;
    if (Date.now() >= deadline) {
      return fail(`timeout after ${timeoutArg} s: total-connections=${JSON.stringify(state.conn)} expected ${expected}, ` +
        `points=${state.points} (need ${MIN_POINTS}), samples=${state.samples}, shards=${state.shards}, rows=${state.rows}`);
    }
    await page.waitForTimeout(Math.min(250, Math.max(1, deadline - Date.now())));
  }

  if (!(await screenshot())) return fail('screenshot failed');
  if (errors.length) return fail(errors.join(' | ').slice(0, 2000));
  await finish(0, { ok: true, connections: Number(state.conn), shards: state.shards, node: state.node, screenshot: shotPath });
}

main().catch(e => finish(1, { ok: false, error: String(e && e.message || e).split('\n')[0], last_seen: lastSeen }));
