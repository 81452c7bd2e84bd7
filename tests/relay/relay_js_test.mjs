// Tests httpfront/relay_client/relay.js (and sw.js) under Node 18+, without
// npm packages: the wire format against tests/relay/vectors.json (written
// by make_vectors.py), and the client role of docs/RELAY.md by driving a
// Channel (and a Relay, and the Service Worker bridge) in-process. The
// "device" here is a few lines of host logic in this file that seal and
// open frames with the vectors' key; nothing goes over a network.
//
// Usage: node tests/relay/relay_js_test.mjs   (exit status 0: all passed)
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';
import { webcrypto } from 'node:crypto';

// Debian bookworm's Node 18 has WebCrypto in node:crypto, not as a global.
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const require = createRequire(import.meta.url);
const RELAY_JS = new URL('../../httpfront/relay_client/relay.js', import.meta.url);
const SW_JS = new URL('../../httpfront/relay_client/sw.js', import.meta.url);
const T = require(fileURLToPath(RELAY_JS));
const V = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const { TYPES, fromHex, toHex } = T;

let checks = 0;
const failures = [];
function check(what, ok, detail = '') {
  checks++;
  if (!ok) {
    failures.push(what);
    console.error(`FAIL: ${what} ${detail}`);
  }
}
function eq(what, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  check(what, g === w, `\n  got  ${g}\n  want ${w}`);
}
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(what, fn, ms = 3000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (fn()) return true;
    await sleep(5);
  }
  check(`${what} (within ${ms} ms)`, false);
  return false;
}
const utf8 = new TextEncoder();
const text = (b) => new TextDecoder().decode(b);
const json = (o) => utf8.encode(JSON.stringify(o));
const byName = Object.fromEntries(V.frames.map((f) => [f.name, f]));
const vbytes = (name, field = 'frame_hex') => fromHex(byName[name][field]);
const vconn = (name) => fromHex(byName[name].message.conn);
const key = await T.importKey(V.key);
const otherKey = await T.importKey(new Uint8Array(32).fill(7));

// ---------------------------------------------------------------------
// 1. The script loads both ways and exports what it should.

{
  const src = readFileSync(RELAY_JS, 'utf8');
  const ctx = vm.createContext({
    crypto: globalThis.crypto, TextEncoder, TextDecoder, atob, btoa, URL, URLSearchParams,
    Response, Headers, ReadableStream, setTimeout, clearTimeout,
  });
  vm.runInContext(src, ctx, { filename: 'relay.js' });
  check('vm: globalThis.TunnelRelay defined', typeof ctx.TunnelRelay === 'object');
  check('vm: no module.exports needed', typeof ctx.TunnelRelay.encodeMessage === 'function');
  check('require: module.exports', typeof T.Channel === 'function' && typeof T.sealFrame === 'function');
  check('no eval / Function in relay.js', !/\beval\s*\(|new\s+Function\s*\(/.test(src));
  check("relay.js is strict", /'use strict'/.test(src));
  const html = readFileSync(new URL('../../httpfront/relay_client/index.html', import.meta.url), 'utf8');
  check('index.html: the exact script tag',
    html.includes('<script src="relay.js" integrity="{{RELAY_JS_INTEGRITY}}" crossorigin="anonymous" defer></script>'));
  check('index.html: no inline script or style',
    !/<script(?![^>]*\bsrc=)[^>]*>/i.test(html) && !/<style/i.test(html) && !/\sstyle=/i.test(html) &&
    !/\son[a-z]+=/i.test(html));
  for (const id of ['relay-app', 'status', 'pair-form', 'code', 'pair-button', 'pair-error', 'viewer',
    'address', 'go', 'frame']) {
    check(`index.html: #${id}`, html.includes(`id="${id}"`));
  }
}

// ---------------------------------------------------------------------
// 2. Vectors: seal, open, encode, decode.

for (const f of V.frames) {
  const plaintext = fromHex(f.plaintext_hex);
  const sealed = await T.sealFrame(key, V.session, f.dir, plaintext, fromHex(f.iv));
  eq(`seal ${f.name}`, toHex(sealed), f.frame_hex);
  let opened = null;
  try {
    opened = await T.openFrame(key, V.session, f.dir, fromHex(f.frame_hex));
  } catch (e) {
    opened = e;
  }
  eq(`open ${f.name}`, opened instanceof Uint8Array ? toHex(opened) : String(opened), f.plaintext_hex);
  eq(`aad ${f.name}`, text(T.aad(V.session, f.dir)), f.aad);
  const m = f.message;
  const encoded = T.encodeMessage({
    v: m.v, type: m.type, dir: m.dir, seq: m.seq, ts: m.ts, conn: fromHex(m.conn), payload: fromHex(m.payload_hex),
  });
  eq(`encode ${f.name}`, toHex(encoded), f.plaintext_hex);
  const d = T.decodeMessage(plaintext);
  eq(`decode ${f.name}`,
    { v: d.v, type: d.type, dir: d.dir, seq: d.seq, ts: d.ts, conn: toHex(d.conn), payload_hex: toHex(d.payload) },
    { v: m.v, type: m.type, dir: m.dir, seq: m.seq, ts: m.ts, conn: m.conn, payload_hex: m.payload_hex });
  eq(`dir byte ${f.name}`, d.dir, T.DIRS[f.dir]);
  if (m.type === TYPES.DATA) {
    const data = T.decodeData(d.payload);
    check(`DATA decodes ${f.name}`, data && data.stream >= 1 && (data.flags & ~1) === 0);
  } else {
    check(`JSON payload ${f.name}`, (() => { try { JSON.parse(text(d.payload)); return true; } catch (e) { return false; } })());
  }
}
for (const b of V.bad_frames) {
  let err = null;
  try {
    await T.openFrame(key, V.session, b.dir, fromHex(b.frame_hex));
  } catch (e) {
    err = e;
  }
  check(`bad frame refused: ${b.name}`, err instanceof T.RelayError && (err.code === 'auth' || err.code === 'short'),
    String(err));
}
for (const b of V.bad_messages) {
  let opened = null;
  try {
    opened = await T.openFrame(key, V.session, b.dir, fromHex(b.frame_hex));
  } catch (e) {
    opened = null;
  }
  eq(`bad message authenticates: ${b.name}`, opened && toHex(opened), b.plaintext_hex);
}
{
  // A u64 seq survives the round trip; one beyond 2^53 comes back a BigInt.
  const conn = new Uint8Array(16);
  const big = T.decodeMessage(T.encodeMessage({ type: 1, dir: 'c2h', seq: 2n ** 64n - 1n, ts: 0, conn }));
  eq('seq 2^64-1 decodes as BigInt', String(big.seq), String(2n ** 64n - 1n));
  check('seq 2^64-1 is not a Number', typeof big.seq === 'bigint');
  eq('base64url round trip', T.base64urlEncode(T.base64urlDecode(V.key)), V.key);
  let threw = false;
  try { T.base64urlDecode('ab+/'); } catch (e) { threw = true; }
  check('base64url refuses + and /', threw);
}

// ---------------------------------------------------------------------
// The device's side, as far as these tests need it: seals h2c frames and
// opens what the channel sent.

async function seal(type, payload, o) {
  const plaintext = T.encodeMessage({
    v: o.v ?? 1, type, dir: o.dirByte ?? T.DIRS.h2c, seq: o.seq, ts: o.ts ?? Date.now(), conn: o.conn,
    payload: payload instanceof Uint8Array ? payload : json(payload),
  });
  return T.sealFrame(o.key ?? key, o.session ?? V.session, o.sealDir ?? 'h2c', plaintext);
}

async function openSent(frame) {
  const m = T.decodeMessage(await T.openFrame(key, V.session, 'c2h', frame));
  m.plaintext_hex = toHex(await T.openFrame(key, V.session, 'c2h', frame));
  if (m.type === TYPES.DATA) m.data = T.decodeData(m.payload);
  else m.json = JSON.parse(text(m.payload));
  return m;
}

/** A channel wired to an in-process device. */
class Rig {
  constructor(opts = {}) {
    this.out = [];
    this.events = [];
    this.taken = 0;
    this.channel = new T.Channel({
      key, session: V.session, send: (f) => this.out.push(f),
      onEvent: (name, detail) => this.events.push([name, detail]),
      random: opts.random, now: opts.now,
    });
    this.H = crypto.getRandomValues(new Uint8Array(16));
    this.seq = 1;
  }

  /** The messages the channel sent since the last call. */
  async sent() {
    await this.channel.idle();
    const frames = this.out.slice(this.taken);
    this.taken = this.out.length;
    return Promise.all(frames.map(openSent));
  }

  async feed(frame) {
    await this.channel.receive(frame);
    await this.channel.idle();
  }

  /** HELLO -> HELLO_ACK -> PAIR -> PAIR_OK. */
  async open({ window = 65536, maxChunk = 16384, pair = true } = {}) {
    this.channel.start();
    const [hello] = await this.sent();
    await this.feed(await seal(TYPES.HELLO_ACK, {
      host: T.base64urlEncode(this.H), window, maxChunk, paired: false, attemptsLeft: 5, locked: false,
    }, { seq: 0, conn: hello.conn }));
    this.seq = 1;
    if (pair) {
      this.channel.pair('123456');
      await this.sent();
      await this.host(TYPES.PAIR_OK, {});
    }
  }

  /** One in-sequence h2c frame. */
  async host(type, payload, o = {}) {
    await this.feed(await seal(type, payload, { seq: this.seq++, conn: this.H, ...o }));
  }

  dropped(reason) {
    return this.channel.stats.droppedBy[reason];
  }
}

async function readAll(body) {
  const parts = [];
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return T.concatBytes(parts);
    parts.push(value);
  }
}

function settled(promise) {
  const state = { done: false, value: undefined, error: undefined };
  promise.then((v) => { state.done = true; state.value = v; }, (e) => { state.done = true; state.error = e; });
  return state;
}

// ---------------------------------------------------------------------
// 3. Conversation A of the vectors, replayed through a Channel: every
//    frame the channel sends must equal the vector's plaintext byte for
//    byte (C and the clock are fed from the vectors; the IVs are random).

{
  const c2h = V.frames.filter((f) => f.name.startsWith('A ') && f.dir === 'c2h');
  const clock = c2h.map((f) => f.message.ts);
  const rig = new Rig({ random: () => vconn('A HELLO').slice(), now: () => clock.shift() });
  const ch = rig.channel;
  const expect = async (names) => {
    const got = await rig.sent();
    eq(`A: frames sent for ${names.join(', ')}`, got.map((m) => m.plaintext_hex),
      names.map((n) => byName[n].plaintext_hex));
  };
  ch.start();
  await expect(['A HELLO']);
  await rig.feed(vbytes('A HELLO_ACK'));
  eq('A: open after HELLO_ACK', [ch.state, ch.window, ch.maxChunk, ch.attemptsLeft], ['open', 65536, 16384, 5]);
  // The vectors cut the 12-byte body into 7 + 5 and grant 256 bytes of
  // response credit at once; a HELLO_ACK with maxChunk 7 and window 512
  // makes this channel do exactly that.
  ch.maxChunk = 7;
  ch.window = 512;
  ch.pair('481207');
  await expect(['A PAIR']);
  // Authentic frames that break the message rules, before the PAIR_OK:
  // none may count, and the PAIR_OK (seq 1) must still be accepted after.
  for (const b of V.bad_messages) await rig.feed(fromHex(b.frame_hex));
  eq('A: bad messages dropped by reason',
    [rig.dropped('version'), rig.dropped('reserved'), rig.dropped('type'), rig.dropped('dir'), rig.dropped('auth')],
    [1, 1, 1, 1, 2]);
  // (Those for the host's side, sealed as h2c on purpose, are the
  // client's to open; they are dropped for their dir byte instead.)
  const h2cBad = V.bad_frames.filter((b) => b.dir === 'h2c');
  for (const b of h2cBad) await rig.feed(fromHex(b.frame_hex));
  eq('A: bad frames dropped (auth or short)', rig.dropped('auth') + rig.dropped('short'), 2 + h2cBad.length);
  check('A: not paired by any of them', !ch.paired);
  await rig.feed(vbytes('A PAIR_OK'));
  check('A: paired', ch.paired);
  const droppedBefore = ch.stats.dropped;

  const post = settled(ch.request({
    method: 'POST', path: '/upload?name=caf%C3%A9',
    headers: JSON.parse(text(vbytes('A REQUEST POST with body', 'plaintext_hex').subarray(36))).headers,
    body: utf8.encode('hello, world'),
  }));
  await expect(['A REQUEST POST with body', 'A DATA request body', 'A DATA request body end']);
  await rig.feed(vbytes('A WINDOW for the request body'));
  await rig.feed(vbytes('A RESPONSE'));
  await tick();
  check('A: response head', post.done && post.value && post.value.status === 200, String(post.error));
  eq('A: response headers as sent', post.value.headers.map((h) => h.name),
    ['Content-Type', 'Set-Cookie', 'X-Note']);
  await rig.feed(vbytes('A DATA binary response body'));
  const reader = post.value.body.getReader();
  const first = await reader.read();
  eq('A: binary body', toHex(first.value), toHex(Uint8Array.from({ length: 256 }, (_, i) => i)));
  await expect(['A WINDOW for the response body']);
  await rig.feed(vbytes('A DATA response end (empty)'));
  check('A: body ends', (await reader.read()).done === true);
  check('A: stream 1 finished', !ch.streams.has(1));

  const abort = new AbortController();
  const get = settled(ch.request({ method: 'GET', path: '/', headers: [{ name: 'Accept', value: 'text/html' }],
    signal: abort.signal }));
  await expect(['A REQUEST GET']);
  abort.abort();
  await expect(['A CLOSE cancelled']);
  await tick();
  check('A: aborted request rejects', get.done && get.error !== undefined);

  const down = settled(ch.request({ method: 'GET', path: '/down', headers: [] }));
  await expect(['A REQUEST GET unreachable']);
  await rig.feed(vbytes('A CLOSE local_unreachable'));
  await tick();
  check('A: CLOSE from the device rejects', down.error && down.error.code === 'local_unreachable' &&
    /connection refused/.test(down.error.message), String(down.error));
  eq('A: nothing dropped in the conversation itself', ch.stats.dropped, droppedBefore);
  eq('A: h2c seq at the end', ch._rxSeq, 6);
}

// 4. Conversation B: a wrong code, then locked; not_paired.
{
  const c2h = V.frames.filter((f) => f.name.startsWith('B ') && f.dir === 'c2h');
  const clock = c2h.map((f) => f.message.ts);
  const rig = new Rig({ random: () => vconn('B HELLO').slice(), now: () => clock.shift() });
  const ch = rig.channel;
  ch.start();
  eq('B: HELLO', (await rig.sent()).map((m) => m.plaintext_hex), [byName['B HELLO'].plaintext_hex]);
  await rig.feed(vbytes('B HELLO_ACK'));
  ch.pair('000000');
  eq('B: PAIR', (await rig.sent()).map((m) => m.plaintext_hex), [byName['B PAIR wrong code'].plaintext_hex]);
  await rig.feed(vbytes('B ERROR bad_code'));
  eq('B: pair_error event', rig.events.filter((e) => e[0] === 'pair_error').map((e) => e[1]),
    [{ code: 'bad_code', message: 'wrong pairing code', attemptsLeft: 0 }]);
  ch.pair('481207');
  eq('B: PAIR again', (await rig.sent()).map((m) => m.plaintext_hex), [byName['B PAIR after lock'].plaintext_hex]);
  await rig.feed(vbytes('B ERROR locked'));
  check('B: locked', ch.locked && rig.events.some((e) => e[0] === 'locked'));
  let threw = null;
  try { ch.pair('481207'); } catch (e) { threw = e.code; }
  eq('B: no PAIR once locked', threw, 'locked');
  await rig.feed(vbytes('B ERROR not_paired'));
  check('B: not_paired event', rig.events.some((e) => e[0] === 'not_paired'));
  eq('B: nothing dropped', ch.stats.dropped, 0);
  const refused = settled(ch.request({ method: 'GET', path: '/', headers: [] }));
  await tick();
  eq('B: no REQUEST before PAIR_OK', refused.error && refused.error.code, 'not_paired');
}

// ---------------------------------------------------------------------
// 5. The client role drops and counts, and never acts on, what breaks the
//    rules.

{
  // HELLO_ACK with another C; then a frame before any HELLO_ACK.
  const rig = new Rig();
  const ch = rig.channel;
  ch.start();
  const [hello] = await rig.sent();
  eq('HELLO: seq 0, type, dir', [hello.seq, hello.type, hello.dir], [0, TYPES.HELLO, 1]);
  eq('HELLO payload', hello.json, { client: 'relay.js/1' });
  const ack = { host: T.base64urlEncode(rig.H), window: 65536, maxChunk: 16384, paired: false, attemptsLeft: 5, locked: false };
  const otherC = crypto.getRandomValues(new Uint8Array(16));
  await rig.feed(await seal(TYPES.HELLO_ACK, ack, { seq: 0, conn: otherC }));
  eq('HELLO_ACK with another C: dropped (conn), still waiting', [rig.dropped('conn'), ch.state], [1, 'hello']);
  await rig.feed(await seal(TYPES.HELLO_ACK, ack, { seq: 1, conn: hello.conn }));
  eq('HELLO_ACK with seq 1: dropped (seq)', [rig.dropped('seq'), ch.state], [1, 'hello']);
  await rig.feed(await seal(TYPES.PAIR_OK, {}, { seq: 0, conn: hello.conn }));
  eq('PAIR_OK instead of HELLO_ACK: dropped (state)', [rig.dropped('state'), ch.state], [1, 'hello']);
  await rig.feed(await seal(TYPES.HELLO_ACK, { ...ack, host: 'short' }, { seq: 0, conn: hello.conn }));
  eq('HELLO_ACK with a bad host nonce: dropped (payload)', [rig.dropped('payload'), ch.state], [1, 'hello']);
  await rig.feed(await seal(TYPES.HELLO, {}, { seq: 0, conn: hello.conn }));
  eq('HELLO from the host side: dropped (type)', [rig.dropped('type'), ch.state], [1, 'hello']);
  await rig.feed(await seal(TYPES.HELLO_ACK, ack, { seq: 0, conn: hello.conn }));
  eq('HELLO_ACK with our C: open', ch.state, 'open');
  await rig.feed(await seal(TYPES.HELLO_ACK, ack, { seq: 0, conn: hello.conn }));
  eq('a second HELLO_ACK: dropped (conn: it carries C, not H)', [rig.dropped('conn'), ch.state], [2, 'open']);
}

{
  // Wrong conn, replay, skip, direction, tampered tag, key, session: each
  // dropped, each leaving seq where it was, none acted on.
  const rig = new Rig();
  const ch = rig.channel;
  await rig.open();
  check('paired by the rig', ch.paired);
  const pending = settled(ch.request({ method: 'GET', path: '/', headers: [] }));
  await rig.sent();
  const response = { stream: 1, status: 200, headers: [], end: false };
  const seq = rig.seq;   // the next one the channel accepts

  const tries = [
    ['wrong conn', 'conn', { conn: crypto.getRandomValues(new Uint8Array(16)) }],
    ['conn = C', 'conn', { conn: ch._c }],
    ['skipped seq', 'seq', { seq: seq + 1 }],
    ['seq 0 again', 'seq', { seq: 0 }],
    ['dir byte c2h', 'dir', { dirByte: T.DIRS.c2h }],
    ['sealed as c2h (reflected)', 'auth', { sealDir: 'c2h', dirByte: T.DIRS.c2h }],
    ['another key', 'auth', { key: otherKey }],
    ['another session', 'auth', { session: 'AAAAAAAAAAAAAAAAAAAAAA' }],
    ['version 2', 'version', { v: 2 }],
  ];
  for (const [name, reason, o] of tries) {
    const before = rig.dropped(reason);
    await rig.feed(await seal(TYPES.RESPONSE, response, { seq, conn: rig.H, ...o }));
    eq(`${name}: dropped (${reason})`, rig.dropped(reason), before + 1);
    check(`${name}: not acted on`, !pending.done);
  }
  const good = await seal(TYPES.RESPONSE, response, { seq, conn: rig.H });
  const tampered = good.slice();
  tampered[12 + 3] ^= 0x80;
  const auths = rig.dropped('auth');
  await rig.feed(tampered);
  eq('tampered tag: dropped (auth)', rig.dropped('auth'), auths + 1);
  await rig.feed(good.slice(0, 63));
  eq('63 bytes: dropped (short)', rig.dropped('short'), 1);
  check('none of them acted on', !pending.done);

  await rig.feed(good);
  await tick();
  check('the right seq after all that: accepted', pending.done && pending.value.status === 200);
  rig.seq = seq + 1;
  await rig.feed(good);
  eq('the same frame again (replay): dropped (seq)', rig.dropped('seq'), 3);
  const dataFrame = await seal(TYPES.DATA, T.encodeData(1, 0, utf8.encode('abc')), { seq: rig.seq++, conn: rig.H });
  await rig.feed(dataFrame);
  await rig.feed(dataFrame);
  eq('replayed DATA: dropped (seq)', rig.dropped('seq'), 4);
  await rig.host(TYPES.DATA, T.encodeData(1, 1, new Uint8Array(0)));
  eq('DATA delivered once', text(await readAll(pending.value.body)), 'abc');
  eq('stats.dropped is the sum of the reasons', ch.stats.dropped,
    Object.values(ch.stats.droppedBy).reduce((a, b) => a + b, 0));

  // A new handshake: frames of the old connection (old H) are dropped.
  const oldH = rig.H;
  const oldFrame = await seal(TYPES.PAIR_OK, {}, { seq: 1, conn: oldH });
  ch.start();
  const [hello2] = await rig.sent();
  check('new handshake: a new C', !T.bytesEqual(hello2.conn, ch._h || new Uint8Array(0)) && hello2.seq === 0);
  rig.H = crypto.getRandomValues(new Uint8Array(16));
  await rig.feed(await seal(TYPES.HELLO_ACK, {
    host: T.base64urlEncode(rig.H), window: 65536, maxChunk: 16384, paired: false, attemptsLeft: 5, locked: false,
  }, { seq: 0, conn: hello2.conn }));
  check('not paired after a new handshake', ch.state === 'open' && !ch.paired);
  const conns = ch.stats.droppedBy.conn;
  await rig.feed(oldFrame);
  eq('a frame of the old connection: dropped (conn)', ch.stats.droppedBy.conn, conns + 1);
  check('and not acted on', !ch.paired);
}

// ---------------------------------------------------------------------
// 6. Credit both ways.

{
  const rig = new Rig();
  const ch = rig.channel;
  await rig.open({ window: 1000, maxChunk: 300 });
  const body = Uint8Array.from({ length: 2500 }, (_, i) => i & 0xff);
  const pending = settled(ch.request({ method: 'PUT', path: '/big', headers: [], body }));
  let msgs = await rig.sent();
  eq('REQUEST end:false with a body', [msgs[0].type, msgs[0].json.end], [TYPES.REQUEST, false]);
  const sizes = () => msgs.filter((m) => m.type === TYPES.DATA).map((m) => m.data.body.length);
  eq('request body: DATA within maxChunk and the initial window', sizes(), [300, 300, 300, 100]);
  await rig.host(TYPES.WINDOW, { stream: 1, increment: 1000 });
  msgs = await rig.sent();
  eq('after WINDOW 1000: 1000 more', sizes(), [300, 300, 300, 100]);
  await rig.host(TYPES.WINDOW, { stream: 1, increment: 700 });
  msgs = await rig.sent();
  eq('after WINDOW 700: the last 500, with the end flag on the last',
    msgs.map((m) => [m.data.body.length, m.data.flags]), [[300, 0], [200, 1]]);

  await rig.host(TYPES.RESPONSE, { stream: 1, status: 201, headers: [], end: false });
  await tick();
  const reader = pending.value.body.getReader();
  await rig.host(TYPES.DATA, T.encodeData(1, 0, new Uint8Array(400)));
  await rig.host(TYPES.DATA, T.encodeData(1, 0, new Uint8Array(600)));
  eq('no WINDOW while the reader takes nothing', (await rig.sent()).length, 0);
  await reader.read();
  eq('no WINDOW below half a window', (await rig.sent()).length, 0);
  await reader.read();
  msgs = await rig.sent();
  eq('WINDOW for what the reader took', msgs.map((m) => [m.type, m.json]),
    [[TYPES.WINDOW, { stream: 1, increment: 1000 }]]);
  await rig.host(TYPES.DATA, T.encodeData(1, 0, new Uint8Array(1000)));
  eq('a full window more: fine', ch.stats.dropped, 0);
  await rig.host(TYPES.DATA, T.encodeData(1, 0, new Uint8Array(1)));
  msgs = await rig.sent();
  eq('one byte over the credit: CLOSE flow_control', msgs.map((m) => m.json),
    [{ stream: 1, reason: 'flow_control', message: 'the device sent more than its credit' }]);
  const r1 = await reader.read();
  check('the data within credit still reads', r1.value && r1.value.length === 1000);
  let err = null;
  try { await reader.read(); } catch (e) { err = e; }
  eq('then the body fails', err && err.code, 'flow_control');

  // The reader cancels: CLOSE "cancelled".
  const p2 = settled(ch.request({ method: 'GET', path: '/stream', headers: [] }));
  await rig.sent();
  await rig.host(TYPES.RESPONSE, { stream: 2, status: 200, headers: [], end: false });
  await tick();
  await p2.value.body.cancel();
  eq('reader cancel: CLOSE cancelled', (await rig.sent()).map((m) => m.json), [{ stream: 2, reason: 'cancelled' }]);
  await rig.host(TYPES.DATA, T.encodeData(2, 0, utf8.encode('late')));
  eq('DATA crossing our CLOSE: ignored, not dropped', [ch.stats.ignored, ch.stats.dropped], [1, 0]);

  // A streamed request body, and the connection lost in the middle.
  let push;
  const src = new ReadableStream({ start(c) { push = c; } });
  const p3 = settled(ch.request({ method: 'POST', path: '/up', headers: [], body: src }));
  push.enqueue(utf8.encode('part one,'));
  await sleep(5);
  msgs = await rig.sent();
  eq('streamed body: REQUEST then DATA as it comes', msgs.map((m) => m.type === TYPES.DATA ? text(m.data.body) : m.json.end),
    [false, 'part one,']);
  push.enqueue(utf8.encode('two'));
  push.close();
  await sleep(5);
  msgs = await rig.sent();
  eq('streamed body: end as an empty DATA', msgs.map((m) => [text(m.data.body), m.data.flags]), [['two', 0], ['', 1]]);
  ch.stop();
  await tick();
  eq('connection lost: the request fails', p3.error && p3.error.code, 'disconnected');
  const after = settled(ch.request({ method: 'GET', path: '/', headers: [] }));
  await tick();
  eq('and no new one is sent', [after.error && after.error.code, (await rig.sent()).length], ['not_paired', 0]);
}

// ---------------------------------------------------------------------
// 7. Relay: WebSocket, gateway status, close reasons, reconnect and
//    re-pair with the code entered once, relay.fetch().

class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sentFrames = [];
    this.closed = null;
    FakeWebSocket.all.push(this);
  }
  send(data) { this.sentFrames.push(new Uint8Array(data)); if (this.onsend) this.onsend(data); }
  close(code) { this.readyState = 3; this.closed = code; }
  open() { this.readyState = 1; this.onopen(); }
  text(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
  binary(frame) { this.onmessage({ data: frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength) }); }
  drop(code, reason = '') { this.readyState = 3; this.onclose({ code, reason }); }
}

/** A device that answers HELLO, PAIR (code 246810) and REQUEST on its own. */
function autoDevice(ws) {
  const dev = { H: crypto.getRandomValues(new Uint8Array(16)), seq: 1, hellos: 0, pairs: [], requests: [] };
  const reply = async (type, payload, o = {}) => ws.binary(await seal(type, payload, { seq: dev.seq++, conn: dev.H, ...o }));
  ws.onsend = async (frame) => {
    const m = await openSent(new Uint8Array(frame));
    if (m.type === TYPES.HELLO) {
      dev.hellos++;
      dev.H = crypto.getRandomValues(new Uint8Array(16));
      const ack = await seal(TYPES.HELLO_ACK, { host: T.base64urlEncode(dev.H), window: 65536, maxChunk: 16384,
        paired: false, attemptsLeft: 5, locked: false }, { seq: 0, conn: m.conn });
      dev.seq = 1;
      ws.binary(ack);
    } else if (m.type === TYPES.PAIR) {
      dev.pairs.push(m.json.code);
      if (m.json.code === '246810') await reply(TYPES.PAIR_OK, {});
      else await reply(TYPES.ERROR, { code: 'bad_code', message: 'wrong pairing code', attemptsLeft: 4 });
    } else if (m.type === TYPES.REQUEST) {
      dev.requests.push(m.json);
      if (m.json.path === '/hang') return;
      const body = utf8.encode(`you asked for ${m.json.path}`);
      await reply(TYPES.RESPONSE, { stream: m.json.stream, status: 200, end: false, headers: [
        { name: 'Content-Type', value: 'text/plain' }, { name: 'Set-Cookie', value: 'sid=1; Path=/' },
        { name: 'Bad', value: 'line\nbreak' }] });
      await reply(TYPES.DATA, T.encodeData(m.json.stream, 1, body));
    }
  };
  return dev;
}

{
  const states = [];
  const relay = new T.Relay({
    key, session: V.session, url: T.relaySocketUrl({ protocol: 'https:', host: 'gw.example' }, V.session),
    WebSocket: FakeWebSocket, onChange: (r) => states.push(r.state), helloTimeoutMs: 60000,
  });
  eq('socket URL', relay.url, `wss://gw.example/relay/ws?role=client&session=${V.session}`);
  eq('socket URL from gw', T.relaySocketUrl({ protocol: 'https:', host: 'x' }, 'S', 'wss://gw.example:8443/relay/ws'),
    'wss://gw.example:8443/relay/ws?role=client&session=S');
  relay.connect();
  let ws = FakeWebSocket.all.at(-1);
  check('binaryType arraybuffer', ws.binaryType === 'arraybuffer');
  let dev = autoDevice(ws);
  ws.open();
  await until('connected after HELLO_ACK', () => relay.state === 'connected');
  let refused = null;
  await relay.pair('111111').catch((e) => { refused = e; });
  eq('a wrong code: bad_code, 4 left', [refused && refused.code, refused && refused.message],
    ['bad_code', 'Wrong code. 4 attempts left.']);
  eq('wrong code not kept', relay.code, null);
  await relay.pair('246810');
  eq('paired', [relay.state, relay.code], ['paired', '246810']);

  const res = await relay.fetch('/hello?x=1', { method: 'POST', body: 'hi', headers: { 'X-A': 'b', Host: 'evil' } });
  eq('fetch: a real Response', [res instanceof Response, res.status, await res.text()],
    [true, 200, 'you asked for /hello?x=1']);
  eq('fetch: a header a Response refuses is left out', [res.headers.get('content-type'), res.headers.has('bad')],
    ['text/plain', false]);
  eq('fetch: request headers sent (Host dropped, Content-Type and -Length added)',
    dev.requests.at(-1).headers, [{ name: 'X-A', value: 'b' },
      { name: 'Content-Type', value: 'text/plain;charset=UTF-8' }, { name: 'Content-Length', value: '2' }]);

  const hanging = settled(relay.fetch('/hang'));
  await until('hanging request sent', () => dev.requests.at(-1).path === '/hang');
  const hellos = dev.hellos;
  ws.drop(4404);
  await tick();
  eq('4404: offline with the reason', [relay.state, /device offline or share stopped, retrying/i.test(relay.status)],
    ['offline', true]);
  check('in-flight request fails with a clear error', hanging.error && hanging.error.code === 'disconnected' &&
    /lost/.test(hanging.error.message), String(hanging.error));
  await until('reconnects after backoff', () => FakeWebSocket.all.at(-1) !== ws, 2000);
  ws = FakeWebSocket.all.at(-1);
  dev = autoDevice(ws);
  ws.open();
  await until('re-paired on its own with the code entered once', () => relay.state === 'paired');
  eq('re-pair used the kept code', dev.pairs, ['246810']);
  check('a new HELLO for the new socket', dev.hellos === 1 && hellos === 1);

  ws.text({ type: 'STATUS', status: 'HOST_DISCONNECTED' });
  eq('HOST_DISCONNECTED: offline', relay.state, 'offline');
  ws.text({ type: 'STATUS', status: 'HOST_CONNECTED' });
  await until('HOST_CONNECTED: handshake and re-pair', () => relay.state === 'paired');
  eq('HOST_CONNECTED: a second HELLO on the same socket', dev.hellos, 2);
  const again = await relay.fetch('/again');
  eq('fetch after re-pair', await again.text(), 'you asked for /again');

  ws.text({ type: 'ERROR', code: 'limit', message: 'too many clients for this share' });
  check('gateway ERROR shown', /too many clients/.test(relay.status));
  ws.drop(4429);
  check('4429 explained', /too many connections/i.test(relay.status));
  relay.close();
  ws.drop(4503);
  eq('4503 after close: no reconnect', FakeWebSocket.all.at(-1), ws);
  const fresh = new T.Relay({ key, session: V.session, url: 'ws://x/', WebSocket: FakeWebSocket });
  fresh.connect();
  FakeWebSocket.all.at(-1).drop(4503);
  check('4503 explained', /capacity/.test(fresh.status));
  fresh.close();
}

// ---------------------------------------------------------------------
// 8. The Service Worker (sw.js, run in a vm with fake clients) and the
//    page's bridge (serveBridgeFetch) on real MessageChannels, down to a
//    Channel and the in-process device.

{
  const relay = new T.Relay({ key, session: V.session, url: 'ws://gw.example/relay/ws', WebSocket: FakeWebSocket,
    helloTimeoutMs: 60000 });
  relay.connect();
  const ws = FakeWebSocket.all.at(-1);
  const dev = autoDevice(ws);
  ws.open();
  await until('bridge relay connected', () => relay.state === 'connected');
  await relay.pair('246810');
  const jar = new T.CookieJar();

  const handlers = {};
  const pages = [];
  const clientsById = { app1: { url: 'https://gw.example/relay/app/page' },
    top1: { url: 'https://gw.example/relay/' } };
  const self = {
    registration: { scope: 'https://gw.example/relay/' },
    location: { origin: 'https://gw.example' },
    addEventListener: (type, fn) => { handlers[type] = fn; },
    skipWaiting: async () => {},
    clients: {
      claim: async () => {},
      get: async (id) => clientsById[id],
      matchAll: async () => pages,
    },
  };
  const ctx = vm.createContext({
    self, URL, Response, Headers, ReadableStream, MessageChannel, setTimeout, clearTimeout, console,
    DecompressionStream, fetch: async () => new Response('from the network'),
  });
  vm.runInContext(readFileSync(SW_JS, 'utf8'), ctx, { filename: 'sw.js' });
  check('sw: install, activate, fetch handlers', ['install', 'activate', 'fetch'].every((t) => handlers[t]));

  const bridgeLog = [];
  const page = {
    url: 'https://gw.example/relay/', frameType: 'top-level',
    postMessage: (msg, transfer) => {
      pages.lastMessage = msg;
      T.serveBridgeFetch(relay, jar, msg, transfer[0], (t) => bridgeLog.push(t));
    },
  };
  const swFetch = (url, init = {}, extra = {}) => {
    let responded = null;
    const event = {
      request: new Request(url, init), clientId: '', ...extra,
      respondWith: (p) => { responded = Promise.resolve(p); },
      waitUntil: () => {},
    };
    handlers.fetch(event);
    return responded;
  };

  eq('sw: own files not intercepted', ['/relay/', '/relay/index.html', '/relay/relay.js', '/relay/relay.css',
    '/relay/sw.js', '/relay/ws'].map((p) => swFetch(`https://gw.example${p}`)), [null, null, null, null, null, null]);
  eq('sw: cross-origin not intercepted', swFetch('https://elsewhere.example/relay/app/x'), null);
  const none = await swFetch('https://gw.example/relay/app/x');
  eq('sw: no relay page open: 503', [none.status, /No relay page/.test(await none.text())], [503, true]);

  pages.push({ url: 'https://gw.example/relay/app/', frameType: 'nested', postMessage: () => check('not a page', false) });
  pages.push(page);
  const r1 = await swFetch('https://gw.example/relay/app/docs/a%20b?q=1');
  eq('sw (a): /relay/app/x?y -> /x?y', [r1.status, await r1.text()], [200, 'you asked for /docs/a%20b?q=1']);
  eq('sw: framing limited to the relay page', [r1.headers.get('x-frame-options'),
    r1.headers.get('content-security-policy')], ['SAMEORIGIN', "frame-ancestors 'self'"]);
  eq('sw: the cookie went to the jar', jar.header('/'), 'sid=1');
  const r2 = await swFetch('https://gw.example/relay/app');
  eq('sw (a): /relay/app -> /', await r2.text(), 'you asked for /');
  eq('sw: the jar\'s cookie sent with it', dev.requests.at(-1).headers.filter((h) => h.name === 'Cookie'),
    [{ name: 'Cookie', value: 'sid=1' }]);
  const r3 = await swFetch('https://gw.example/style.css', {}, { clientId: 'app1' });
  eq('sw (b): from a device page, the path as is', await r3.text(), 'you asked for /style.css');
  const r4 = await swFetch('https://gw.example/favicon.ico', {}, { clientId: 'top1' });
  eq('sw: from the relay page itself: the network', await r4.text(), 'from the network');
  const r5 = await swFetch('https://gw.example/relay/app/form', { method: 'POST', body: 'a=1',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
  eq('sw: POST body through', [await r5.text(), dev.requests.at(-1).method,
    dev.requests.at(-1).headers.find((h) => h.name.toLowerCase() === 'content-length')],
  ['you asked for /form', 'POST', { name: 'Content-Length', value: '3' }]);
  eq('sw: message to the page', Object.keys(pages.lastMessage).sort(),
    ['body', 'credentials', 'headers', 'id', 'kind', 'method', 'path']);

  // A big body through SW, bridge and channel: pulled, credit granted as
  // the browser reads.
  ws.onsend = (() => {
    const inner = ws.onsend;
    return async (frame) => {
      const m = await openSent(new Uint8Array(frame));
      if (m.type === TYPES.REQUEST && m.json.path === '/big') {
        dev.requests.push(m.json);
        const reply = async (type, payload) => ws.binary(await seal(type, payload, { seq: dev.seq++, conn: dev.H }));
        await reply(TYPES.RESPONSE, { stream: m.json.stream, status: 200, headers: [], end: false });
        dev.bigStream = m.json.stream;
        dev.reply = reply;
        return;
      }
      if (m.type === TYPES.WINDOW) dev.granted = (dev.granted || 0) + m.json.increment;
      if (m.type !== TYPES.REQUEST || m.json.path !== '/big') return inner(frame);
    };
  })();
  const bigP = swFetch('https://gw.example/relay/app/big');
  await until('big: RESPONSE', () => dev.bigStream);
  const chunk = new Uint8Array(16384).fill(0x61);
  for (let i = 0; i < 4; i++) await dev.reply(TYPES.DATA, T.encodeData(dev.bigStream, 0, chunk));
  const big = await bigP;
  await sleep(20);
  check('big: no credit granted before the browser reads', !dev.granted);
  const bigReader = big.body.getReader();
  let got = 0;
  while (got < 65536) got += (await bigReader.read()).value.length;
  await until('big: credit granted as the browser read', () => dev.granted === 65536);
  await dev.reply(TYPES.DATA, T.encodeData(dev.bigStream, 1, chunk));
  while (!(await bigReader.read()).done) { /* drain */ }
  check('big: ends', true);

  // A redirect to the device's absolute path stays under /relay/app.
  ws.onsend = (() => {
    const inner = ws.onsend;
    return async (frame) => {
      const m = await openSent(new Uint8Array(frame));
      if (m.type === TYPES.REQUEST && m.json.path === '/old') {
        await dev.reply(TYPES.RESPONSE, { stream: m.json.stream, status: 302, end: true, headers: [
          { name: 'Location', value: '/login?next=%2F' }, { name: 'Content-Security-Policy',
            value: "default-src 'self'; frame-ancestors 'none'" }, { name: 'Clear-Site-Data', value: '"*"' }] });
        return;
      }
      return inner(frame);
    };
  })();
  const redirect = await swFetch('https://gw.example/relay/app/old', { redirect: 'manual' });
  eq('sw: redirect Location rewritten, framing and origin-wide headers replaced',
    [redirect.status, redirect.headers.get('location'), redirect.headers.get('content-security-policy'),
      redirect.headers.has('clear-site-data')],
    [302, '/relay/app/login?next=%2F', "default-src 'self', frame-ancestors 'self'", false]);

  relay.close();
  await tick();
  const offline = await swFetch('https://gw.example/relay/app/x');
  eq('sw: relay page not paired: 503 with the reason', [offline.status, /Through the relay/.test(await offline.text())],
    [503, true]);
}

// ---------------------------------------------------------------------
// 9. Small pieces: the cookie jar, app URL rewriting.

{
  let now = 1000000;
  const jar = new T.CookieJar(() => now);
  jar.store('a=1', '/x/y');
  jar.store('b=2; Path=/; Max-Age=10', '/x/y');
  jar.store('c=3; Path=/x', '/');
  eq('jar: default path, Path, longest path first then oldest', [jar.header('/x/z'), jar.header('/'), jar.header('/xy')],
    ['a=1; c=3; b=2', 'b=2', 'b=2']);
  now += 11000;
  eq('jar: Max-Age expires', jar.header('/'), '');
  jar.store('c=; Path=/x; Max-Age=0', '/');
  eq('jar: Max-Age=0 deletes', jar.header('/x/z'), 'a=1');
  eq('appUrlFor: absolute path', T.appUrlFor('/login?a=1#f', 'https://gw.example/relay/app/p', 'https://gw.example', '/relay/app'),
    '/relay/app/login?a=1#f');
  eq('appUrlFor: already under the app', T.appUrlFor('x', 'https://gw.example/relay/app/p/', 'https://gw.example', '/relay/app'), null);
  eq('appUrlFor: other origin', T.appUrlFor('https://other.example/', 'https://gw.example/relay/app/', 'https://gw.example', '/relay/app'), null);
  eq('devicePathOf', [T.devicePathOf(new URL('https://g/relay/app/a?b'), '/relay/app'),
    T.devicePathOf(new URL('https://g/relay/app'), '/relay/app'), T.devicePathOf(new URL('https://g/x'), '/relay/app')],
  ['/a?b', '/', null]);
  eq('parseFragment', T.parseFragment('#session=S&key=K&gw=wss%3A%2F%2Fg%2Frelay%2Fws'),
    { session: 'S', key: 'K', gw: 'wss://g/relay/ws' });
}

const summary = `relay_js_test: ${checks - failures.length}/${checks} checks passed` +
  ` (${V.frames.length} frames, ${V.bad_frames.length} bad frames, ${V.bad_messages.length} bad messages)`;
if (failures.length) {
  console.error(`${summary}; FAILED: ${failures.length}`);
  process.exit(1);
}
console.log(summary);
process.exit(0);
