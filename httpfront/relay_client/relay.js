/*
 * relay.js: the browser end of the end-to-end encrypted relay
 * (`agent-tunnel share`). docs/RELAY.md is the wire protocol; this file
 * follows it to the letter and says so where it had to decide something the
 * document leaves open (look for "Decision:").
 *
 * One classic script, no modules, no build step, no dependencies, so that
 * the gateway can pin it with Subresource Integrity and the page can run
 * under a CSP without 'unsafe-inline' or 'unsafe-eval'. Everything is on
 * `TunnelRelay` (globalThis.TunnelRelay, and module.exports under Node for
 * tests/relay/relay_js_test.mjs); the page UI starts only when the document
 * has a #relay-app element.
 *
 * Layers, bottom up:
 *   codec       encodeMessage / decodeMessage, sealFrame / openFrame
 *   Channel     the client role of one connection: handshake, pairing,
 *               sequence numbers, streams and their credit (no I/O: it is
 *               given a send function and fed received frames)
 *   Relay       the WebSocket: reconnects, gateway status, re-pairing,
 *               relay.fetch()
 *   CookieJar   cookies of the device's pages (a Service Worker sees none)
 *   bridge      answers the Service Worker (sw.js) with relay.fetch()
 *   UI          the page: status, pairing form, viewer iframe
 */
(function (root) {
  'use strict';

  // ---------------------------------------------------------------------
  // Constants (docs/RELAY.md, "Frames" and "Messages")

  const VERSION = 1;
  const TYPES = Object.freeze({
    HELLO: 1, HELLO_ACK: 2, PAIR: 3, PAIR_OK: 4, REQUEST: 5,
    RESPONSE: 6, DATA: 7, CLOSE: 8, ERROR: 9, WINDOW: 10,
  });
  const TYPE_NAMES = Object.freeze(Object.fromEntries(
    Object.entries(TYPES).map(([name, value]) => [value, name])));
  const DIRS = Object.freeze({ c2h: 1, h2c: 2 });
  const IV_BYTES = 12;
  const TAG_BYTES = 16;
  const CONN_BYTES = 16;
  const HEADER_BYTES = 36;
  const MIN_FRAME = IV_BYTES + TAG_BYTES + HEADER_BYTES;  // 64
  const DATA_HEADER_BYTES = 5;                            // stream u32 | flags u8
  const FLAG_END = 1;

  // Decision: which types each direction may carry. A type the peer never
  // sends in that direction is dropped like an unknown type (it is not
  // accepted and does not advance seq). The browser sends no ERROR.
  const C2H_TYPES = new Set([TYPES.HELLO, TYPES.PAIR, TYPES.REQUEST,
    TYPES.DATA, TYPES.WINDOW, TYPES.CLOSE]);
  const H2C_TYPES = new Set([TYPES.HELLO_ACK, TYPES.PAIR_OK, TYPES.RESPONSE,
    TYPES.DATA, TYPES.WINDOW, TYPES.CLOSE, TYPES.ERROR]);

  // Why a received frame was dropped; each has a counter in stats.droppedBy.
  const DROP_REASONS = ['short', 'auth', 'version', 'reserved', 'type', 'dir',
    'state', 'conn', 'seq', 'payload'];

  // A REQUEST whose JSON is larger than this is refused here rather than
  // sent: one oversized WebSocket message makes the gateway close the whole
  // connection (1009), which would fail every other stream too.
  const MAX_REQUEST_JSON = 64 * 1024;
  const HELLO_PAYLOAD = { client: 'relay.js/1' };

  // Request headers the browser never forwards: hop-by-hop ones, Host (the
  // agent sets its own) and Accept-Encoding (a Service Worker hands the page
  // the bytes as they come; the browser would not decompress them).
  const REQUEST_HEADERS_NOT_FORWARDED = new Set(['connection', 'keep-alive',
    'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade',
    'host', 'accept-encoding', 'content-length']);

  const utf8Encoder = new TextEncoder();
  const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

  /** An error of this protocol; `code` is machine-readable ("auth",
   *  "bad_code", "cancelled", "disconnected", …). */
  class RelayError extends Error {
    constructor(message, code) {
      super(message);
      this.name = 'RelayError';
      this.code = code || 'error';
    }
  }

  // ---------------------------------------------------------------------
  // Bytes

  function subtle() {
    const c = root.crypto;
    if (!c || !c.subtle) {
      throw new RelayError('WebCrypto is not available (the page needs a ' +
        'secure context: HTTPS or localhost)', 'no_crypto');
    }
    return c.subtle;
  }

  function randomBytes(n) {
    return root.crypto.getRandomValues(new Uint8Array(n));
  }

  /** A Uint8Array view of any BufferSource (no copy). */
  function toBytes(x) {
    if (x instanceof Uint8Array) return x;
    if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    if (x instanceof ArrayBuffer) return new Uint8Array(x);
    if (typeof x === 'string') return utf8Encoder.encode(x);
    throw new TypeError('expected bytes');
  }

  function concatBytes(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const out = new Uint8Array(n);
    let off = 0;
    for (const p of parts) { out.set(p, off); off += p.length; }
    return out;
  }

  function bytesEqual(a, b) {
    if (!a || !b || a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  function toHex(bytes) {
    let s = '';
    for (const b of toBytes(bytes)) s += b.toString(16).padStart(2, '0');
    return s;
  }

  function fromHex(hex) {
    if (hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) throw new TypeError('bad hex');
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function base64urlEncode(bytes) {
    let bin = '';
    for (const b of toBytes(bytes)) bin += String.fromCharCode(b);
    return root.btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  /** Strict: base64url alphabet, no padding (RELAY.md's form of every id). */
  function base64urlDecode(s) {
    if (typeof s !== 'string' || /[^A-Za-z0-9_-]/.test(s) || s.length % 4 === 1) {
      throw new RelayError('not base64url', 'format');
    }
    const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4);
    const bin = root.atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function jsonBytes(value) {
    return utf8Encoder.encode(JSON.stringify(value));
  }

  /** The JSON object of a payload, or null when it is not one. */
  function parseJsonObject(bytes) {
    try {
      const v = JSON.parse(utf8Decoder.decode(bytes));
      return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
    } catch (e) {
      return null;
    }
  }

  function isStreamId(x) {
    return Number.isInteger(x) && x >= 1 && x <= 0xffffffff;
  }

  function deferred() {
    const d = {};
    d.promise = new Promise((resolve, reject) => { d.resolve = resolve; d.reject = reject; });
    return d;
  }

  // ---------------------------------------------------------------------
  // Codec

  function dirByte(dir) {
    if (dir === 'c2h' || dir === 'h2c') return DIRS[dir];
    return dir;
  }

  function dirName(dir) {
    if (dir === DIRS.c2h || dir === 'c2h') return 'c2h';
    if (dir === DIRS.h2c || dir === 'h2c') return 'h2c';
    throw new TypeError('dir must be c2h or h2c');
  }

  /** u64 as a Number while it is exact, else as a BigInt (which then
   *  compares unequal to every Number, as a seq that large should). */
  function u64(big) {
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  /** {v, type, dir, seq, ts, conn (16 bytes), payload (bytes)} -> bytes. */
  function encodeMessage(m) {
    const conn = toBytes(m.conn);
    if (conn.length !== CONN_BYTES) throw new TypeError('conn must be 16 bytes');
    const payload = m.payload === undefined || m.payload === null ? new Uint8Array(0) : toBytes(m.payload);
    const out = new Uint8Array(HEADER_BYTES + payload.length);
    const view = new DataView(out.buffer);
    out[0] = m.v === undefined ? VERSION : m.v;
    out[1] = m.type;
    out[2] = dirByte(m.dir);
    out[3] = 0;
    view.setBigUint64(4, BigInt(m.seq));
    view.setBigUint64(12, BigInt(m.ts));
    out.set(conn, 20);
    out.set(payload, HEADER_BYTES);
    return out;
  }

  /** bytes -> {v, type, dir, seq, ts, conn, payload}; payload and conn are
   *  views into `bytes`. Checks only the length: the rules are the
   *  Channel's. */
  function decodeMessage(bytes) {
    bytes = toBytes(bytes);
    if (bytes.length < HEADER_BYTES) throw new RelayError('message shorter than its header', 'short');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return {
      v: bytes[0],
      type: bytes[1],
      dir: bytes[2],
      reserved: bytes[3],
      seq: u64(view.getBigUint64(4)),
      ts: u64(view.getBigUint64(12)),
      conn: bytes.subarray(20, 36),
      payload: bytes.subarray(HEADER_BYTES),
    };
  }

  function aad(session, dir) {
    return utf8Encoder.encode(`tunnel-relay|v=1|session=${session}|dir=${dirName(dir)}`);
  }

  /** The share's key as a CryptoKey that script cannot read back. */
  function importKey(raw) {
    const bytes = typeof raw === 'string' ? base64urlDecode(raw) : toBytes(raw);
    if (bytes.length !== 32) return Promise.reject(new RelayError('the key must be 32 bytes', 'format'));
    return subtle().importKey('raw', bytes, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
  }

  /** IV | tag | ciphertext. `iv` only for test vectors: a real frame
   *  always gets a fresh random one. */
  async function sealFrame(key, session, dir, plaintext, iv) {
    iv = iv === undefined ? randomBytes(IV_BYTES) : toBytes(iv);
    if (iv.length !== IV_BYTES) throw new TypeError('iv must be 12 bytes');
    const sealed = new Uint8Array(await subtle().encrypt(
      { name: 'AES-GCM', iv, additionalData: aad(session, dir), tagLength: 128 },
      key, toBytes(plaintext)));
    // WebCrypto gives ciphertext | tag; the frame puts the tag first.
    const ctLength = sealed.length - TAG_BYTES;
    const frame = new Uint8Array(IV_BYTES + sealed.length);
    frame.set(iv, 0);
    frame.set(sealed.subarray(ctLength), IV_BYTES);
    frame.set(sealed.subarray(0, ctLength), IV_BYTES + TAG_BYTES);
    return frame;
  }

  /** The plaintext of a frame, or a RelayError with code "short" or
   *  "auth" (wrong key, tag, ciphertext, session or direction: GCM cannot
   *  tell them apart, and neither should a receiver). */
  async function openFrame(key, session, dir, frame) {
    frame = toBytes(frame);
    if (frame.length < MIN_FRAME) throw new RelayError('frame shorter than 64 bytes', 'short');
    const iv = frame.subarray(0, IV_BYTES);
    const tag = frame.subarray(IV_BYTES, IV_BYTES + TAG_BYTES);
    const ct = frame.subarray(IV_BYTES + TAG_BYTES);
    const joined = new Uint8Array(ct.length + TAG_BYTES);
    joined.set(ct, 0);
    joined.set(tag, ct.length);
    let plain;
    try {
      plain = await subtle().decrypt(
        { name: 'AES-GCM', iv, additionalData: aad(session, dir), tagLength: 128 },
        key, joined);
    } catch (e) {
      throw new RelayError('frame failed authentication', 'auth');
    }
    return new Uint8Array(plain);
  }

  function encodeData(stream, flags, body) {
    const out = new Uint8Array(DATA_HEADER_BYTES + body.length);
    new DataView(out.buffer).setUint32(0, stream);
    out[4] = flags;
    out.set(body, DATA_HEADER_BYTES);
    return out;
  }

  function decodeData(payload) {
    if (payload.length < DATA_HEADER_BYTES) return null;
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    return { stream: view.getUint32(0), flags: payload[4], body: payload.subarray(DATA_HEADER_BYTES) };
  }

  /** [{name, value}] from a Headers, an array of pairs, an array of
   *  {name, value} or a plain object; names as given. */
  function headerList(h) {
    const out = [];
    if (!h) return out;
    const push = (name, value) => out.push({ name: String(name), value: String(value) });
    if (typeof h.forEach === 'function' && !Array.isArray(h)) {
      h.forEach((value, name) => push(name, value));
    } else if (Array.isArray(h)) {
      for (const e of h) {
        if (Array.isArray(e)) push(e[0], e[1]);
        else if (e && typeof e === 'object') push(e.name, e.value);
      }
    } else {
      for (const name of Object.keys(h)) push(name, h[name]);
    }
    return out;
  }

  function hasHeader(list, name) {
    name = name.toLowerCase();
    return list.some((h) => h.name.toLowerCase() === name);
  }

  // ---------------------------------------------------------------------
  // Channel: the client role of one connection (RELAY.md, "Connections,
  // sequence numbers and nonces", "The handshake and pairing", "HTTP over
  // the channel").

  /** One HTTP exchange. Credit both ways starts at the HELLO_ACK's window:
   *  sendCredit is what we may still send, recvCredit what the agent may. */
  class ClientStream {
    constructor(channel, id) {
      this.channel = channel;
      this.id = id;
      this.sendCredit = channel.window;
      this.recvCredit = channel.window;
      this.ungranted = 0;         // bytes the reader took that we have not granted back yet
      this.queue = [];            // received body chunks the reader has not taken
      this.responded = false;
      this.remoteEnded = false;   // the agent's DATA end (or RESPONSE end) arrived
      this.localEnded = false;    // our request body is complete
      this.done = false;          // nothing more goes out for this stream
      this.error = null;
      this.head = deferred();
      this.head.promise.catch(() => {});  // the caller may never look
      this.pullWaiter = null;
      this.creditWaiter = null;
    }

    /** ReadableStream pull(): hands the reader one chunk, and grants its
     *  size back to the agent only now, so credit follows the consumer. */
    pull(controller) {
      return new Promise((resolve) => {
        this.pullWaiter = { controller, resolve };
        this.deliver();
      });
    }

    deliver() {
      const w = this.pullWaiter;
      if (!w) return;
      if (this.queue.length) {
        const chunk = this.queue.shift();
        this.pullWaiter = null;
        w.controller.enqueue(chunk);
        w.resolve();
        this.channel._consumed(this, chunk.length);
      } else if (this.remoteEnded) {
        this.pullWaiter = null;
        w.controller.close();
        w.resolve();
      } else if (this.error) {
        this.pullWaiter = null;
        w.controller.error(this.error);
        w.resolve();
      }
    }

    /** Waits until we may send at least one byte (or the stream is over). */
    credit() {
      if (this.sendCredit > 0 || this.done) return Promise.resolve();
      return new Promise((resolve) => { this.creditWaiter = resolve; });
    }

    wakeSender() {
      const w = this.creditWaiter;
      this.creditWaiter = null;
      if (w) w();
    }

    /** Ends the stream here, failing whatever is still waiting. A body
     *  the agent had already finished stays readable to its end. */
    fail(err) {
      if (this.done) return;
      this.done = true;
      if (!this.remoteEnded) this.error = err;
      this.head.reject(err);
      this.wakeSender();
      this.deliver();
      this.channel.streams.delete(this.id);
    }
  }

  /**
   * opts: key (CryptoKey), session (id string), send(frame: Uint8Array),
   * onEvent(name, detail) (optional), random(n) and now() (optional, for
   * tests).
   *
   * Events: "open" {window, maxChunk, locked, attemptsLeft}, "paired",
   * "pair_error" {code: "bad_code", message, attemptsLeft}, "locked"
   * {message}, "not_paired" {message}, "error" {code, message} (an ERROR
   * with another code), "drop" {reason}.
   */
  class Channel {
    constructor(opts) {
      this.key = opts.key;
      this.session = opts.session;
      this._sendFrame = opts.send;
      this._onEvent = opts.onEvent || (() => {});
      this._random = opts.random || randomBytes;
      this._now = opts.now || Date.now;
      this.state = 'idle';          // idle | hello | open
      this.paired = false;
      this.locked = false;
      this.attemptsLeft = null;
      this.window = 0;
      this.maxChunk = 0;
      this.streams = new Map();
      this.stats = {
        framesSent: 0, framesReceived: 0, accepted: 0, dropped: 0,
        droppedBy: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])),
        ignored: 0,               // accepted, about a stream that is already over
        handshakes: 0, streams: 0, bytesIn: 0, bytesOut: 0,
      };
      this._epoch = 0;              // bumped by every start()/stop(): stale sends are dropped
      this._c = null;               // our nonce C
      this._h = null;               // the agent's nonce H
      this._txSeq = 0;              // seq of the next frame we send
      this._rxSeq = -1;             // seq of the last frame accepted
      this._nextStream = 1;
      this._pairing = false;
      this._rx = Promise.resolve();
      this._tx = Promise.resolve();
    }

    /** A new handshake: new C, HELLO seq 0. Everything of the previous
     *  connection is over (its streams fail, pairing is forgotten), as the
     *  agent does on receiving HELLO. */
    start() {
      this._reset(new RelayError('the connection to the device restarted', 'disconnected'));
      this.state = 'hello';
      this._c = this._random(CONN_BYTES);
      this.stats.handshakes++;
      this._send(TYPES.HELLO, jsonBytes(HELLO_PAYLOAD));
    }

    /** The transport is gone (WebSocket closed, agent disconnected). */
    stop(err) {
      this._reset(err || new RelayError('the connection to the device was lost', 'disconnected'));
      this.state = 'idle';
    }

    _reset(err) {
      this._epoch++;
      this._h = null;
      this._txSeq = 0;
      this._rxSeq = -1;
      this._nextStream = 1;
      this.paired = false;
      this._pairing = false;
      for (const s of Array.from(this.streams.values())) s.fail(err);
    }

    /** Resolves once every frame received so far is handled and every frame
     *  queued so far is handed to send(). */
    async idle() {
      let rx, tx;
      do {
        rx = this._rx;
        tx = this._tx;
        await Promise.all([rx, tx]);
      } while (rx !== this._rx || tx !== this._tx);
    }

    pair(code) {
      if (this.state !== 'open') throw new RelayError('not connected to the device', 'disconnected');
      if (this.locked) throw new RelayError('the share is locked', 'locked');
      if (!/^[0-9]{6}$/.test(code)) throw new RelayError('the code is 6 digits', 'format');
      this._pairing = true;
      this._send(TYPES.PAIR, jsonBytes({ code }));
    }

    // --- sending ---

    /** Numbers the message now (so seq follows call order), encrypts and
     *  sends in that same order. A frame of a connection that has since
     *  been reset is not sent at all. */
    _send(type, payload) {
      const epoch = this._epoch;
      const conn = type === TYPES.HELLO ? this._c : this._h;
      const plaintext = encodeMessage({
        v: VERSION, type, dir: DIRS.c2h, seq: this._txSeq++, ts: this._now(), conn, payload,
      });
      this._tx = this._tx
        .then(() => (epoch === this._epoch ? sealFrame(this.key, this.session, 'c2h', plaintext) : null))
        .then((frame) => {
          if (!frame || epoch !== this._epoch) return;
          this.stats.framesSent++;
          this.stats.bytesOut += frame.length;
          this._sendFrame(frame);
        })
        .catch((e) => this._onEvent('error', { code: 'send', message: String(e && e.message) }));
    }

    _sendJson(type, obj) {
      this._send(type, jsonBytes(obj));
    }

    _close(s, reason, message) {
      if (s.done) return;
      const body = { stream: s.id, reason };
      if (message) body.message = message;
      this._sendJson(TYPES.CLOSE, body);
      s.fail(new RelayError(message || reason, reason));
    }

    /** The reader took n bytes. Grants are batched to half a window: the
     *  agent's credit never drops below half a window while the reader
     *  keeps up, so it never stalls, and WINDOW frames stay few. */
    _consumed(s, n) {
      s.ungranted += n;
      if (s.done || s.remoteEnded) return;
      if (s.ungranted >= Math.max(1, Math.floor(this.window / 2))) {
        const increment = s.ungranted;
        s.ungranted = 0;
        s.recvCredit += increment;
        this._sendJson(TYPES.WINDOW, { stream: s.id, increment });
      }
    }

    /**
     * Opens a stream. req: {method, path, headers: [{name, value}],
     * body: null | Uint8Array | ReadableStream, signal}. Resolves with
     * {stream, status, headers, body: ReadableStream | null} once the
     * RESPONSE is in.
     */
    request(req) {
      if (this.state !== 'open' || !this.paired) {
        return Promise.reject(new RelayError('not paired with the device', 'not_paired'));
      }
      if (req.signal && req.signal.aborted) return Promise.reject(abortError(req.signal));
      const id = this._nextStream;
      if (!isStreamId(id)) return Promise.reject(new RelayError('out of stream ids', 'exhausted'));
      const body = req.body === undefined ? null : req.body;
      const noBody = body === null || (body instanceof Uint8Array && body.length === 0);
      const head = {
        stream: id,
        method: req.method || 'GET',
        path: req.path,
        headers: req.headers || [],
        end: noBody,
      };
      const json = jsonBytes(head);
      if (json.length > MAX_REQUEST_JSON) {
        return Promise.reject(new RelayError('request headers too large', 'too_large'));
      }
      this._nextStream++;
      const s = new ClientStream(this, id);
      this.streams.set(id, s);
      this.stats.streams++;
      this._send(TYPES.REQUEST, json);
      if (noBody) s.localEnded = true;
      else this._pumpBody(s, body);

      if (req.signal) {
        const onAbort = () => this.cancel(s, abortError(req.signal));
        req.signal.addEventListener('abort', onAbort, { once: true });
      }
      return s.head.promise.then((response) => {
        if (response.body === null) return response;
        response.body = new ReadableStream({
          pull: (controller) => s.pull(controller),
          cancel: () => this.cancel(s, new RelayError('cancelled by the reader', 'cancelled')),
        }, { highWaterMark: 0 });
        return response;
      });
    }

    /** Our side gives up on a stream: CLOSE "cancelled" unless it is over. */
    cancel(s, err) {
      if (s.done) return;
      if (s.localEnded && s.remoteEnded) return;
      this._sendJson(TYPES.CLOSE, { stream: s.id, reason: 'cancelled' });
      s.fail(err || new RelayError('cancelled', 'cancelled'));
    }

    async _pumpBody(s, body) {
      try {
        if (body instanceof Uint8Array) {
          await this._sendBody(s, body, true);
          return;
        }
        const reader = body.getReader();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (s.done) return;
            if (done) break;
            await this._sendBody(s, toBytes(value), false);
          }
        } finally {
          if (s.done) reader.cancel().catch(() => {});
        }
        await this._sendBody(s, new Uint8Array(0), true);
      } catch (e) {
        if (!s.done) this._close(s, 'cancelled', 'reading the request body failed');
      }
    }

    /** DATA within credit and maxChunk; `end` puts the end flag on the last
     *  chunk (an empty DATA when there are no bytes left to carry it). */
    async _sendBody(s, bytes, end) {
      let off = 0;
      if (bytes.length === 0 && !end) return;
      do {
        if (bytes.length > off) await s.credit();
        if (s.done) return;
        const n = Math.min(bytes.length - off, s.sendCredit, this.maxChunk);
        const last = end && off + n === bytes.length;
        if (n > 0 || last) {
          this._send(TYPES.DATA, encodeData(s.id, last ? FLAG_END : 0, bytes.subarray(off, off + n)));
          s.sendCredit -= n;
          off += n;
        }
      } while (off < bytes.length);
      if (end) {
        s.localEnded = true;
        this._finishIfDone(s);
      }
    }

    _finishIfDone(s) {
      if (s.localEnded && s.remoteEnded && !s.done) {
        s.done = true;
        this.streams.delete(s.id);
      }
    }

    // --- receiving ---

    /** Feeds one binary WebSocket message. Frames are handled strictly in
     *  the order given, decryption being asynchronous. */
    receive(frame) {
      const bytes = toBytes(frame).slice();
      this._rx = this._rx.then(() => this._receive(bytes)).catch((e) => {
        this._onEvent('error', { code: 'internal', message: String(e && e.stack || e) });
      });
      return this._rx;
    }

    _drop(reason) {
      this.stats.dropped++;
      this.stats.droppedBy[reason]++;
      this._onEvent('drop', { reason });
    }

    async _receive(frame) {
      this.stats.framesReceived++;
      this.stats.bytesIn += frame.length;
      if (frame.length < MIN_FRAME) return this._drop('short');
      let plain;
      try {
        plain = await openFrame(this.key, this.session, 'h2c', frame);
      } catch (e) {
        return this._drop('auth');
      }
      const m = decodeMessage(plain);
      if (m.v !== VERSION) return this._drop('version');
      if (m.reserved !== 0) return this._drop('reserved');
      if (!H2C_TYPES.has(m.type)) return this._drop('type');
      if (m.dir !== DIRS.h2c) return this._drop('dir');
      if (this.state === 'hello') {
        // Only the answer to our own HELLO: conn C, seq 0.
        if (!bytesEqual(m.conn, this._c)) return this._drop('conn');
        if (m.seq !== 0) return this._drop('seq');
        if (m.type !== TYPES.HELLO_ACK) return this._drop('state');
        return this._onHelloAck(m);
      }
      if (this.state !== 'open') return this._drop('state');
      if (!bytesEqual(m.conn, this._h)) return this._drop('conn');
      if (m.seq !== this._rxSeq + 1) return this._drop('seq');
      if (m.type === TYPES.HELLO_ACK) return this._drop('state');
      // Accepted: seq advances even if the payload turns out malformed
      // (then counted as dropped for "payload" and ignored).
      this._rxSeq = m.seq;
      this.stats.accepted++;
      switch (m.type) {
        case TYPES.PAIR_OK: return this._onPairOk();
        case TYPES.ERROR: return this._onError(m.payload);
        case TYPES.RESPONSE: return this._onResponse(m.payload);
        case TYPES.DATA: return this._onData(m.payload);
        case TYPES.WINDOW: return this._onWindow(m.payload);
        case TYPES.CLOSE: return this._onClose(m.payload);
        default: return this._drop('payload');
      }
    }

    _onHelloAck(m) {
      // Decision: a HELLO_ACK that does not parse does not open the
      // connection (dropped for "payload", seq stays at 0 expected); the
      // handshake timer of the Relay sends a new HELLO.
      const p = parseJsonObject(m.payload);
      let h = null;
      try {
        h = p && typeof p.host === 'string' ? base64urlDecode(p.host) : null;
      } catch (e) {
        h = null;
      }
      if (!p || !h || h.length !== CONN_BYTES ||
          !Number.isSafeInteger(p.window) || p.window < 1 ||
          !Number.isSafeInteger(p.maxChunk) || p.maxChunk < 1) {
        return this._drop('payload');
      }
      this.stats.accepted++;
      this._rxSeq = 0;
      this._h = h;
      this.window = p.window;
      // RELAY.md caps maxChunk at 64 KiB: a larger frame would make the
      // gateway close the whole WebSocket (1009).
      this.maxChunk = Math.min(p.maxChunk, 65536);
      this.locked = p.locked === true;
      this.attemptsLeft = Number.isInteger(p.attemptsLeft) ? p.attemptsLeft : null;
      this.state = 'open';
      this._onEvent('open', {
        window: this.window, maxChunk: this.maxChunk, locked: this.locked, attemptsLeft: this.attemptsLeft,
      });
    }

    _onPairOk() {
      // Decision: a PAIR_OK we did not ask for is ignored (counted as
      // "payload"): pairing happens only in answer to our PAIR.
      if (!this._pairing) return this._drop('payload');
      this._pairing = false;
      this.paired = true;
      this._onEvent('paired', {});
    }

    _onError(payload) {
      const p = parseJsonObject(payload);
      if (!p || typeof p.code !== 'string') return this._drop('payload');
      const message = typeof p.message === 'string' ? p.message : '';
      if (p.code === 'bad_code') {
        this._pairing = false;
        if (Number.isInteger(p.attemptsLeft)) this.attemptsLeft = p.attemptsLeft;
        this._onEvent('pair_error', { code: p.code, message, attemptsLeft: this.attemptsLeft });
      } else if (p.code === 'locked') {
        this._pairing = false;
        this.locked = true;
        this.attemptsLeft = 0;
        this._onEvent('locked', { message });
      } else if (p.code === 'not_paired') {
        // The agent does not consider us paired: nothing we sent got
        // through, so every stream is dead.
        this.paired = false;
        for (const s of Array.from(this.streams.values())) {
          s.fail(new RelayError('not paired with the device', 'not_paired'));
        }
        this._onEvent('not_paired', { message });
      } else {
        this._onEvent('error', { code: p.code, message });
      }
    }

    _stream(id) {
      const s = isStreamId(id) ? this.streams.get(id) : undefined;
      // A frame about a stream that is over is not an error: it can cross
      // our CLOSE on the way.
      if (!s) this.stats.ignored++;
      return s;
    }

    _onResponse(payload) {
      const p = parseJsonObject(payload);
      if (!p || !isStreamId(p.stream) || !Number.isInteger(p.status) ||
          p.status < 100 || p.status > 999 || !Array.isArray(p.headers)) {
        return this._drop('payload');
      }
      const s = this._stream(p.stream);
      if (!s) return;
      if (s.responded) return this._drop('payload');
      s.responded = true;
      const headers = [];
      for (const h of p.headers) {
        if (h && typeof h.name === 'string' && typeof h.value === 'string') {
          headers.push({ name: h.name, value: h.value });
        }
      }
      const end = p.end === true;
      if (end) {
        s.remoteEnded = true;
        this._finishIfDone(s);
      }
      s.head.resolve({ stream: s.id, status: p.status, headers, body: end ? null : true });
    }

    _onData(payload) {
      const d = decodeData(payload);
      if (!d) return this._drop('payload');
      const s = this._stream(d.stream);
      if (!s) return;
      if (!s.responded) return this._close(s, 'protocol_error', 'DATA before RESPONSE');
      if (s.remoteEnded) return this._drop('payload');
      if (d.body.length > s.recvCredit) {
        return this._close(s, 'flow_control', 'the device sent more than its credit');
      }
      s.recvCredit -= d.body.length;
      if (d.body.length) s.queue.push(d.body);
      if (d.flags & FLAG_END) {
        s.remoteEnded = true;
        this._finishIfDone(s);
      }
      s.deliver();
    }

    _onWindow(payload) {
      const p = parseJsonObject(payload);
      if (!p || !isStreamId(p.stream) || !Number.isSafeInteger(p.increment) ||
          p.increment < 1 || p.increment > 0x7fffffff) {
        return this._drop('payload');
      }
      const s = this._stream(p.stream);
      if (!s) return;
      s.sendCredit = Math.min(s.sendCredit + p.increment, Number.MAX_SAFE_INTEGER);
      s.wakeSender();
    }

    _onClose(payload) {
      const p = parseJsonObject(payload);
      if (!p || !isStreamId(p.stream)) return this._drop('payload');
      const s = this._stream(p.stream);
      if (!s) return;
      const reason = typeof p.reason === 'string' ? p.reason : 'closed';
      const detail = typeof p.message === 'string' && p.message ? `: ${p.message}` : '';
      s.fail(new RelayError(`the device closed the request (${reason}${detail})`, reason));
    }
  }

  function abortError(signal) {
    if (signal && signal.reason !== undefined) return signal.reason;
    return new RelayError('the request was aborted', 'cancelled');
  }

  // ---------------------------------------------------------------------
  // Request bodies

  /** Any fetch()-style body as {bytes} (known length) or {stream}, plus
   *  the Content-Type a fetch() would give it. */
  async function prepareBody(body) {
    if (body === undefined || body === null) return { bytes: null, type: null };
    if (typeof body === 'string') return { bytes: utf8Encoder.encode(body), type: 'text/plain;charset=UTF-8' };
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return { bytes: toBytes(body).slice(), type: null };
    if (typeof ReadableStream !== 'undefined' && body instanceof ReadableStream) return { stream: body, type: null };
    // Blob, FormData, URLSearchParams: let Response serialize them (it
    // knows the multipart boundary and the default Content-Type).
    const r = new Response(body);
    return { bytes: new Uint8Array(await r.arrayBuffer()), type: r.headers.get('content-type') };
  }

  const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

  /** A Response from the channel's answer. Headers a Response refuses (a
   *  Set-Cookie, a value with a newline) are left out, not fatal. */
  function toResponse(r) {
    if (r.status < 200 || r.status > 599) {
      throw new RelayError(`the device answered with status ${r.status}`, 'bad_status');
    }
    const headers = new Headers();
    for (const h of r.headers) {
      try { headers.append(h.name, h.value); } catch (e) { /* skip it */ }
    }
    const body = NULL_BODY_STATUS.has(r.status) ? null : r.body;
    if (r.body && !body) r.body.cancel().catch(() => {});
    return new Response(body, { status: r.status, headers });
  }

  // ---------------------------------------------------------------------
  // Relay: the WebSocket, reconnects, re-pairing, relay.fetch()

  const CLOSE_REASONS = {
    1006: 'connection lost',
    1009: 'a message was too big for the gateway',
    4404: 'device offline or share stopped',
    4429: 'too many connections (a per-address or per-share limit)',
    4503: 'the relay is at capacity',
  };

  /**
   * opts: key (CryptoKey), session, url (the WebSocket URL), WebSocket
   * (constructor; defaults to the global), onChange(relay) called on every
   * state or status change, onLog(text).
   *
   * state: connecting | connected | paired | offline | locked
   */
  class Relay {
    constructor(opts) {
      this.url = opts.url;
      this.WebSocket = opts.WebSocket || root.WebSocket;
      this.onChange = opts.onChange || (() => {});
      this.onLog = opts.onLog || (() => {});
      this.helloTimeoutMs = opts.helloTimeoutMs || 10000;
      this.state = 'connecting';
      this.status = 'Connecting…';
      this.pairError = '';
      this.code = null;           // the code the device accepted: re-sent after a reconnect
      this._pendingCode = null;   // a code sent, answer not in yet
      this._pairWaiter = null;
      this._pairedWaiters = [];
      this._ws = null;
      this._attempt = 0;
      this._reconnectTimer = null;
      this._helloTimer = null;
      this._stopped = false;
      this.channel = new Channel({
        key: opts.key,
        session: opts.session,
        send: (frame) => this._sendFrame(frame),
        onEvent: (name, detail) => this._onChannel(name, detail),
        random: opts.random,
        now: opts.now,
      });
    }

    get stats() { return this.channel.stats; }

    _set(state, status) {
      if (this.channel.locked) state = 'locked';
      this.state = state;
      if (status !== undefined) this.status = status;
      this.onChange(this);
    }

    connect() {
      this._stopped = false;
      clearTimeout(this._reconnectTimer);
      let ws;
      try {
        ws = new this.WebSocket(this.url);
      } catch (e) {
        this._set('offline', `Cannot open the relay connection: ${e.message}`);
        return;
      }
      ws.binaryType = 'arraybuffer';
      this._ws = ws;
      ws.onopen = () => {
        if (ws !== this._ws) return;
        this._set(this.state, 'Connected to the gateway, reaching the device…');
        this._handshake();
      };
      ws.onmessage = (ev) => {
        if (ws !== this._ws) return;
        if (typeof ev.data === 'string') this._onGatewayText(ev.data);
        else this.channel.receive(new Uint8Array(ev.data));
      };
      ws.onclose = (ev) => {
        if (ws !== this._ws) return;
        this._ws = null;
        this._onDisconnect(ev.code, ev.reason);
      };
      ws.onerror = () => { /* onclose follows and says why */ };
    }

    /** Stops for good (no reconnect). */
    close() {
      this._stopped = true;
      clearTimeout(this._reconnectTimer);
      clearTimeout(this._helloTimer);
      if (this._ws) {
        const ws = this._ws;
        this._ws = null;
        ws.close(1000);
      }
      this.channel.stop(new RelayError('closed', 'disconnected'));
    }

    _sendFrame(frame) {
      const ws = this._ws;
      if (ws && ws.readyState === 1) ws.send(frame);
    }

    _handshake() {
      this.channel.start();
      clearTimeout(this._helloTimer);
      // An answer that never comes (the agent not there yet, a frame lost
      // with a restarting agent): try again with a new C.
      this._helloTimer = setTimeout(() => {
        if (this._ws && this.channel.state === 'hello') this._handshake();
      }, this.helloTimeoutMs);
    }

    _onGatewayText(text) {
      let msg;
      try { msg = JSON.parse(text); } catch (e) { return; }
      if (!msg || typeof msg !== 'object') return;
      if (msg.type === 'STATUS' && msg.status === 'HOST_CONNECTED') {
        this._set(this.state === 'paired' ? 'connecting' : this.state, 'The device is online, reconnecting…');
        this._handshake();
      } else if (msg.type === 'STATUS' && msg.status === 'HOST_DISCONNECTED') {
        clearTimeout(this._helloTimer);
        this.channel.stop(new RelayError('the device went offline', 'disconnected'));
        this._set('offline', 'The device is offline; waiting for it to come back…');
        this.onLog('device offline');
      } else if (msg.type === 'ERROR') {
        const text2 = `Gateway: ${msg.message || msg.code || 'error'}`;
        this._set(this.state, text2);
        this.onLog(text2);
      }
    }

    _onDisconnect(code, reason) {
      clearTimeout(this._helloTimer);
      this.channel.stop(new RelayError('the connection to the relay was lost', 'disconnected'));
      if (this._stopped) return;
      if (this.channel.locked) {
        // Nothing to come back for: only a restart of the share on the
        // device unlocks it, and that makes a new link.
        this._set('locked', 'This share is locked after too many wrong codes. Restart the share on the device.');
        return;
      }
      // Capped, jittered exponential backoff: 0.5 s doubling to 10 s, each
      // wait drawn from its upper half so that clients the same gateway
      // dropped at once do not come back at once.
      const cap = Math.min(10000, 500 * Math.pow(2, this._attempt));
      const delay = Math.round(cap / 2 + Math.random() * cap / 2);
      this._attempt++;
      const why = CLOSE_REASONS[code] || (reason ? reason : `closed (${code})`);
      this._set(this.channel.locked ? 'locked' : 'offline',
        `${why[0].toUpperCase()}${why.slice(1)}, retrying in ${(delay / 1000).toFixed(1)} s…`);
      this.onLog(`relay connection closed: ${code}${reason ? ` ${reason}` : ''}`);
      this._reconnectTimer = setTimeout(() => this.connect(), delay);
    }

    _onChannel(name, detail) {
      switch (name) {
        case 'open':
          clearTimeout(this._helloTimer);
          this._attempt = 0;
          if (detail.locked) {
            this._set('locked', 'This share is locked after too many wrong codes. Restart the share on the device.');
          } else if (this.code) {
            this._sendPair(this.code);
            this._set('connected', 'Connected, pairing again…');
          } else {
            this._set('connected', 'Connected to the device. Enter the code shown on its terminal.');
          }
          break;
        case 'paired': {
          this.code = this._pendingCode;
          this._pendingCode = null;
          this.pairError = '';
          this._set('paired', 'Paired: end-to-end encrypted.');
          const w = this._pairWaiter;
          this._pairWaiter = null;
          if (w) w.resolve();
          for (const p of this._pairedWaiters.splice(0)) p.resolve();
          break;
        }
        case 'pair_error':
          this._pairFailed(new RelayError(
            detail.attemptsLeft !== null && detail.attemptsLeft !== undefined
              ? `Wrong code. ${detail.attemptsLeft} attempt${detail.attemptsLeft === 1 ? '' : 's'} left.`
              : 'Wrong code.', 'bad_code'));
          this._set('connected', 'Connected to the device. Enter the code shown on its terminal.');
          break;
        case 'locked':
          this._pairFailed(new RelayError('Locked: too many wrong codes. Restart the share on the device.', 'locked'));
          this._set('locked', 'This share is locked after too many wrong codes. Restart the share on the device.');
          break;
        case 'not_paired':
          if (this.code && !this._pendingCode) {
            this._sendPair(this.code);
          } else if (!this._pendingCode) {
            this._set('connected', 'Connected to the device. Enter the code shown on its terminal.');
          }
          break;
        case 'error':
          this.onLog(`device: ${detail.code}${detail.message ? `: ${detail.message}` : ''}`);
          break;
        default:
          break;
      }
    }

    _pairFailed(err) {
      this.code = null;           // a code the device refused is not tried again
      this._pendingCode = null;
      this.pairError = err.message;
      const w = this._pairWaiter;
      this._pairWaiter = null;
      if (w) w.reject(err);
      for (const p of this._pairedWaiters.splice(0)) p.reject(err);
    }

    _sendPair(code) {
      this._pendingCode = code;
      this.channel.pair(code);
    }

    /** Sends the code; resolves on PAIR_OK, rejects with a RelayError
     *  ("bad_code", "locked", "disconnected", "format"). */
    pair(code) {
      code = String(code).replace(/\s+/g, '');
      if (!/^[0-9]{6}$/.test(code)) return Promise.reject(new RelayError('The code is 6 digits.', 'format'));
      if (this.channel.locked) return Promise.reject(new RelayError('This share is locked.', 'locked'));
      if (this.channel.state !== 'open') {
        return Promise.reject(new RelayError('Not connected to the device yet.', 'disconnected'));
      }
      if (this._pairWaiter) return Promise.reject(new RelayError('A code is already being checked.', 'busy'));
      const d = deferred();
      this._pairWaiter = d;
      this.pairError = '';
      this._sendPair(code);
      return d.promise;
    }

    /** Waits for pairing: at once if paired; up to `ms` while a reconnect
     *  re-pairs with a code already accepted; not at all before the user
     *  has ever paired. */
    whenPaired(ms) {
      if (this.channel.paired && this.channel.state === 'open') return Promise.resolve();
      if (this.channel.locked) return Promise.reject(new RelayError('This share is locked.', 'locked'));
      if (!this.code || this._stopped) return Promise.reject(new RelayError('Not paired with the device.', 'not_paired'));
      const d = deferred();
      this._pairedWaiters.push(d);
      const t = setTimeout(() => {
        const i = this._pairedWaiters.indexOf(d);
        if (i >= 0) this._pairedWaiters.splice(i, 1);
        d.reject(new RelayError('The device is not reachable right now.', 'disconnected'));
      }, ms);
      return d.promise.finally(() => clearTimeout(t));
    }

    /**
     * The device's answer as {status, headers: [{name, value}], body}
     * (headers as sent, Set-Cookie included). init: {method, headers,
     * body, signal}.
     */
    async request(path, init) {
      init = init || {};
      if (typeof path !== 'string' || path[0] !== '/') throw new TypeError('path must start with "/"');
      const method = String(init.method || 'GET').toUpperCase();
      const headers = headerList(init.headers)
        .filter((h) => !REQUEST_HEADERS_NOT_FORWARDED.has(h.name.toLowerCase()));
      const body = method === 'GET' || method === 'HEAD' ? { bytes: null } : await prepareBody(init.body);
      if (body.type && !hasHeader(headers, 'content-type')) headers.push({ name: 'Content-Type', value: body.type });
      // Decision: a body of known length goes with its Content-Length, which
      // the agent gives the local service; a streamed one goes without,
      // and the agent sends it chunked.
      if (body.bytes && body.bytes.length) headers.push({ name: 'Content-Length', value: String(body.bytes.length) });
      await this.whenPaired(15000);
      return this.channel.request({
        method, path, headers, body: body.stream || body.bytes, signal: init.signal,
      });
    }

    /** fetch() for the device: a real Response, its body pulled through the
     *  relay as it is read. */
    async fetch(path, init) {
      return toResponse(await this.request(path, init));
    }
  }

  // ---------------------------------------------------------------------
  // CookieJar: the device's cookies, in this page's memory only. A Service
  // Worker never sees a Cookie or Set-Cookie header, so without this no
  // login on the device would survive the next request.

  class CookieJar {
    constructor(now) {
      this._now = now || Date.now;
      this._cookies = new Map();  // "name\npath" -> {name, value, path, expires}
    }

    /** One Set-Cookie value, received for request path `path`.
     *  Domain, Secure, SameSite and HttpOnly do not apply: there is one
     *  host, reached only through this page. */
    store(header, path) {
      const parts = String(header).split(';');
      const nv = parts.shift();
      const eq = nv.indexOf('=');
      if (eq < 0) return;
      const name = nv.slice(0, eq).trim();
      const value = nv.slice(eq + 1).trim();
      if (!name || name.length + value.length > 4096) return;
      let cookiePath = null;
      let expires = Infinity;
      let maxAgeSeen = false;
      for (const attr of parts) {
        const i = attr.indexOf('=');
        const k = (i < 0 ? attr : attr.slice(0, i)).trim().toLowerCase();
        const v = i < 0 ? '' : attr.slice(i + 1).trim();
        if (k === 'path' && v[0] === '/') cookiePath = v;
        else if (k === 'max-age' && /^-?[0-9]+$/.test(v)) {
          maxAgeSeen = true;
          expires = this._now() + Number(v) * 1000;
        } else if (k === 'expires' && !maxAgeSeen) {
          const t = Date.parse(v);
          if (!Number.isNaN(t)) expires = t;
        }
      }
      if (cookiePath === null) cookiePath = defaultCookiePath(path);
      const key = `${name}\n${cookiePath}`;
      if (expires <= this._now()) {
        this._cookies.delete(key);
        return;
      }
      this._cookies.delete(key);
      this._cookies.set(key, { name, value, path: cookiePath, expires });
      // Oldest first out beyond a browser-like limit.
      while (this._cookies.size > 180) this._cookies.delete(this._cookies.keys().next().value);
    }

    /** The Cookie header value for a request to `path` ("" when none). */
    header(path) {
      const pathname = String(path).split('?')[0];
      const now = this._now();
      const out = [];
      for (const [key, c] of this._cookies) {
        if (c.expires <= now) {
          this._cookies.delete(key);
          continue;
        }
        if (cookiePathMatches(c.path, pathname)) out.push(c);
      }
      out.sort((a, b) => b.path.length - a.path.length);
      return out.map((c) => `${c.name}=${c.value}`).join('; ');
    }
  }

  function defaultCookiePath(requestPath) {
    const p = String(requestPath).split('?')[0];
    const i = p.lastIndexOf('/');
    return i <= 0 ? '/' : p.slice(0, i);
  }

  function cookiePathMatches(cookiePath, pathname) {
    if (pathname === cookiePath) return true;
    if (!pathname.startsWith(cookiePath)) return false;
    return cookiePath.endsWith('/') || pathname[cookiePath.length] === '/';
  }

  // ---------------------------------------------------------------------
  // Service Worker bridge, page side (sw.js is the other side).
  //
  // SW -> page (navigator.serviceWorker message, one MessagePort
  //   transferred): {kind: 'relay-fetch', id, method, path, headers:
  //   [[name, value]], body?: ArrayBuffer, credentials: bool}
  // page -> SW on the port: {kind: 'accepted'} at once, then
  //   {kind: 'head', status, statusText, headers: [[name, value]]} and
  //   {kind: 'chunk', data: ArrayBuffer} (transferred) … {kind: 'end'},
  //   or {kind: 'error', status, message} at any point.
  // SW -> page on the port: {kind: 'pull'} whenever its stream wants one
  //   more chunk (the page sends exactly one chunk, or end/error, per pull),
  //   {kind: 'cancel'} when the browser dropped the response.

  async function serveBridgeFetch(relay, jar, msg, port, log) {
    const controller = new AbortController();
    let pulls = 0;
    let cancelled = false;
    let wake = null;
    port.onmessage = (ev) => {
      const m = ev.data || {};
      if (m.kind === 'pull') pulls++;
      else if (m.kind === 'cancel') {
        cancelled = true;
        controller.abort();
      }
      if (wake) { const w = wake; wake = null; w(); }
    };
    port.postMessage({ kind: 'accepted', id: msg.id });
    let reader = null;
    try {
      const headers = headerList(msg.headers)
        .filter((h) => h.name.toLowerCase() !== 'cookie');
      if (msg.credentials && jar) {
        const cookie = jar.header(msg.path);
        if (cookie) headers.push({ name: 'Cookie', value: cookie });
      }
      const r = await relay.request(msg.path, {
        method: msg.method, headers, body: msg.body, signal: controller.signal,
      });
      const out = [];
      for (const h of r.headers) {
        if (h.name.toLowerCase() === 'set-cookie') {
          if (jar) jar.store(h.value, msg.path);
        } else {
          out.push([h.name, h.value]);
        }
      }
      port.postMessage({ kind: 'head', status: r.status, statusText: '', headers: out });
      if (!r.body) {
        port.postMessage({ kind: 'end' });
        return;
      }
      reader = r.body.getReader();
      for (;;) {
        while (pulls === 0 && !cancelled) await new Promise((resolve) => { wake = resolve; });
        if (cancelled) {
          reader.cancel().catch(() => {});
          return;
        }
        pulls--;
        const { done, value } = await reader.read();
        if (done) {
          port.postMessage({ kind: 'end' });
          return;
        }
        const buf = value.slice().buffer;  // its own buffer, so it can be transferred
        port.postMessage({ kind: 'chunk', data: buf }, [buf]);
      }
    } catch (e) {
      if (reader) reader.cancel().catch(() => {});
      if (!cancelled) {
        const code = e && e.code;
        const status = code === 'not_paired' || code === 'disconnected' || code === 'locked' ? 503 : 502;
        port.postMessage({ kind: 'error', status, message: String((e && e.message) || e) });
        log(`${msg.method} ${msg.path}: ${(e && e.message) || e}`);
      }
    } finally {
      setTimeout(() => port.close(), 0);
    }
  }

  function startBridge(relay, jar, log) {
    const sw = root.navigator && root.navigator.serviceWorker;
    if (!sw) return;
    sw.addEventListener('message', (ev) => {
      const msg = ev.data;
      if (!msg || msg.kind !== 'relay-fetch' || !ev.ports || !ev.ports[0]) return;
      // Only our own origin's workers can post here; still, say no to a
      // message that does not look like ours.
      if (typeof msg.path !== 'string' || msg.path[0] !== '/') return;
      serveBridgeFetch(relay, jar, msg, ev.ports[0], log);
    });
    sw.startMessages();
  }

  // ---------------------------------------------------------------------
  // Page

  /** {session, key, gw} from "#session=…&key=…&gw=…". */
  function parseFragment(hash) {
    const params = new URLSearchParams(String(hash || '').replace(/^#/, ''));
    return { session: params.get('session'), key: params.get('key'), gw: params.get('gw') };
  }

  function relaySocketUrl(loc, session, gw) {
    let u;
    if (gw) {
      u = new URL(gw);
      if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new RelayError('gw must be a ws: or wss: URL', 'format');
    } else {
      u = new URL(`${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/relay/ws`);
    }
    u.searchParams.set('role', 'client');
    u.searchParams.set('session', session);
    return u.toString();
  }

  /** Where this page lives ("/relay/"), and so where its app iframe,
   *  worker and scope are. */
  function pageBase(loc) {
    return loc.pathname.replace(/[^/]*$/, '');
  }

  /** The device path of an app URL ("/relay/app/x?y" -> "/x?y"), or null. */
  function devicePathOf(url, appPrefix) {
    if (url.pathname === appPrefix) return '/' + url.search.replace(/^\?$/, '');
    if (!url.pathname.startsWith(appPrefix + '/')) return null;
    return url.pathname.slice(appPrefix.length) + url.search;
  }

  /** A same-origin URL outside the app prefix, moved under it (the
   *  device's absolute links), or null when it needs no change. */
  function appUrlFor(href, base, origin, appPrefix) {
    let u;
    try { u = new URL(href, base); } catch (e) { return null; }
    if (u.origin !== origin || (u.protocol !== 'http:' && u.protocol !== 'https:')) return null;
    if (u.pathname === appPrefix || u.pathname.startsWith(appPrefix + '/')) return null;
    return appPrefix + u.pathname + u.search + u.hash;
  }

  function startUI(doc, win) {
    const $ = (id) => doc.getElementById(id);
    const app = $('relay-app');

    // First thing, before any await: the key leaves the address bar (and
    // the history entry), so that it is not in a screenshot, a shared
    // screen or the history list.
    const fragment = parseFragment(win.location.hash);
    if (win.location.hash) win.history.replaceState(null, '', win.location.pathname + win.location.search);

    const ui = {
      status: $('status'), pairForm: $('pair-form'), code: $('code'), pairButton: $('pair-button'),
      pairError: $('pair-error'), viewer: $('viewer'), address: $('address'), go: $('go'),
      frame: $('frame'), log: $('log'), stats: $('stats'),
    };
    const setState = (state, text) => {
      app.dataset.state = state;
      if (text !== undefined) ui.status.textContent = text;
    };
    const log = (text) => {
      if (!ui.log) return;
      const li = doc.createElement('li');
      li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
      ui.log.prepend(li);
      while (ui.log.children.length > 50) ui.log.lastElementChild.remove();
    };

    if (!fragment.session || !fragment.key) {
      setState('error', 'This link is incomplete, or the page was reloaded: the key is only in the share ' +
        'link and is removed from the address bar once read. Open the share link again.');
      return;
    }
    if (!/^[A-Za-z0-9_-]{22}$/.test(fragment.session) || !/^[A-Za-z0-9_-]{43}$/.test(fragment.key)) {
      setState('error', 'This share link is damaged (the session or key has the wrong length).');
      return;
    }
    let keyBytes = base64urlDecode(fragment.key);
    fragment.key = null;
    let url;
    try {
      url = relaySocketUrl(win.location, fragment.session, fragment.gw);
    } catch (e) {
      setState('error', e.message);
      return;
    }

    const base = pageBase(win.location);
    const appPrefix = base + 'app';
    const jar = new CookieJar();
    let everPaired = false;
    let relay = null;

    const render = () => {
      const state = relay.state;
      setState(state, relay.status);
      const wantForm = state === 'connected' && !relay.code && !relay._pendingCode;
      ui.pairForm.hidden = !(wantForm || (state === 'connected' && relay._pairWaiter));
      ui.pairButton.disabled = !wantForm;
      ui.code.disabled = !wantForm;
      ui.pairError.textContent = relay.pairError;
      ui.pairError.hidden = !relay.pairError;
      // The viewer stays up through a reconnect (its page is still there);
      // it goes when the code must be entered again.
      ui.viewer.hidden = !everPaired || wantForm || state === 'locked';
      if (ui.stats) {
        const s = relay.stats;
        ui.stats.textContent = `frames ${s.framesSent} out, ${s.framesReceived} in, ${s.dropped} dropped`;
      }
    };

    importKey(keyBytes).then((key) => {
      keyBytes.fill(0);
      keyBytes = null;
      relay = new Relay({ key, session: fragment.session, url, onChange: render, onLog: log });
      win.relay = Object.freeze({
        fetch: (path, init) => relay.fetch(path, init),
        get stats() { return relay.stats; },
        get state() { return relay.state; },
      });
      startBridge(relay, jar, log);
      relay.connect();
      render();
    }, (e) => setState('error', `Cannot use the share key: ${e.message}`));

    // Service Worker: the device's pages load in the iframe under
    // <base>app/ and the worker answers them through this page. It is
    // enough that it controls the iframe: navigations under its scope go
    // to it once it is active, whether or not this page is controlled.
    const swReady = (async () => {
      const sw = win.navigator.serviceWorker;
      if (!sw) throw new Error('this browser has no Service Worker here (it needs HTTPS or localhost, and no private mode restrictions)');
      await sw.register(base + 'sw.js', { scope: base });
      return sw.ready;
    })();
    swReady.catch((e) => log(`Service Worker: ${e.message}`));

    const show = async (path) => {
      path = String(path || '/').trim();
      if (path[0] !== '/') path = '/' + path;
      ui.address.value = path;
      try {
        await swReady;
      } catch (e) {
        ui.status.textContent = `Cannot show the device's pages: ${e.message}`;
        return;
      }
      ui.frame.src = appPrefix + path;
    };

    ui.pairForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (!relay) return;
      const code = ui.code.value;
      relay.pair(code).then(() => {
        ui.code.value = '';
        log('paired');
        if (!everPaired) {
          everPaired = true;
          show(ui.address.value || '/');
        }
        render();
      }, (e) => {
        ui.code.value = '';
        relay.pairError = e.message;
        render();
        if (ui.code.focus) ui.code.focus();
      });
      render();
    });

    ui.viewer.addEventListener('submit', (ev) => {
      ev.preventDefault();
      show(ui.address.value);
    });

    // Device pages often link with absolute paths ("/login"), which leave
    // the app prefix and so the worker's reach. Rewrite them, in capture
    // phase (before the page's own handlers see the event), to
    // <base>app/<path>. Links in script (location.assign, window.open) are
    // not reached by this.
    const hooked = new WeakSet();
    const fixLink = (ev, docOfTarget) => {
      const path = typeof ev.composedPath === 'function' ? ev.composedPath() : [];
      for (const el of path) {
        if (!el || !el.tagName) continue;
        const tag = el.tagName.toUpperCase();
        if ((tag === 'A' || tag === 'AREA') && typeof el.href === 'string' && el.href) {
          const fixed = appUrlFor(el.getAttribute('href'), docOfTarget.baseURI, win.location.origin, appPrefix);
          if (fixed) el.setAttribute('href', fixed);
          return;
        }
      }
    };
    const fixForm = (ev, docOfTarget) => {
      const form = ev.target;
      const submitter = ev.submitter;
      if (submitter && submitter.hasAttribute && submitter.hasAttribute('formaction')) {
        const fixed = appUrlFor(submitter.getAttribute('formaction'), docOfTarget.baseURI, win.location.origin, appPrefix);
        if (fixed) submitter.setAttribute('formaction', fixed);
        return;
      }
      if (form && form.getAttribute && form.hasAttribute('action')) {
        const fixed = appUrlFor(form.getAttribute('action'), docOfTarget.baseURI, win.location.origin, appPrefix);
        if (fixed) form.setAttribute('action', fixed);
      }
    };
    const hook = (frameWindow) => {
      let d;
      try { d = frameWindow.document; } catch (e) { return; }  // navigated cross-origin
      if (!d || hooked.has(d)) return;
      hooked.add(d);
      for (const type of ['click', 'auxclick', 'pointerdown', 'keydown']) {
        d.addEventListener(type, (ev) => fixLink(ev, d), true);
      }
      d.addEventListener('submit', (ev) => fixForm(ev, d), true);
      // Same-origin iframes inside the device's page: hook them too.
      d.addEventListener('load', (ev) => {
        const t = ev.target;
        if (t && t.tagName && t.tagName.toUpperCase() === 'IFRAME') {
          try { hook(t.contentWindow); } catch (e) { /* cross-origin */ }
        }
      }, true);
    };
    // A new document in the viewer is hooked as soon as it exists (a check
    // every 50 ms), not only at its load event, which waits for every image:
    // a quick click before that would leave the share.
    setInterval(() => {
      try { hook(ui.frame.contentWindow); } catch (e) { /* cross-origin */ }
    }, 50);
    ui.frame.addEventListener('load', () => {
      let w;
      try { w = ui.frame.contentWindow; } catch (e) { return; }
      hook(w);
      try {
        const p = devicePathOf(new URL(w.location.href), appPrefix);
        if (p !== null) ui.address.value = p;
      } catch (e) { /* cross-origin */ }
    });
  }

  // ---------------------------------------------------------------------

  const TunnelRelay = {
    VERSION, TYPES, TYPE_NAMES, DIRS, MIN_FRAME, HEADER_BYTES, DROP_REASONS,
    RelayError,
    encodeMessage, decodeMessage, sealFrame, openFrame, importKey, aad,
    encodeData, decodeData,
    Channel, Relay, CookieJar,
    toResponse, prepareBody, headerList, serveBridgeFetch,
    parseFragment, relaySocketUrl, devicePathOf, appUrlFor,
    base64urlEncode, base64urlDecode, toHex, fromHex, bytesEqual, concatBytes,
  };
  root.TunnelRelay = TunnelRelay;
  if (typeof module === 'object' && module && module.exports) module.exports = TunnelRelay;

  if (typeof document !== 'undefined' && document.getElementById && document.getElementById('relay-app')) {
    startUI(document, root);
  }
})(typeof globalThis !== 'undefined' ? globalThis : this);
