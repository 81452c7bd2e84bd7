/*
 * sw.js: the Service Worker of the encrypted relay page (docs/RELAY.md).
 *
 * The device's pages load in an iframe under <scope>app/ ("/relay/app/…").
 * This worker answers those requests, and the requests those pages make,
 * by handing them to the relay page (relay.js), which holds the encrypted
 * channel to the device; the gateway sees only ciphertext.
 *
 * It holds no key and no state worth keeping: the browser may stop it
 * between events, so everything is found again per request.
 *
 * Messages (the page side is serveBridgeFetch() in relay.js):
 *   to the page:  {kind: 'relay-fetch', id, method, path, headers:
 *                 [[name, value]], body?: ArrayBuffer, credentials: bool}
 *                 with a MessagePort; on the port {kind: 'pull'} for each
 *                 chunk wanted, {kind: 'cancel'} when the response is
 *                 dropped.
 *   from the page on the port: {kind: 'accepted'}, then {kind: 'head',
 *                 status, statusText, headers} and {kind: 'chunk', data}
 *                 … {kind: 'end'}, or {kind: 'error', status, message}.
 */
'use strict';

const SCOPE = new URL(self.registration.scope);
const BASE = SCOPE.pathname;                // "/relay/"
const APP = BASE + 'app';                   // "/relay/app"
const ORIGIN = self.location.origin;

// The relay page's own files and the WebSocket: always the network.
const OWN_PATHS = new Set(['', 'index.html', 'relay.js', 'relay.css', 'sw.js', 'ws']
  .map((p) => BASE + p));

// How long a relay page has to say it took a request; a page that is
// still loading answers once its script runs (messages wait for it).
const ACCEPT_TIMEOUT_MS = 10000;

// Response headers of the device that must not reach the browser as if the
// gateway's origin had sent them: framing ones (replaced below), ones that
// act on the whole origin (Clear-Site-Data would wipe the relay page's
// worker and storage, HSTS, Alt-Svc, reporting), hop-by-hop ones, cookies
// (kept by relay.js's CookieJar instead).
const DROPPED_RESPONSE_HEADERS = new Set([
  'x-frame-options', 'clear-site-data', 'service-worker-allowed',
  'strict-transport-security', 'alt-svc', 'public-key-pins',
  'public-key-pins-report-only', 'report-to', 'reporting-endpoints', 'nel',
  'set-cookie', 'set-cookie2', 'connection', 'keep-alive', 'proxy-connection',
  'transfer-encoding', 'upgrade', 'trailer',
]);
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

let nextId = 1;

self.addEventListener('install', (event) => {
  event.waitUntil(self.skipWaiting());
});

self.addEventListener('activate', (event) => {
  // Take the open relay pages (and their iframes) now, not on their next
  // load.
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  let url;
  try {
    url = new URL(req.url);
  } catch (e) {
    return;
  }
  if (url.origin !== ORIGIN) return;          // cross-origin: untouched
  if (OWN_PATHS.has(url.pathname)) return;

  // (a) Under <scope>app/: the device path is the rest.
  const path = devicePath(url);
  if (path !== null) {
    event.respondWith(relay(event, path, sameSiteRequest(req)));
    return;
  }

  // (b) Any other same-origin request made by a device page (its absolute
  // "/style.css"): the path as it is. Navigations are left alone: their
  // clientId says nothing reliable about who started them, and the relay
  // page rewrites the device's links into (a) anyway.
  if (req.mode === 'navigate' || !event.clientId) return;
  event.respondWith((async () => {
    const client = await self.clients.get(event.clientId);
    if (client && isAppUrl(client.url)) return relay(event, url.pathname + url.search, true);
    return fetch(req);
  })());
});

/** "/relay/app/x?y" -> "/x?y", "/relay/app" -> "/", else null. */
function devicePath(url) {
  if (url.pathname === APP) return '/' + url.search;
  if (url.pathname.startsWith(APP + '/')) return url.pathname.slice(APP.length) + url.search;
  return null;
}

function isAppUrl(href) {
  let u;
  try {
    u = new URL(href);
  } catch (e) {
    return false;
  }
  return u.origin === ORIGIN && devicePath(u) !== null;
}

/**
 * Whether the device's cookies go with this request. Subresources come
 * from our own (controlled, same-origin) documents. A navigation may come
 * from anywhere, e.g. another site's link or iframe aimed at
 * /relay/app/…: like a browser with SameSite cookies, send them only when
 * the navigation comes from the relay page or a device page.
 */
function sameSiteRequest(req) {
  if (req.mode !== 'navigate') return true;
  try {
    const r = new URL(req.referrer);
    return r.origin === ORIGIN && r.pathname.startsWith(BASE);
  } catch (e) {
    return false;
  }
}

/** The top-level relay page holding the channel: the most recently focused
 *  one (matchAll's order) when several are open. */
async function findRelayPage() {
  const all = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  for (const c of all) {
    let u;
    try {
      u = new URL(c.url);
    } catch (e) {
      continue;
    }
    if (u.origin !== ORIGIN) continue;
    if (u.pathname !== BASE && u.pathname !== BASE + 'index.html') continue;
    if (c.frameType && c.frameType !== 'top-level') continue;
    return c;
  }
  return null;
}

function textResponse(status, text) {
  return new Response(text + '\n', {
    status,
    headers: {
      'Content-Type': 'text/plain; charset=utf-8',
      'Cache-Control': 'no-store',
      'Content-Security-Policy': "frame-ancestors 'self'",
    },
  });
}

/** The messages of one port, in order, awaited one at a time. */
class Inbox {
  constructor(port) {
    this.port = port;
    this.queue = [];
    this.waiter = null;
    port.onmessage = (ev) => this._push(ev.data || {});
    // Newer browsers tell when the other end (the relay page) is gone.
    port.addEventListener('close', () => this._push({ kind: 'error', message: 'the relay page was closed' }));
  }

  _push(m) {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(m);
    } else {
      this.queue.push(m);
    }
  }

  /** The next message, or null after timeoutMs (if given). */
  next(timeoutMs) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve) => {
      let timer = null;
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      if (timeoutMs) {
        timer = setTimeout(() => {
          this.waiter = null;
          resolve(null);
        }, timeoutMs);
      }
    });
  }
}

async function relay(event, path, credentials) {
  const req = event.request;
  // Keep the worker alive until the body is through, not just until the
  // headers are.
  let finish;
  const lifetime = new Promise((resolve) => { finish = resolve; });
  try {
    event.waitUntil(lifetime);
  } catch (e) {
    finish = () => {};
  }
  let port = null;
  try {
    const page = await findRelayPage();
    if (!page) {
      finish();
      return textResponse(503, 'No relay page is open. Open the share link, pair with the code, and ' +
        "the device's pages show there.");
    }
    const body = req.method === 'GET' || req.method === 'HEAD' ? null : await req.arrayBuffer();
    const headers = [];
    req.headers.forEach((value, name) => headers.push([name, value]));
    const channel = new MessageChannel();
    port = channel.port1;
    const inbox = new Inbox(port);
    const msg = { kind: 'relay-fetch', id: nextId++, method: req.method, path, headers, credentials };
    const transfer = [channel.port2];
    if (body && body.byteLength) {
      msg.body = body;
      transfer.push(body);
    }
    page.postMessage(msg, transfer);
    if (req.signal) req.signal.addEventListener('abort', () => port.postMessage({ kind: 'cancel' }));

    const accepted = await inbox.next(ACCEPT_TIMEOUT_MS);
    if (!accepted) {
      port.close();
      finish();
      return textResponse(503, 'The relay page did not answer. Is it still open?');
    }
    const head = accepted.kind === 'accepted' ? await inbox.next() : accepted;
    if (head.kind === 'error') {
      port.close();
      finish();
      return textResponse(head.status || 502, `Through the relay: ${head.message || 'failed'}`);
    }
    if (head.kind !== 'head') throw new Error(`unexpected ${head.kind}`);
    return buildResponse(req, head, inbox, finish);
  } catch (e) {
    if (port) {
      port.postMessage({ kind: 'cancel' });
      port.close();
    }
    finish();
    return textResponse(502, `Through the relay: ${e && e.message}`);
  }
}

function buildResponse(req, head, inbox, finish) {
  const port = inbox.port;
  const status = head.status;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    port.postMessage({ kind: 'cancel' });
    port.close();
    finish();
    return textResponse(502, `The device answered with status ${status}, which cannot be shown here.`);
  }
  const headers = new Headers();
  let encoding = '';
  for (const [name, rawValue] of head.headers || []) {
    const lower = String(name).toLowerCase();
    let value = String(rawValue);
    if (DROPPED_RESPONSE_HEADERS.has(lower)) continue;
    if (lower === 'content-encoding') {
      encoding = value.trim().toLowerCase();
    }
    if (lower === 'content-security-policy' || lower === 'content-security-policy-report-only') {
      value = withoutFrameAncestors(value);
      if (!value) continue;
    }
    if (lower === 'location' || lower === 'content-location') value = appLocation(value);
    try {
      headers.append(name, value);
    } catch (e) {
      // A name or value a Response refuses: leave that one out.
    }
  }
  // Only the relay page may frame the device's pages: another site framing
  // /relay/app/… must not get them rendered under the gateway's origin.
  headers.append('Content-Security-Policy', "frame-ancestors 'self'");
  headers.set('X-Frame-Options', 'SAMEORIGIN');

  if (NULL_BODY_STATUS.has(status) || req.method === 'HEAD') {
    port.postMessage({ kind: 'cancel' });
    port.close();
    finish();
    return new Response(null, { status, statusText: head.statusText || '', headers });
  }
  let body = portStream(inbox, finish);
  // A Response made here is handed over as it is: the browser decodes no
  // Content-Encoding. The agent asks the local service for identity; in
  // case it answered compressed anyway, decode what the browser can.
  if ((encoding === 'gzip' || encoding === 'x-gzip' || encoding === 'deflate') &&
      typeof DecompressionStream === 'function') {
    body = body.pipeThrough(new DecompressionStream(encoding === 'deflate' ? 'deflate' : 'gzip'));
    headers.delete('content-encoding');
    headers.delete('content-length');
  }
  return new Response(body, { status, statusText: head.statusText || '', headers });
}

/** The body, one chunk per pull: the page reads the relay stream only as
 *  fast as the browser reads this one (and credit to the device follows). */
function portStream(inbox, finish) {
  const port = inbox.port;
  const end = () => {
    port.close();
    finish();
  };
  return new ReadableStream({
    async pull(controller) {
      port.postMessage({ kind: 'pull' });
      const m = await inbox.next();
      if (m.kind === 'chunk') {
        controller.enqueue(new Uint8Array(m.data));
      } else if (m.kind === 'end') {
        controller.close();
        end();
      } else {
        // Never a short body taken as whole: the browser sees a failed load.
        controller.error(new TypeError(`relay: ${m.message || 'the response was cut'}`));
        end();
      }
    },
    cancel() {
      port.postMessage({ kind: 'cancel' });
      end();
    },
  }, { highWaterMark: 1 });
}

/** Strips frame-ancestors directives from a CSP value (replaced by ours). */
function withoutFrameAncestors(value) {
  return value.split(',')
    .map((policy) => policy.split(';')
      .filter((d) => d.trim() && d.trim().split(/\s+/)[0].toLowerCase() !== 'frame-ancestors')
      .join(';').trim())
    .filter(Boolean)
    .join(', ');
}

/** A redirect to the device's absolute path "/x" goes to <scope>app/x, so
 *  that it stays with the relay. Relative targets resolve against the
 *  request's URL (already under APP for a page); absolute URLs are left as
 *  they are (the agent turns its local service's own origin into a path). */
function appLocation(value) {
  if (value.startsWith('/') && !value.startsWith('//')) return APP + value;
  return value;
}
