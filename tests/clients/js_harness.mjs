// js_harness.mjs: what the JS client tests (js_client_node.mjs,
// js_client_browser.mjs) share: starting and killing real shardcast
// servers, publishing over HTTP, and polling with a deadline.

import { spawn } from 'node:child_process';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function assert(cond, msg) { if (!cond) throw new Error(msg); }

/** Polls `pred` until it returns something truthy, or throws after `ms`. */
export async function waitFor(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? await what() : what}`);
    await sleep(10);
  }
}

const servers = new Set();

/** Kills every server started here (also done when the process exits). */
export function killAll() { for (const p of servers) { try { p.kill('SIGKILL'); } catch { /* gone */ } } }
process.on('exit', killAll);

/** Spawns the server; resolves {proc, port} once it prints its address. */
function startOnce(bin, port, extra) {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--shards', '2', ...extra],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    servers.add(proc);
    let out = '', err = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`server did not start: ${err.slice(-500)}`)); }, 10000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on http:\/\/[^\s:]+:(\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ proc, port: Number(m[1]) }); }
    });
    proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
    proc.on('exit', (code) => { servers.delete(proc); clearTimeout(timer); reject(new Error(`server exited (${code}): ${err.slice(-500)}`)); });
  });
}

/** Starts a server from `bin`, retrying a few times when a fixed port is still busy. */
export async function startServer(bin, port = 0, extra = []) {
  const deadline = Date.now() + 10000;
  for (;;) {
    try { return await startOnce(bin, port, extra); } catch (e) { if (Date.now() > deadline) throw e; await sleep(100); }
  }
}

/** POST /api/publish; resolves with the assigned seq. */
export async function httpPublish(port, ch, data) {
  const r = await fetch(`http://127.0.0.1:${port}/api/publish`, { method: 'POST', body: JSON.stringify({ ch, data }) });
  if (r.status !== 200) throw new Error(`HTTP publish ${r.status}: ${await r.text()}`);
  return (await r.json()).seq;
}

/**
 * How a test script ends: `finish(result)` closes what `open()` returns
 * (the script's clients), kills the servers (and anything `cleanup` stops),
 * prints `result` as one JSON line and exits, 0 when `result.ok`. After
 * `ms` it finishes on its own, as a failure.
 */
export function finisher(ms, open, cleanup = () => {}) {
  const finish = (result) => {
    for (const c of open()) c.close();
    cleanup();
    killAll();
    console.log(JSON.stringify(result));
    process.exit(result.ok ? 0 : 1);
  };
  setTimeout(() => finish({ ok: false, error: `hard timeout after ${ms} ms` }), ms).unref();
  return finish;
}
