// A standard client: Node's `ws` drives shardcast.
// Usage: node node_client.mjs ws://HOST:PORT
// Subscribes, publishes with an id, checks ack and envelope, round-trips a
// raw room (text and binary). Exits non-zero on any mismatch; waits bounded.
import assert from 'node:assert/strict';
import WebSocket from 'ws';

const base = process.argv[2];
const TIMEOUT = 10_000;

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const queue = [];
    const waiters = [];
    ws.on('message', (data, isBinary) => {
      const item = { data, isBinary };
      const waiter = waiters.shift();
      if (waiter) waiter(item); else queue.push(item);
    });
    ws.next = () => new Promise((res, rej) => {
      if (queue.length) return res(queue.shift());
      const timer = setTimeout(() => rej(new Error('timed out waiting for a message')), TIMEOUT);
      waiters.push((item) => { clearTimeout(timer); res(item); });
    });
    ws.json = async () => JSON.parse((await ws.next()).data.toString());
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

const alice = await open(`${base}/ws`);
alice.send(JSON.stringify({ op: 'sub', ch: 'node-news', id: 'a1' }));
const subAck = await alice.json();
assert.equal(subAck.op, 'ack');
assert.equal(subAck.id, 'a1');
assert.equal(typeof subAck.epoch, 'string');
assert.equal(subAck.seq, 0);
alice.send(JSON.stringify({ op: 'pub', ch: 'node-news', data: [1, 'two'], id: 2 }));
const got = {};
while (!got.ack || !got.msg) { const m = await alice.json(); got[m.op] = m; }
assert.deepEqual(got.ack, { op: 'ack', id: 2, seq: 1 });
assert.deepEqual(got.msg, { op: 'msg', ch: 'node-news', seq: 1, data: [1, 'two'] });
// ws offers permessage-deflate by default and compresses what it sends over
// 1 KiB; shardcast answers with one compressed frame per publication.
assert.match(alice.extensions, /^permessage-deflate/);
const big = { text: 'the quick brown fox jumps over the lazy dog '.repeat(100) };
alice.send(JSON.stringify({ op: 'pub', ch: 'node-news', data: big, id: 3 }));
const gotBig = {};
while (!gotBig.ack || !gotBig.msg) { const m = await alice.json(); gotBig[m.op] = m; }
assert.deepEqual(gotBig.msg, { op: 'msg', ch: 'node-news', seq: 2, data: big });
alice.close();

const a = await open(`${base}/ws/node-room`);
const b = await open(`${base}/ws/node-room?echo=0`);
b.send('hi from b');
const text = await a.next();
assert.equal(text.isBinary, false);
assert.equal(text.data.toString(), 'hi from b');
a.send(Buffer.from([0, 1, 2]));
const bin = await b.next();
assert.equal(bin.isBinary, true);
assert.deepEqual([...bin.data], [0, 1, 2]);
a.close(); b.close();
console.log('node ws client: ok');
