// The request inspector's page (see inspect_page.h). Plain HTML, script and
// style: no build step, no framework, nothing fetched from elsewhere.
#include "agent/inspect_page.h"

namespace tunnel::agent {

const char kInspectPageHtml[] = R"inspect(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agent-tunnel inspector</title>
<link rel="stylesheet" href="/inspect.css">
</head>
<body>
<header>
  <h1>agent-tunnel inspector</h1>
  <span id="summary"></span>
  <span id="live" class="live off">connecting…</span>
</header>
<div id="filters">
  <select id="f-status" aria-label="status">
    <option value="">any status</option>
    <option value="2xx">2xx</option>
    <option value="3xx">3xx</option>
    <option value="4xx">4xx</option>
    <option value="5xx">5xx</option>
    <option value="error">errors</option>
  </select>
  <select id="f-method" aria-label="method">
    <option value="">any method</option>
    <option>GET</option><option>POST</option><option>PUT</option>
    <option>PATCH</option><option>DELETE</option><option>HEAD</option>
    <option>OPTIONS</option>
  </select>
  <input id="f-path" type="search" placeholder="path contains…" aria-label="path">
</div>
<main>
  <section id="list">
    <table>
      <thead><tr><th>time</th><th>tunnel</th><th>method</th><th>path</th>
        <th>status</th><th>duration</th><th>in</th><th>out</th></tr></thead>
      <tbody id="rows"></tbody>
    </table>
    <p id="empty">No requests yet: they appear here as they arrive.</p>
  </section>
  <section id="detail" hidden></section>
</main>
<script src="/inspect.js"></script>
</body>
</html>
)inspect";

const char kInspectPageCss[] = R"inspect(* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1d1f21; background: #f6f7f9; }
header { display: flex; gap: 1em; align-items: baseline; padding: .6em 1em; background: #22303c; color: #fff; }
header h1 { font-size: 1.1em; margin: 0; }
#summary { opacity: .8; }
.live { margin-left: auto; font-size: .9em; }
.live.on::before { content: "● "; color: #4caf50; }
.live.off::before { content: "● "; color: #e0a030; }
#filters { display: flex; gap: .5em; padding: .5em 1em; background: #e9ecef; }
#filters input { flex: 1; max-width: 30em; }
main { display: flex; gap: 1em; padding: 1em; align-items: flex-start; }
#list { flex: 1 1 55%; min-width: 0; background: #fff; border: 1px solid #d0d4d9; }
#detail { flex: 1 1 45%; min-width: 0; background: #fff; border: 1px solid #d0d4d9; padding: .5em 1em 1em; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #eceef1; white-space: nowrap; }
td.path { max-width: 28em; overflow: hidden; text-overflow: ellipsis; }
tr.row { cursor: pointer; }
tr.row:hover { background: #f0f4f8; }
tr.row.selected { background: #dbe9f7; }
tr.replay td.path::before { content: "↻ "; color: #6a5acd; }
.status.s2 { color: #2e7d32; } .status.s3 { color: #1565c0; }
.status.s4 { color: #b26a00; } .status.s5, .status.serr { color: #c62828; font-weight: bold; }
.status.sflight { color: #777; }
#empty { padding: 1em; color: #666; }
#detail h2 { font-size: 1.1em; word-break: break-all; }
#detail h3 { font-size: 1em; margin: 1.2em 0 .3em; border-bottom: 1px solid #eceef1; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; margin: 0; }
.meta dt { color: #666; } .meta dd { margin: 0; word-break: break-all; }
.headers td { white-space: normal; word-break: break-all; vertical-align: top; }
.headers td:first-child { color: #555; white-space: nowrap; }
pre.body { background: #f6f8fa; padding: .5em; overflow: auto; max-height: 30em; margin: 0; white-space: pre-wrap; word-break: break-all; }
.body-notes { color: #666; font-size: .9em; margin: .3em 0; }
.none { color: #888; }
.error { color: #c62828; }
button { margin-right: .5em; }
#edit-form label { display: block; margin-top: .5em; color: #555; }
#edit-form input, #edit-form textarea { width: 100%; font: 13px monospace; }
#edit-form textarea { min-height: 6em; }
)inspect";

const char kInspectPageJs[] = R"inspect('use strict';
// The inspector page: the list from /api/requests, kept current by the
// Server-Sent Events of /api/events; a request's detail from
// /api/requests/ID; replays through POST /api/requests/ID/replay.
const $ = (id) => document.getElementById(id);
const rows = new Map();  // id (string) -> summary
let selected = null;
let shownInFlight = false;  // the detail shows the selected one in flight
let maxRows = 500;
let events = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}

function fmtBytes(n) {
  n = Number(n);
  if (n < 1024) return n + ' B';
  if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
  return (n / 1048576).toFixed(1) + ' MiB';
}

function fmtMs(ms) {
  return ms < 1000 ? ms.toFixed(1) + ' ms' : (ms / 1000).toFixed(2) + ' s';
}

function statusText(r) {
  if (r.status) return String(r.status);
  if (r.outcome === 'in_flight') return '…';
  return r.outcome === 'cancelled' ? 'cancelled' : 'error';
}

function statusClass(r) {
  if (!r.status) return r.outcome === 'in_flight' ? 'sflight' : 'serr';
  return 's' + Math.floor(r.status / 100);
}

function matches(r) {
  const st = $('f-status').value;
  const m = $('f-method').value;
  const p = $('f-path').value;
  if (st === 'error') {
    if (r.status && r.status < 500) return false;
  } else if (st && Math.floor(r.status / 100) !== Number(st[0])) {
    return false;
  }
  if (m && r.method !== m) return false;
  if (p && !r.path.includes(p)) return false;
  return true;
}

function rowFor(r) {
  const tr = el('tr', {'data-id': r.id, class: 'row'},
      el('td', {}, new Date(r.time).toLocaleTimeString()),
      el('td', {}, r.tunnel),
      el('td', {class: 'method'}, r.method),
      el('td', {class: 'path', title: r.path}, r.path),
      el('td', {class: 'status ' + statusClass(r)}, statusText(r)),
      el('td', {}, fmtMs(r.duration_ms)),
      el('td', {}, fmtBytes(r.bytes_in)),
      el('td', {}, fmtBytes(r.bytes_out)));
  if (r.replay_of !== '0') tr.classList.add('replay');
  if (r.upgrade) tr.classList.add('upgrade');
  if (r.outcome) tr.setAttribute('data-outcome', r.outcome);
  if (r.id === selected) tr.classList.add('selected');
  tr.addEventListener('click', () => select(r.id));
  return tr;
}

function render() {
  const list = [...rows.values()]
      .sort((a, b) => Number(b.id) - Number(a.id))
      .filter(matches);
  $('rows').replaceChildren(...list.map(rowFor));
  $('empty').hidden = rows.size > 0;
}

function keep(r) {
  rows.set(r.id, r);
  if (rows.size > maxRows) {
    const ids = [...rows.keys()].sort((a, b) => Number(a) - Number(b));
    for (const id of ids.slice(0, rows.size - maxRows)) rows.delete(id);
  }
}

function showStatus(s) {
  maxRows = Number(s.max_requests) || maxRows;
  $('summary').textContent = s.requests + ' of ' + s.max_requests +
      ' requests held, memory ' +
      fmtBytes(Number(s.body_bytes) + Number(s.head_bytes)) + ' of ' +
      fmtBytes(s.max_memory) + ' (bodies ' + fmtBytes(s.body_bytes) +
      ', heads ' + fmtBytes(s.head_bytes) + ')' +
      (s.show_secrets ? ' · secrets shown' : '');
}

async function connect() {
  if (events) events.close();
  let seq = '0';
  try {
    const res = await fetch('/api/requests');
    const list = await res.json();
    rows.clear();
    for (const r of list.requests) keep(r);
    showStatus(list.status);
    seq = list.status.seq;
    render();
  } catch (e) {
    $('live').textContent = 'agent not reachable; retrying';
    $('live').className = 'live off';
    setTimeout(connect, 2000);
    return;
  }
  events = new EventSource('/api/events?after=' + seq);
  events.onopen = () => {
    $('live').textContent = 'live';
    $('live').className = 'live on';
  };
  events.onmessage = (m) => {
    const r = JSON.parse(m.data);
    keep(r);
    scheduleRender();
    // The detail shown in flight is shown again once it ended (never
    // while an edit form is open in it).
    if (r.id === selected && shownInFlight && r.outcome !== 'in_flight' &&
        !document.getElementById('edit-form')) {
      select(r.id);
    }
  };
  events.onerror = () => {
    // The agent restarted or went away: list again, then follow anew.
    $('live').textContent = 'reconnecting…';
    $('live').className = 'live off';
    events.close();
    setTimeout(connect, 1000);
  };
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
    refreshStatus();
  });
}

let statusPending = false;
async function refreshStatus() {
  if (statusPending) return;
  statusPending = true;
  try {
    showStatus(await (await fetch('/api/status')).json());
  } catch (e) {
    // The next event tries again.
  }
  statusPending = false;
}

function headersTable(list) {
  if (!list || list.length === 0) return el('p', {class: 'none'}, 'no fields');
  return el('table', {class: 'headers'},
      ...list.map((h) => el('tr', {}, el('td', {}, h.name), el('td', {}, h.value))));
}

function bytesOf(b64) {
  const s = atob(b64 || '');
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function hexDump(bytes, max) {
  const lines = [];
  const n = Math.min(bytes.length, max);
  for (let off = 0; off < n; off += 16) {
    const chunk = bytes.subarray(off, Math.min(off + 16, n));
    const hex = [...chunk].map((x) => x.toString(16).padStart(2, '0')).join(' ');
    const text = [...chunk]
        .map((x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : '.'))
        .join('');
    lines.push(off.toString(16).padStart(8, '0') + '  ' + hex.padEnd(48) + ' ' + text);
  }
  if (bytes.length > n) lines.push('… ' + (bytes.length - n) + ' more bytes');
  return lines.join('\n');
}

function bodyView(b, which) {
  if (!b || b.kind === 'empty' || b.kind === '') {
    return el('p', {class: 'none', 'data-body': which}, 'no body');
  }
  const notes = [fmtBytes(b.size)];
  if (b.content_type) notes.push(b.content_type);
  if (b.decompressed) notes.push('decompressed from ' + b.content_encoding);
  if (b.truncated) notes.push('cut: the first ' + fmtBytes(b.captured) + ' kept');
  if (b.decode_error) notes.push(b.decode_error);
  let view;
  if (b.kind === 'json') {
    let text = b.text;
    try {
      text = JSON.stringify(JSON.parse(b.text), null, 2);
    } catch (e) {
      notes.push('not valid JSON (shown as sent)');
    }
    view = el('pre', {class: 'body body-json'}, text);
  } else if (b.kind === 'form') {
    const params = new URLSearchParams(b.text);
    view = el('table', {class: 'headers body-form'},
        ...[...params].map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, v))));
  } else if (b.kind === 'text') {
    view = el('pre', {class: 'body body-text'}, b.text);
  } else {
    view = el('pre', {class: 'body body-hex'}, hexDump(bytesOf(b.data), 4096));
  }
  return el('div', {class: 'body-wrap', 'data-body': which},
      el('p', {class: 'body-notes'}, notes.join(' · ')), view);
}

function meta(r) {
  const items = [
    ['status', statusText(r)],
    ['outcome', r.outcome + (r.error ? ': ' + r.error : '')],
    ['time', new Date(r.time).toLocaleString()],
    ['duration', fmtMs(r.duration_ms)],
    ['tunnel', r.tunnel],
    ['bytes', fmtBytes(r.bytes_in) + ' in, ' + fmtBytes(r.bytes_out) + ' out'],
    ['request id', r.request_id || '—'],
    ['client', r.client_ip || '—'],
  ];
  if (r.replay_of !== '0') items.push(['replay of', '#' + r.replay_of]);
  if (r.upgrade) items.push(['upgrade', 'an upgraded connection: bytes counted, not kept']);
  const dl = el('dl', {class: 'meta'});
  for (const [k, v] of items) dl.append(el('dt', {}, k), el('dd', {'data-field': k}, v));
  return dl;
}

async function select(id) {
  selected = id;
  for (const tr of document.querySelectorAll('tr.row')) {
    tr.classList.toggle('selected', tr.getAttribute('data-id') === id);
  }
  const d = $('detail');
  d.hidden = false;
  const res = await fetch('/api/requests/' + id);
  const r = await res.json();
  if (selected !== id) return;
  if (!res.ok) {
    d.replaceChildren(el('p', {class: 'error'}, r.message));
    return;
  }
  shownInFlight = r.outcome === 'in_flight';
  const replay = el('button', {id: 'replay', type: 'button'}, 'Replay');
  const edit = el('button', {id: 'edit-replay', type: 'button'}, 'Edit and replay');
  replay.addEventListener('click', () => sendReplay(r.id, null));
  edit.addEventListener('click', () => editForm(r));
  if (r.upgrade) replay.disabled = edit.disabled = true;
  d.replaceChildren(
      el('h2', {}, r.method + ' ' + r.path), meta(r),
      el('p', {}, replay, edit, el('span', {id: 'replay-result'})),
      el('h3', {}, 'Request'), headersTable(r.request_headers),
      bodyView(r.request_body, 'request'),
      el('h3', {}, 'Response'), headersTable(r.response_headers),
      bodyView(r.response_body, 'response'));
}

function editForm(r) {
  const b = r.request_body;
  // The body can be shown for editing only when it was kept whole, as text.
  const editable = !b.truncated && (b.kind === 'empty' ||
      ((b.kind === 'json' || b.kind === 'form' || b.kind === 'text') &&
       !b.decompressed));
  const method = el('input', {id: 'edit-method', value: r.method});
  const path = el('input', {id: 'edit-path', value: r.path});
  const headers = el('textarea', {id: 'edit-headers'});
  headers.value = r.request_headers.map((h) => h.name + ': ' + h.value).join('\n');
  const body = el('textarea', {id: 'edit-body'});
  body.value = editable ? (b.text || '') : '';
  const shownBody = body.value;
  const send = el('button', {id: 'replay-send', type: 'button'}, 'Send');
  send.addEventListener('click', () => {
    const edits = {method: method.value, path: path.value, replace_headers: true, headers: []};
    for (const line of headers.value.split('\n')) {
      const i = line.indexOf(':');
      if (line.trim() === '') continue;
      edits.headers.push({name: line.slice(0, i).trim(), value: line.slice(i + 1).trim()});
    }
    // Otherwise the body goes as captured (or the replay is refused when
    // only its first bytes were kept).
    if (editable || body.value !== shownBody) edits.body_text = body.value;
    sendReplay(r.id, edits);
  });
  const note = editable ? '' :
      b.truncated ? 'Only the first bytes of this body were kept: type a body, or the replay is refused.' :
      'This body is binary or compressed: it is sent as captured unless you type one.';
  $('detail').append(el('div', {id: 'edit-form'},
      el('h3', {}, 'Edit and replay'),
      el('label', {}, 'method', method), el('label', {}, 'path', path),
      el('label', {}, 'fields (a value left as <masked: …> is sent as captured)', headers),
      el('label', {}, 'body', body), el('p', {class: 'body-notes'}, note), send));
}

async function sendReplay(id, edits) {
  const out = $('replay-result');
  out.textContent = ' sending…';
  const res = await fetch('/api/requests/' + id + '/replay', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: edits ? JSON.stringify(edits) : '',
  });
  const r = await res.json();
  if (!res.ok) {
    out.textContent = ' ' + r.message;
    out.className = 'error';
    return;
  }
  keep(r);
  render();
  select(r.id);
}

for (const id of ['f-status', 'f-method', 'f-path']) {
  $(id).addEventListener('input', render);
}
connect();
)inspect";

}  // namespace tunnel::agent
