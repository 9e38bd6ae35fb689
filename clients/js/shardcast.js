// shardcast.js: dependency-free client for the shardcast WebSocket pub/sub server.
// Works as an ES module in browsers and in Node >= 22 (global WebSocket), or with an
// injected WebSocket constructor. See README.md for the API and recovery semantics.

/** Connection states reported by the 'state' event. */
export const STATES = Object.freeze(['connecting', 'open', 'reconnecting', 'closed']);

const DEFAULTS = {
  WebSocket: undefined,      // constructor; defaults to globalThis.WebSocket
  minReconnectDelay: 250,    // ms, base of the exponential backoff
  maxReconnectDelay: 15000,  // ms, cap of the backoff
  stableAfter: 5000,         // ms a connection must stay open before the backoff resets
  connectTimeout: 10000,     // ms allowed for the WebSocket handshake
  ackTimeout: 10000,         // ms to wait for an ack before the op's promise rejects
  pingInterval: 20000,       // ms of silence before an application ping is sent (0: off)
  pongTimeout: 10000,        // ms to wait for the pong before the connection is declared dead
  token: undefined,          // JWT, or a function returning one (or a Promise of one): sent as
                             // the first frame of every connection; with a function, fetched
                             // again and sent before the current token's exp
  refreshBefore: 30000,      // ms before a token's exp when the token function is called again
  batch: true,               // ask for envelopes batched into frames (?batch=1): several
                             // envelopes queued together arrive as one frame, split on \n
  protocol: 'json',          // 'msgpack': speak the same protocol in MessagePack
                             // (subprotocol shardcast.msgpack; binary data as Uint8Array)
  maxRefills: 3,             // replays of a gap that leave the same gap (a frame that cannot
                             // be read, every time) before it is skipped and reported lost
};

/**
 * MessagePack, the subset the protocol uses: nil, booleans, numbers (integers
 * as Numbers; 64-bit ones past 2^53 lose precision), strings, Uint8Array as
 * bin, arrays, maps from plain objects. Extension types are refused.
 */
export const msgpack = {
  /** @returns {Uint8Array} */
  encode(value) {
    const out = [];
    const u8 = (...b) => { for (const x of b) out.push(x & 0xff); };
    const be = (n, bytes) => { for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) & 0xff); };
    const head = (len, fix, fixMax, c8, c16, c32) => {
      if (len <= fixMax && fix !== null) u8(fix | len);
      else if (len < 0x100 && c8 !== null) u8(c8, len);
      else if (len < 0x10000) { u8(c16); be(len, 2); } else { u8(c32); be(len, 4); }
    };
    const put = (v) => {
      if (v === null || v === undefined) u8(0xc0);
      else if (v === false) u8(0xc2);
      else if (v === true) u8(0xc3);
      else if (typeof v === 'number') {
        if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER) {
          if (v >= 0) {
            if (v < 0x80) u8(v);
            else if (v < 0x100) u8(0xcc, v);
            else if (v < 0x10000) { u8(0xcd); be(v, 2); }
            else if (v < 2 ** 32) { u8(0xce); be(v, 4); }
            else { u8(0xcf); be(v, 8); }
          } else if (v >= -32) u8(0xe0 | (v + 32));
          else if (v >= -0x80) u8(0xd0, v);
          else if (v >= -0x8000) { u8(0xd1); be(v + 0x10000, 2); }
          else if (v >= -(2 ** 31)) { u8(0xd2); be(v + 2 ** 32, 4); }
          else { u8(0xd3); const view = new DataView(new ArrayBuffer(8)); view.setBigInt64(0, BigInt(v)); u8(...new Uint8Array(view.buffer)); }
        } else {
          const view = new DataView(new ArrayBuffer(8));
          view.setFloat64(0, v);
          u8(0xcb, ...new Uint8Array(view.buffer));
        }
      } else if (typeof v === 'string') {
        const bytes = utf8.encode(v);
        head(bytes.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
        for (const b of bytes) out.push(b);
      } else if (v instanceof Uint8Array) {
        head(v.length, null, -1, 0xc4, 0xc5, 0xc6);
        for (const b of v) out.push(b);
      } else if (Array.isArray(v)) {
        head(v.length, 0x90, 15, null, 0xdc, 0xdd);
        for (const x of v) put(x);
      } else if (typeof v === 'object') {
        const keys = Object.keys(v).filter((k) => v[k] !== undefined);
        head(keys.length, 0x80, 15, null, 0xde, 0xdf);
        for (const k of keys) { put(k); put(v[k]); }
      } else {
        throw new Error(`msgpack: cannot encode ${typeof v}`);
      }
    };
    put(value);
    return Uint8Array.from(out);
  },

  /** @param {Uint8Array} bytes */
  decode(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    const need = (n) => { if (at + n > bytes.length) throw new Error('msgpack: cut short'); };
    const uint = (n) => { need(n); let v = 0; for (let i = 0; i < n; i++) v = v * 256 + bytes[at++]; return v; };
    const str = (n) => { need(n); const s = fromUtf8.decode(bytes.subarray(at, at + n)); at += n; return s; };
    const bin = (n) => { need(n); const b = bytes.slice(at, at + n); at += n; return b; };
    const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(get()); return a; };
    const map = (n) => {
      const m = {};
      for (let i = 0; i < n; i++) { const k = get(); m[String(k)] = get(); }
      return m;
    };
    const get = () => {
      need(1);
      const t = bytes[at++];
      if (t < 0x80) return t;
      if (t < 0x90) return map(t & 0x0f);
      if (t < 0xa0) return arr(t & 0x0f);
      if (t < 0xc0) return str(t & 0x1f);
      if (t >= 0xe0) return t - 0x100;
      switch (t) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return bin(uint(1));
        case 0xc5: return bin(uint(2));
        case 0xc6: return bin(uint(4));
        case 0xca: need(4); at += 4; return view.getFloat32(at - 4);
        case 0xcb: need(8); at += 8; return view.getFloat64(at - 8);
        case 0xcc: return uint(1);
        case 0xcd: return uint(2);
        case 0xce: return uint(4);
        case 0xcf: return uint(8);
        case 0xd0: need(1); at += 1; return view.getInt8(at - 1);
        case 0xd1: need(2); at += 2; return view.getInt16(at - 2);
        case 0xd2: need(4); at += 4; return view.getInt32(at - 4);
        case 0xd3: need(8); at += 8; return Number(view.getBigInt64(at - 8));
        case 0xd9: return str(uint(1));
        case 0xda: return str(uint(2));
        case 0xdb: return str(uint(4));
        case 0xdc: return arr(uint(2));
        case 0xdd: return arr(uint(4));
        case 0xde: return map(uint(2));
        case 0xdf: return map(uint(4));
        default: throw new Error(`msgpack: unsupported type 0x${t.toString(16)}`);
      }
    };
    const value = get();
    if (at !== bytes.length) throw new Error('msgpack: bytes after the value');
    return value;
  },
};

const B64 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const B64_VALUE = new Map([...B64].map((c, i) => [c.charCodeAt(0), i]));

/**
 * Applies a fossil delta (the format of the Fossil SCM, as the server makes
 * them) to `source`; returns the target. Both are Uint8Arrays. Throws on a
 * malformed delta or a checksum that does not match.
 */
export function applyDelta(source, delta) {
  let at = 0;
  const int = () => {
    let n = 0, any = false;
    for (;;) {
      const v = B64_VALUE.get(delta[at]);
      if (v === undefined) break;
      n = n * 64 + v; at++; any = true;
    }
    if (!any) throw new Error('delta: number expected');
    return n;
  };
  const size = int();
  if (delta[at++] !== 0x0a) throw new Error('delta: bad header');
  const out = new Uint8Array(size);
  let len = 0;
  while (at < delta.length) {
    const n = int();
    const op = delta[at++];
    if (op === 0x40) { // '@': copy n bytes from source at offset
      const offset = int();
      if (delta[at++] !== 0x2c) throw new Error('delta: , expected');
      if (len + n > size || offset + n > source.length) throw new Error('delta: copy out of range');
      out.set(source.subarray(offset, offset + n), len); len += n;
    } else if (op === 0x3a) { // ':': n literal bytes
      if (len + n > size || at + n > delta.length) throw new Error('delta: literal out of range');
      out.set(delta.subarray(at, at + n), len); len += n; at += n;
    } else if (op === 0x3b) { // ';': checksum of the output
      if (len !== size) throw new Error('delta: size mismatch');
      if (n !== checksum(out)) throw new Error('delta: bad checksum');
      return out;
    } else {
      throw new Error('delta: unexpected command');
    }
  }
  throw new Error('delta: unterminated');
}

/** Fossil's checksum: the sum of the big-endian 32-bit words (the last padded). */
function checksum(bytes) {
  let sum = 0;
  const whole = bytes.length - (bytes.length % 4);
  for (let i = 0; i < whole; i += 4) {
    sum = (sum + ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3])) >>> 0;
  }
  let tail = 0;
  for (let i = whole, shift = 24; i < bytes.length; i++, shift -= 8) tail |= bytes[i] << shift;
  return (sum + (tail >>> 0)) >>> 0;
}

/** A delta carried in a JSON string: each character's code (0-255) is one byte. */
function deltaBytes(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** The raw JSON text of a `msg` envelope's data (always its last field), or null. */
function rawData(envelope) {
  const at = envelope.indexOf(',"data":');
  return at < 0 ? null : envelope.slice(at + 8, envelope.length - 1);
}

/** `url` asking for batched envelopes (unless it already says). */
function withBatch(url) {
  if (/[?&]batch=/.test(url)) return url;
  return url + (url.includes('?') ? '&' : '?') + 'batch=1';
}

/** The `exp` claim of a JWT in ms, or null. */
function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4))).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch { return null; }
}

/**
 * Make an Error carrying the server's (or the client's) error code.
 * @param {string} code @param {string} msg @returns {Error & {code: string}}
 */
function codedError(code, msg) {
  const e = new Error(msg || code);
  e.code = code;
  return e;
}

/**
 * One subscription to one channel. Created by {@link Shardcast#subscribe}.
 * @property {string} ch channel name
 * @property {Promise<{seq:number, epoch:string, recovered?:boolean}>} ready first ack
 * @property {?string} epoch epoch of the stream the delivered seqs belong to
 * @property {number} seq last seq delivered to the handler (or the ack's seq)
 * @property {boolean} active false once unsubscribed or refused by the server
 */
export class Subscription {
  /** @param {Shardcast} client @param {string} ch @param {Function} onMessage @param {object} opts */
  constructor(client, ch, onMessage, opts) {
    this.ch = ch;
    this.epoch = opts.epoch ?? null;
    this.seq = opts.since ?? 0;
    this.active = true;
    this._client = client;
    this._onMessage = onMessage;
    this._onReset = opts.onReset;
    this._delta = opts.delta === 'fossil';
    this._onJoin = opts.onJoin;
    this._onLeave = opts.onLeave;
    this._onUnsubscribed = opts.onUnsubscribed;
    this._refilling = false; // resubscribed after a gap: until its ack, what comes is replayed
    this._refills = 0;       // replays asked for since a message was last delivered
    this._conflates = false; // the ack says seqs may skip (the server's --conflate)
    this._owed = 0;          // seqs skipped that conflation has not yet accounted for
    this._base = null;       // the last data's bytes: what the next delta applies to
    this._pending = false;   // a sub frame is in flight on the current socket
    this._buffer = [];       // msgs that arrived before that sub's ack
    this._acked = false;     // ready settled
    this.ready = new Promise((res, rej) => { this._resolve = res; this._reject = rej; });
    this.ready.catch(() => {}); // avoid unhandled rejections when the app ignores `ready`
  }

  /** Stop deliveries now and tell the server. @returns {Promise<void>} */
  unsubscribe() { return this._client._unsubscribe(this); }

  _ack(f) {
    this._conflates = f.conflate === true;
    this._owed = 0;
    const wasKnown = this.epoch !== null;
    const recovered = f.recovered === true && f.epoch === this.epoch;
    if (wasKnown && !recovered) {
      const reason = f.epoch !== this.epoch ? 'epoch_changed' : 'history_gap';
      this.epoch = f.epoch;
      this.seq = f.seq;
      if (this._onReset) {
        try { this._onReset({ ch: this.ch, epoch: f.epoch, seq: f.seq, reason }); }
        catch (e) { this._client._emit('error', e); }
      }
    } else if (!wasKnown) {
      this.epoch = f.epoch;
      this.seq = f.seq;
    }
    if (!this._acked) {
      this._acked = true;
      this._resolve({ seq: f.seq, epoch: f.epoch, recovered: f.recovered });
    }
    const buf = this._buffer;
    this._buffer = [];
    for (const m of buf) this._deliver(m);
  }

  /** The server lost publications it cannot recover (a cluster engine's
   * history was lost, or did not reach back far enough): the app reloads
   * its state through onReset, and deliveries go on after `f.seq`. */
  /** The server ended the subscription (`reason`, e.g. 'server'). */
  _ended(reason) {
    this.active = false;
    this._buffer = [];
    if (this._client._subs.get(this.ch) === this) this._client._subs.delete(this.ch);
    if (!this._acked) { this._acked = true; this._reject(codedError('unsubscribed', `the server ended the subscription (${reason})`)); }
    const info = { ch: this.ch, reason };
    if (this._onUnsubscribed) {
      try { this._onUnsubscribed(info); } catch (e) { this._client._emit('error', e); }
    }
    this._client._emit('unsubscribed', info);
  }

  /** Gives up on seqs up to `to` (they could not be read): the app is told
   * through onReset, as for any loss, then `f` is delivered. */
  _skip(f, to) {
    this._refills = 0;
    this.seq = to;
    this._base = null;
    if (this._onReset) {
      try { this._onReset({ ch: this.ch, epoch: this.epoch, seq: to, reason: 'unreadable' }); }
      catch (e) { this._client._emit('error', e); }
    }
    this._deliver(f);
  }

  _resync(f) {
    if (!this.active) return;
    this.epoch = f.epoch;
    this.seq = f.seq;
    this._base = null;
    if (this._onReset) {
      try { this._onReset({ ch: this.ch, epoch: f.epoch, seq: f.seq, reason: 'resync' }); }
      catch (e) { this._client._emit('error', e); }
    }
  }

  _deliver(f) {
    if (!this.active) return;
    if (this._pending) { this._buffer.push(f); return; }
    if (f.seq <= this.seq) return; // defensive: never deliver a seq twice in one epoch
    const skipped = f.seq - this.seq - 1;
    if (!this._conflates && skipped > 0) {
      // A gap nothing explains (only conflation skips seqs on a live
      // subscription): ask for what is missing, from history, then go on.
      this._client._refill(this, f);
      return;
    }
    if (this._conflates) {
      // Skipped seqs are owed an explanation: `conflated` counts on the
      // messages that replaced them (which may come later than the gap).
      this._owed += skipped - (Number(f.conflated) || 0);
      if (this._owed < 0) {
        this._owed = 0;
        this._client._emit('error', codedError('bad_conflation', `${this.ch}: seq ${f.seq} replaced more than was skipped`));
      }
    }
    this.seq = f.seq;
    this._refills = 0;
    const meta = { ch: this.ch, seq: f.seq, epoch: this.epoch };
    // On a conflated channel, a subscriber that fell behind gets the latest
    // value of a key in place of older ones: seqs then skip, by this many.
    if (f.conflated) meta.conflated = f.conflated;
    try { this._onMessage(f.data, meta); }
    catch (e) { this._client._emit('error', e); }
  }
}

/**
 * Client for one shardcast server. Connects immediately and keeps reconnecting until
 * {@link Shardcast#close} is called.
 */
export class Shardcast {
  /**
   * @param {string} url e.g. 'ws://localhost:8080/ws'
   * @param {Partial<typeof DEFAULTS>} [options]
   */
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = this.options.batch ? withBatch(url) : url;
    this._WS = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') throw new Error('shardcast: no WebSocket constructor (pass options.WebSocket)');
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
    this.state = 'connecting';
    /** The current WebSocket (exposed for tests and debugging). */
    this._ws = null;
    this._nextId = 1;
    this._ops = new Map();      // id -> {resolve, reject, timer, frame, sent, sub?}
    this._queue = [];           // op ids waiting for a connection
    this._subs = new Map();     // ch -> Subscription
    this._advice = null;        // ms: a draining server's reconnect advice
    this._listeners = new Map();
    this._attempt = 0;
    this._timers = {};
    this._lastRx = 0;
    this._pingId = null;
    this._connect();
  }

  /**
   * Listen to an event: 'state' (state string), 'open', 'close' ({code, reason}),
   * 'error' (Error: unsolicited server errors, exceptions thrown by handlers).
   * @returns {() => void} function removing the listener
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /**
   * Subscribe to a channel. Messages reach `onMessage(data, {ch, seq, epoch})` in seq order,
   * each once. One subscription per channel per client.
   * @param {string} ch
   * @param {(data: any, meta: {ch: string, seq: number, epoch: string}) => void} onMessage
   * @param {{onReset?: (info: {ch: string, epoch: string, seq: number, reason: string}) => void,
   *          onJoin?: (m: {ch: string, user?: string, conn: string, info?: object}) => void,
   *          onLeave?: (m: {ch: string, user?: string, conn: string, info?: object}) => void,
   *          onUnsubscribed?: (info: {ch: string, reason: string}) => void,
   *          since?: number, epoch?: string}} [opts] since+epoch resume a stream saved earlier;
   *          onJoin/onLeave (a presence channel) ask the server for join and leave events;
   *          onUnsubscribed: the server ended the subscription (it is not resubscribed)
   * @returns {Subscription}
   */
  subscribe(ch, onMessage, opts = {}) {
    if (this.state === 'closed') throw codedError('closed', 'client is closed');
    if (this._subs.has(ch)) throw codedError('already_subscribed', `already subscribed to ${ch}`);
    const sub = new Subscription(this, ch, onMessage, opts);
    this._subs.set(ch, sub);
    if (this.state === 'open') this._sendSub(sub);
    return sub;
  }

  /**
   * Publish `data` (any JSON value) to a channel. Queued while disconnected. With
   * `idempotencyKey` (1 to 128 bytes), a retry under the same key within the server's
   * `--idempotency-window` resolves with the first one's seq and is not published again.
   * @returns {Promise<number>} the publication's seq; rejects with an Error whose `.code` is
   * the server's code ('outcome_unknown': it may have been published), 'timeout',
   * 'disconnected' (sent, connection lost before the ack: it may or may not have been
   * published) or 'closed'.
   */
  publish(ch, data, { timeout, idempotencyKey } = {}) {
    const frame = { op: 'pub', ch, data };
    if (idempotencyKey !== undefined) frame.idempotency_key = idempotencyKey;
    return this._op(frame, timeout).then((f) => f.seq);
  }

  /**
   * Who is subscribed to a presence channel (the server's `--presence`): one page of at most
   * `limit` members after `cursor`. @returns {Promise<{members: Array<{user?: string,
   * conn: string, info?: object}>, count: number, cursor?: string}>} pass `cursor` back for
   * the next page; rejects with code 'no_presence' for a channel that is not one.
   */
  presence(ch, { cursor, limit } = {}) {
    const frame = { op: 'presence', ch };
    if (cursor !== undefined) frame.cursor = cursor;
    if (limit !== undefined) frame.limit = limit;
    return this._op(frame).then((f) => ({ members: f.members, count: f.count, cursor: f.cursor }));
  }

  /** How many are subscribed to a presence channel. @returns {Promise<number>} */
  occupancy(ch) {
    return this._op({ op: 'occupancy', ch }).then((f) => f.count);
  }

  /** Round trip to the server. @returns {Promise<number>} milliseconds */
  ping() {
    const t0 = Date.now();
    return this._op({ op: 'ping' }).then(() => Date.now() - t0);
  }

  /** Close for good: no reconnect; pending promises reject with code 'closed'. */
  close() {
    if (this.state === 'closed') return;
    this._setState('closed');
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); try { ws.close(1000, 'client closed'); } catch { /* ignore */ } }
    for (const id of [...this._ops.keys()]) this._settle(id, codedError('closed', 'client closed'));
    for (const sub of this._subs.values()) { sub.active = false; sub._reject(codedError('closed', 'client closed')); }
    this._subs.clear();
  }

  // ---- internals ------------------------------------------------------------------------

  _emit(event, arg) {
    for (const fn of this._listeners.get(event) || []) {
      try { fn(arg); } catch (e) { if (event !== 'error') this._emit('error', e); }
    }
  }

  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit('state', s);
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) clearTimeout(this._timers[k]);
    this._timers = {};
  }

  _timer(name, ms, fn) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(() => { delete this._timers[name]; fn(); }, ms);
  }

  _connect() {
    if (this.state === 'closed') return;
    let ws;
    const msgpackProtocol = this.options.protocol === 'msgpack';
    try {
      ws = msgpackProtocol ? new this._WS(this.url, 'shardcast.msgpack') : new this._WS(this.url);
    } catch (e) { this._emit('error', e); this._scheduleReconnect(); return; }
    if (msgpackProtocol) ws.binaryType = 'arraybuffer';
    this._ws = ws;
    this._timer('connect', this.options.connectTimeout, () => this._abandon(ws, 'connect timeout'));
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows
  }

  _detach(ws) { ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; }

  /** Give up on a socket without waiting for its close handshake (it may be half-open). */
  _abandon(ws, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    try { ws.close(4000, reason); } catch { /* CONNECTING sockets may throw in some runtimes */ }
    this._onClose(ws, 4000, reason);
  }

  _onOpen(ws) {
    clearTimeout(this._timers.connect);
    this._lastRx = Date.now();
    this._pingId = null;
    this._setState('open');
    this._emit('open');
    this._timer('stable', this.options.stableAfter, () => { this._attempt = 0; });
    this._schedulePing(this.options.pingInterval);
    if (this.options.token === undefined) { this._resume(); return; }
    // The token goes first; the server reads frames in order, so the
    // subscriptions can follow at once (a refused token closes with 4001).
    this._fetchToken().then((token) => {
      if (ws !== this._ws) return;
      this._rawSend({ op: 'auth', token });
      this._scheduleRefresh(ws, token);
      this._resume();
    }, (e) => { this._emit('error', e); this._abandon(ws, 'no token'); });
  }

  /** Resubscribe and send what waited for the connection. */
  _resume() {
    for (const sub of this._subs.values()) this._sendSub(sub);
    const queued = this._queue;
    this._queue = [];
    for (const id of queued) this._sendOp(id);
  }

  async _fetchToken() {
    const { token } = this.options;
    return typeof token === 'function' ? await token() : token;
  }

  /** With a token function, send a fresh token `refreshBefore` ms before this one expires. */
  _scheduleRefresh(ws, token) {
    const exp = tokenExpiry(token);
    if (typeof this.options.token !== 'function' || exp === null) return;
    const wait = Math.max(0, exp - this.options.refreshBefore - Date.now());
    this._timer('refresh', wait, () => {
      this.refreshToken().catch((e) => { this._emit('error', e); });
    });
  }

  /**
   * Send a fresh token (from the `token` option) on the open connection. The server
   * replaces the connection's permissions; subscriptions the new token does not allow end.
   * @returns {Promise<void>}
   */
  async refreshToken() {
    const ws = this._ws;
    const token = await this._fetchToken();
    await this._op({ op: 'auth', token });
    if (ws && ws === this._ws) this._scheduleRefresh(ws, token);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._detach(ws);
    this._clearTimers();
    this._emit('close', { code, reason });
    if (this.state === 'closed') return;
    // Ops already on the wire cannot be resent blindly: a publish may have taken effect.
    for (const [id, op] of this._ops) {
      if (!op.sent) continue;
      if (op.frame.op === 'unsub') this._settle(id, null, {});   // the server forgot it anyway
      else this._settle(id, codedError('disconnected', `connection lost (${code})`));
    }
    for (const sub of this._subs.values()) { sub._pending = false; sub._buffer = []; }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    this._setState('reconnecting');
    // A draining server said when to come back: that, not the backoff.
    if (this._advice !== null) {
      const after = this._advice;
      this._advice = null;
      this._timer('reconnect', after, () => this._connect());
      return;
    }
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const cap = Math.min(max, min * 2 ** Math.min(this._attempt, 30));
    this._attempt++;
    this._timer('reconnect', Math.random() * cap, () => this._connect()); // full jitter
  }

  _schedulePing(ms) {
    const every = this.options.pingInterval;
    if (!every) return;
    this._timer('ping', ms, () => {
      const idle = Date.now() - this._lastRx;
      if (this._pingId !== null || idle < every) {   // pong awaited, or traffic seen lately
        this._schedulePing(this._pingId !== null ? every : every - idle);
        return;
      }
      const ws = this._ws;
      this._pingId = this._nextId++;
      this._rawSend({ op: 'ping', id: this._pingId });
      this._timer('pong', this.options.pongTimeout, () => this._abandon(ws, 'pong timeout'));
      this._schedulePing(every);
    });
  }

  _rawSend(frame) {
    try {
      this._ws.send(this.options.protocol === 'msgpack' ? msgpack.encode(frame) : JSON.stringify(frame));
      return true;
    }
    catch (e) { this._emit('error', e); return false; }
  }

  /** Register an op with an id, a promise and a timeout; send it now or when connected. */
  _op(frame, timeout = this.options.ackTimeout, extra = {}) {
    if (this.state === 'closed') return Promise.reject(codedError('closed', 'client is closed'));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const op = { resolve, reject, frame: { ...frame, id }, sent: false, ...extra };
      op.timer = setTimeout(() => {
        this._settle(id, codedError('timeout', `no ack for ${frame.op} within ${timeout} ms`));
        if (op.sub && op.sent && this._ws) this._abandon(this._ws, 'sub ack timeout');
      }, timeout);
      this._ops.set(id, op);
      if (this.state === 'open') this._sendOp(id); else this._queue.push(id);
    });
  }

  _sendOp(id) {
    const op = this._ops.get(id);
    if (!op) return;
    op.sent = this._rawSend(op.frame);
    if (!op.sent) this._settle(id, codedError('send_failed', 'could not send'));
  }

  _settle(id, err, value) {
    const op = this._ops.get(id);
    if (!op) return;
    this._ops.delete(id);
    clearTimeout(op.timer);
    const qi = this._queue.indexOf(id);
    if (qi >= 0) this._queue.splice(qi, 1);
    if (op.sub && op.sub._refilling) {
      // What came before this ack was the old subscription's; the replay
      // after it brings those again. What follows is buffered until the
      // ack is handled (a promise's turn later).
      op.sub._refilling = false;
      op.sub._buffer = [];
    }
    if (err) op.reject(err); else op.resolve(value);
  }

  _sendSub(sub) {
    const frame = { op: 'sub', ch: sub.ch };
    if (sub.epoch !== null) { frame.since = sub.seq; frame.epoch = sub.epoch; }
    if (sub._delta) frame.delta = 'fossil';
    if (sub._onJoin || sub._onLeave) frame.join_leave = true;
    sub._pending = true;
    sub._buffer = [];
    this._op(frame, this.options.ackTimeout, { sub }).then(
      (f) => {
        if (this._subs.get(sub.ch) !== sub) return; // unsubscribed meanwhile
        sub._pending = false;
        sub._refusals = 0;
        sub._ack(f);
      },
      (err) => {
        if (this._subs.get(sub.ch) !== sub) return;
        sub._pending = false;
        if (err.code === 'disconnected') return; // resubscribed on the next connection
        if (err.code === 'over_capacity') {
          // The server is full for now: keep the subscription, ask again later.
          const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
          sub._refusals = (sub._refusals || 0) + 1;
          const cap = Math.min(max, min * 2 ** Math.min(sub._refusals, 30));
          this._timer(`sub:${sub.ch}`, Math.random() * cap, () => {
            if (this._subs.get(sub.ch) === sub && this.state === 'open' && !sub._pending) this._sendSub(sub);
          });
          return;
        }
        if (err.code !== 'timeout' && err.code !== 'closed') {
          sub.active = false; // refused by the server: forget it
          this._subs.delete(sub.ch);
        }
        if (!sub._acked) { sub._acked = true; sub._reject(err); }
        else this._emit('error', err);
      },
    );
  }

  /**
   * A gap before `f` on a live subscription: subscribe again from the last
   * seq delivered, so that history replays what is missing. A replay that
   * leaves the same gap (a frame this client cannot read, every time it
   * comes) is asked for again after a backoff with full jitter, like a
   * reconnect; after `maxRefills` such replays the gap is skipped: reported
   * (`gap_skipped`, and onReset with reason 'unreadable') and delivery goes
   * on with `f`.
   */
  _refill(sub, f) {
    const name = `refill:${sub.ch}`;
    if (sub._pending || this._timers[name]) return; // a replay is already on its way
    const from = sub.seq + 1, to = f.seq - 1;
    if (sub._refills >= this.options.maxRefills) {
      this._emit('error', codedError('gap_skipped', `${sub.ch}: seq ${from}..${to} still missing after ${sub._refills} replays: skipped`));
      sub._skip(f, to);
      return;
    }
    this._emit('error', codedError('gap', `${sub.ch}: seq ${from}..${to} missing, resubscribing`));
    const attempt = sub._refills++;
    // The first replay at once (a frame lost on its way is the usual gap).
    if (attempt === 0) { this._resubscribe(sub); return; }
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const cap = Math.min(max, min * 2 ** Math.min(attempt, 30));
    this._timer(name, Math.random() * cap, () => this._resubscribe(sub)); // full jitter
  }

  /** Subscribes `sub` again from its last seq (the replay fills a gap). */
  _resubscribe(sub) {
    if (this.state !== 'open' || sub._pending || this._subs.get(sub.ch) !== sub) return;
    this._sendSub(sub);
    sub._refilling = true;
  }

  _unsubscribe(sub) {
    if (!sub.active) return Promise.resolve();
    sub.active = false;
    sub._buffer = [];
    if (this._subs.get(sub.ch) === sub) this._subs.delete(sub.ch);
    if (!sub._acked) { sub._acked = true; sub._reject(codedError('unsubscribed', 'unsubscribed before the ack')); }
    if (this.state !== 'open') return Promise.resolve();
    return this._op({ op: 'unsub', ch: sub.ch }).then(() => {}, (err) => {
      if (err.code !== 'not_subscribed' && err.code !== 'closed') throw err;
    });
  }

  _onFrame(data) {
    this._lastRx = Date.now();
    if (this.options.protocol === 'msgpack') {
      let f;
      try { f = msgpack.decode(new Uint8Array(data)); } catch { this._emit('error', codedError('bad_frame', 'unparsable frame')); return; }
      // Binary data (a raw room's, or a bin pub) is the message's data.
      if (f && f.op === 'msg' && f.bin !== undefined && f.data === undefined) f.data = f.bin;
      this._onParsed(f, null);
      return;
    }
    // A batched frame holds envelopes separated by \n (never inside one).
    if (typeof data === 'string' && data.includes('\n')) {
      for (const line of data.split('\n')) this._onEnvelope(line);
    } else {
      this._onEnvelope(data);
    }
  }

  /** Turns a delta `msg` back into the whole one; remembers the base. */
  _undelta(sub, f, text) {
    try {
      if (f.delta === true) {
        if (sub._base === null) throw new Error('delta without a base');
        sub._base = applyDelta(sub._base, deltaBytes(f.data));
        f.data = JSON.parse(fromUtf8.decode(sub._base));
        delete f.delta;
      } else {
        const raw = rawData(text);
        sub._base = raw === null ? null : utf8.encode(raw);
      }
      return true;
    } catch (e) {
      // Cannot happen with a sound server; if it does, reconnect: the
      // resubscription's replay brings whole messages again.
      sub._base = null;
      this._emit('error', codedError('bad_delta', String(e.message || e)));
      if (this._ws) this._abandon(this._ws, 'bad delta');
      return false;
    }
  }

  _onEnvelope(text) {
    let f;
    try { f = JSON.parse(text); } catch { this._emit('error', codedError('bad_frame', 'unparsable frame')); return; }
    this._onParsed(f, text);
  }

  /** Acts on one envelope (`text`: its JSON, for deltas; null in MessagePack). */
  _onParsed(f, text) {
    if (!f || typeof f !== 'object') return;
    if (f.op === 'msg') {
      const sub = this._subs.get(f.ch);
      if (!sub) return;
      // Deltas apply in arrival order: the server sends one only right
      // after the publication it applies to, on the same connection.
      if (sub._delta && text !== null && !this._undelta(sub, f, text)) return;
      sub._deliver(f);
    } else if (f.op === 'reconnect') {
      // The server is going away (1012 follows): come back after this.
      this._advice = Math.max(0, Number(f.after_ms) || 0);
    } else if (f.op === 'unsubscribed') {
      // The server ended it (its API): forget it, so no reconnect brings it back.
      const sub = this._subs.get(f.ch);
      if (sub) sub._ended(f.reason);
    } else if (f.op === 'resync') {
      const sub = this._subs.get(f.ch);
      if (sub) sub._resync(f);
    } else if (f.op === 'join' || f.op === 'leave') {
      const sub = this._subs.get(f.ch);
      const handler = sub && sub.active && (f.op === 'join' ? sub._onJoin : sub._onLeave);
      if (handler) {
        try { handler({ ch: f.ch, user: f.user, conn: f.conn, info: f.info }); }
        catch (e) { this._emit('error', e); }
      }
    } else if ((f.op === 'presence' || f.op === 'occupancy') && f.id !== undefined && this._ops.has(f.id)) {
      this._settle(f.id, null, f);
    } else if (f.op === 'ack' || f.op === 'pong' || f.op === 'err') {
      if (f.op === 'pong' && f.id === this._pingId) {
        this._pingId = null;
        clearTimeout(this._timers.pong);
        return;
      }
      if (f.id === undefined || !this._ops.has(f.id)) {
        if (f.op === 'err') this._emit('error', codedError(f.code, f.msg));
        return;
      }
      if (f.op === 'err') this._settle(f.id, codedError(f.code, f.msg));
      else this._settle(f.id, null, f);
    }
  }
}

export default Shardcast;
