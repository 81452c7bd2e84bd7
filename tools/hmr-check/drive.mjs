// Drives headless Chromium (playwright-core, Debian's /usr/bin/chromium)
// against a Vite dev server reached through the tunnel, edits a source file
// and checks that the page picks up the change as a hot update, not a reload.
// Run by run.sh from the temp app dir (so `playwright-core` resolves there).
//
// Env: PAGE_URL (tunnel subdomain URL), GW_PORT, VITE_PORT, APP_DIR,
// USER_DATA_DIR, OUT_DIR, UPDATE_TIMEOUT_MS (default 15000).
// Writes OUT_DIR/result.json and the two screenshots; exits 0 on PASS.
import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const env = (k, d) => process.env[k] ?? d;
const PAGE_URL = env('PAGE_URL');
const GW_PORT = env('GW_PORT');
const VITE_PORT = env('VITE_PORT');
const APP_DIR = env('APP_DIR');
const OUT_DIR = env('OUT_DIR', APP_DIR);
const USER_DATA_DIR = env('USER_DATA_DIR');
const UPDATE_TIMEOUT_MS = Number(env('UPDATE_TIMEOUT_MS', '15000'));
const EXTRA_ARGS = (env('CHROMIUM_EXTRA_ARGS', '') || '').split(' ').filter(Boolean);

const t0 = Date.now();
const ts = () => `+${((Date.now() - t0) / 1000).toFixed(3)}s`;
const log = (...a) => console.log(`[drive ${ts()}]`, ...a);

const result = {
  pass: false,
  reason: '',
  pageUrl: PAGE_URL,
  browserVersion: null,
  websockets: [],        // {url, opened, closed, error, framesIn, updateFrames}
  navigations: [],       // main-frame navigations (url, at)
  console: [],
  badResponses: [],      // status >= 400
  failedRequests: [],
  requestHosts: {},      // host:port -> count of HTTP requests the page made
  markerSurvived: null,
  reloadAfterEdit: null,
  editToDomMs: null,
  editToUpdateFrameMs: null,
  updatePayload: null,
  textBefore: null,
  textAfter: null,
};

let browserCtx;
function finish(pass, reason) {
  result.pass = pass;
  result.reason = reason;
  writeFileSync(join(OUT_DIR, 'result.json'), JSON.stringify(result, null, 2));
  log(pass ? 'PASS' : 'FAIL', reason);
}

async function main() {
  browserCtx = await chromium.launchPersistentContext(USER_DATA_DIR, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
      '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      ...EXTRA_ARGS,
    ],
    viewport: { width: 900, height: 500 },
    timeout: 60000,
  });
  result.browserVersion = browserCtx.browser()?.version() ?? null;
  const page = browserCtx.pages()[0] ?? (await browserCtx.newPage());
  log('browser', result.browserVersion);

  let editAt = null;
  const wsRecs = [];
  page.on('websocket', (ws) => {
    const rec = { url: ws.url(), openedAt: ts(), closed: null, error: null,
                  framesIn: 0, framesOut: 0, updateFrames: 0, fullReloadFrames: 0 };
    wsRecs.push(rec);
    result.websockets.push(rec);
    log('websocket opened', rec.url);
    ws.on('framereceived', ({ payload }) => {
      rec.framesIn++;
      let msg = null;
      try { msg = JSON.parse(String(payload)); } catch { /* not json */ }
      if (msg && msg.type === 'update') {
        rec.updateFrames++;
        if (editAt !== null && result.editToUpdateFrameMs === null) {
          result.editToUpdateFrameMs = Date.now() - editAt;
          result.updatePayload = msg;
          result.updateSocket = rec.url;
        }
        log('ws update frame on', rec.url, JSON.stringify(msg.updates?.map((u) => u.path)));
      } else if (msg && msg.type === 'full-reload') {
        rec.fullReloadFrames++;
        log('ws full-reload frame on', rec.url);
      } else if (msg) {
        log('ws frame', msg.type, 'on', rec.url);
      }
    });
    ws.on('framesent', () => { rec.framesOut++; });
    ws.on('socketerror', (e) => { rec.error = String(e); log('websocket error', rec.url, e); });
    ws.on('close', () => { rec.closed = ts(); log('websocket closed', rec.url); });
  });
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) {
      result.navigations.push({ url: f.url(), at: ts(), afterEdit: editAt !== null });
      log('main frame navigated', f.url(), editAt !== null ? '(AFTER EDIT)' : '');
    }
  });
  page.on('console', (m) => {
    const where = m.location()?.url;
    const line = `${m.type()}: ${m.text()}${where ? ` [${where}]` : ''}`;
    result.console.push(line);
    log('console', line);
  });
  page.on('request', (r) => {
    try {
      const u = new URL(r.url());
      result.requestHosts[u.host] = (result.requestHosts[u.host] ?? 0) + 1;
    } catch { /* data: etc. */ }
  });
  page.on('response', (r) => {
    if (r.status() >= 400) {
      const h = r.headers();
      const rec = { url: r.url(), status: r.status(), tunnelError: h['x-tunnel-error'] ?? null };
      result.badResponses.push(rec);
      log('bad response', JSON.stringify(rec));
    }
  });
  page.on('requestfailed', (r) => {
    const rec = { url: r.url(), failure: r.failure()?.errorText };
    result.failedRequests.push(rec);
    log('request failed', JSON.stringify(rec));
  });

  log('goto', PAGE_URL);
  const resp = await page.goto(PAGE_URL, { waitUntil: 'load', timeout: 30000 });
  log('document status', resp?.status(), 'x-tunnel-error:', resp?.headers()['x-tunnel-error'] ?? '-');
  const msg = page.locator('#msg');
  try {
    await msg.filter({ hasText: 'version 1' }).waitFor({ timeout: 20000 });
  } catch (e) {
    await page.screenshot({ path: join(OUT_DIR, 'hmr-before.png') }).catch(() => {});
    result.textBefore = await page.locator('body').innerText().catch(() => null);
    return finish(false, `page never showed "version 1" (body: ${JSON.stringify(result.textBefore)})`);
  }
  result.textBefore = await msg.innerText();
  log('page shows', JSON.stringify(result.textBefore));

  // The HMR client must be connected before we edit, else the edit is missed.
  const connected = () => result.console.some((l) => l.includes('[vite] connected'));
  const deadline = Date.now() + 15000;
  while (!connected() && Date.now() < deadline) await page.waitForTimeout(100);
  if (!connected()) {
    await page.screenshot({ path: join(OUT_DIR, 'hmr-before.png') });
    return finish(false, 'Vite HMR client never logged "[vite] connected." (websocket through the tunnel not working?)');
  }
  const gwSockets = wsRecs.filter((w) => new URL(w.url).port === String(GW_PORT) && !w.closed);
  if (gwSockets.length === 0) {
    await page.screenshot({ path: join(OUT_DIR, 'hmr-before.png') });
    return finish(false, `no open websocket to the gateway port ${GW_PORT}; sockets: ${JSON.stringify(wsRecs.map((w) => w.url))}`);
  }

  // Marker that a full reload would wipe out.
  const marker = `m${Math.random().toString(36).slice(2)}`;
  await page.evaluate((m) => { window.__hmrMarker = m; }, marker);
  await page.screenshot({ path: join(OUT_DIR, 'hmr-before.png') });
  log('screenshot before saved; marker set');

  // The edit: message.js is a module main.js accepts hot updates for.
  const file = join(APP_DIR, 'src', 'message.js');
  const src = readFileSync(file, 'utf8');
  if (!src.includes('version 1')) return finish(false, 'message.js does not contain "version 1"');
  editAt = Date.now();
  writeFileSync(file, src.replace('version 1', 'version 2'));
  log('edited', file);

  try {
    await page.waitForFunction(
      () => document.querySelector('#msg')?.textContent?.includes('version 2'),
      null, { timeout: UPDATE_TIMEOUT_MS, polling: 20 });
    result.editToDomMs = Date.now() - editAt;
  } catch {
    // fall through; reported below
  }
  // Let any stray reload settle before judging.
  await page.waitForTimeout(500);
  result.textAfter = await page.locator('#msg').innerText().catch(() => null);
  result.markerSurvived = await page.evaluate((m) => window.__hmrMarker === m, marker).catch(() => false);
  result.reloadAfterEdit = result.navigations.some((n) => n.afterEdit);
  await page.screenshot({ path: join(OUT_DIR, 'hmr-after.png') });
  log('screenshot after saved');

  if (result.editToDomMs === null) {
    return finish(false, `page did not show "version 2" within ${UPDATE_TIMEOUT_MS} ms (text: ${JSON.stringify(result.textAfter)})`);
  }
  if (result.reloadAfterEdit || !result.markerSurvived) {
    return finish(false, `page showed "version 2" after ${result.editToDomMs} ms but through a FULL RELOAD (navigated: ${result.reloadAfterEdit}, marker survived: ${result.markerSurvived})`);
  }
  if (!result.updateSocket || new URL(result.updateSocket).port !== String(GW_PORT)) {
    return finish(false, `hot update arrived, but not over a websocket to the gateway port ${GW_PORT} (socket: ${result.updateSocket})`);
  }
  const direct = Object.keys(result.requestHosts).filter((h) => h.endsWith(`:${VITE_PORT}`));
  if (direct.length) {
    return finish(false, `the page also talked to Vite directly (${direct.join(', ')}), bypassing the tunnel`);
  }
  return finish(true, `hot update over ${result.updateSocket} in ${result.editToDomMs} ms, no reload`);
}

const hardStop = setTimeout(() => {
  finish(false, 'driver hard timeout');
  process.exit(1);
}, 120000);

main()
  .catch((e) => finish(false, `driver error: ${e?.stack ?? e}`))
  .finally(async () => {
    clearTimeout(hardStop);
    if (browserCtx) await browserCtx.close().catch(() => {});
    process.exit(result.pass ? 0 : 1);
  });
