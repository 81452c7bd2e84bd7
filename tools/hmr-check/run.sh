#!/usr/bin/env bash
# Manual end-to-end check: a real Vite dev server published through the
# tunnel loads in headless Chromium, and an edit to a source file reaches
# the page as a hot update (HMR websocket through the gateway), not a reload.
# Needs the npm registry and Debian's apt repos; not part of CI.
#
# Usage: tools/hmr-check/run.sh [BUILD_DIR]     (default: <repo>/build)
# Env:   HMR_CHECK_KEEP=1   keep the temp dir even on PASS
#        HMR_CHECK_TIMEOUT  overall limit in seconds (default 1500; the first
#                           run may spend most of it installing chromium)
#        HMR_CHECK_NO_ACCEPT=1  negative control: main.js does not accept
#                           hot updates, so Vite must full-reload; the check
#                           is expected to FAIL and say "FULL RELOAD"
#        HMR_CHECK_NO_CLIENT_PORT=1  leave server.hmr.clientPort unset (the
#                           Vite client then uses the page's own port)
# Exit:  0 PASS, 1 FAIL, 2 setup problem.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="$(cd "${1:-$REPO/build}" && pwd)" || { echo "no build dir" >&2; exit 2; }
GW_BIN="$BUILD/server/gateway-tunnel"
AGENT_BIN="$BUILD/agent/agent-tunnel"
CTL_BIN="$BUILD/tools/tunnelctl"
VITE_SPEC="vite@^7"
PW_SPEC="playwright-core@^1"
OVERALL="${HMR_CHECK_TIMEOUT:-1500}"

for b in "$GW_BIN" "$AGENT_BIN" "$CTL_BIN"; do
  [ -x "$b" ] || { echo "missing binary $b (build the project first)" >&2; exit 2; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hmr-check.XXXXXX")"
APP="$WORK/app"
mkdir -p "$APP/src" "$WORK/logs"
say() { echo "[hmr-check +${SECONDS}s] $*"; }

# --- process bookkeeping: every long-running child gets its own process
# group (setsid), so cleanup can end it and its children by group id.
pgids=()
status=2
cleanup() {
  trap - EXIT INT TERM
  [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
  for ((i = ${#pgids[@]} - 1; i >= 0; i--)); do
    kill -TERM -- "-${pgids[i]}" 2>/dev/null
  done
  sleep 0.5
  for p in "${pgids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
  # Any chromium left behind by a killed driver: found by our own unique
  # profile dir, ended by pid.
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF -- "$WORK/chrome-profile"; then
      kill -KILL "${d#/proc/}" 2>/dev/null
    fi
  done
  wait 2>/dev/null
  if [ "$status" = 0 ] && [ "${HMR_CHECK_KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"
  else
    echo "[hmr-check] work dir kept: $WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'status=1; exit' INT TERM
( sleep "$OVERALL"; echo "[hmr-check] overall timeout ${OVERALL}s" >&2; kill -TERM $$ ) &
WATCHDOG=$!

start_bg() {  # start_bg NAME cmd... : runs in its own session, logs to logs/NAME.{out,err}
  local name="$1"; shift
  setsid "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" </dev/null &
  pgids+=($!)
}
wait_for_line() {  # FILE REGEX SECONDS -> first matching line
  local file="$1" re="$2" deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    if grep -Eq "$re" "$file" 2>/dev/null; then grep -Em1 "$re" "$file"; return 0; fi
    sleep 0.1
  done
  return 1
}
die() { # die STATUS MESSAGE
  status="$1"; shift
  echo "FAIL: $*"
  dump_logs
  exit
}
dump_logs() {
  for f in "$WORK"/logs/*; do
    [ -s "$f" ] || continue
    echo "----- ${f##*/} (last 40 lines) -----"
    tail -n 40 "$f"
  done
}

# --- 1. Node/npm and Debian's chromium ----------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  die 2 "node/npm not found"
fi
if [ ! -x /usr/bin/chromium ]; then
  say "installing chromium with apt-get"
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y chromium \
      >"$WORK/logs/apt.log" 2>&1; then
    say "apt-get install failed; running apt-get update and retrying"
    timeout 300 apt-get update >>"$WORK/logs/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y chromium \
      >>"$WORK/logs/apt.log" 2>&1 || die 2 "apt-get install chromium failed"
  fi
fi
CHROMIUM_VERSION="$(/usr/bin/chromium --version 2>/dev/null)"
say "node $(node -v), npm $(npm -v 2>/dev/null), $CHROMIUM_VERSION"

# --- 2. a minimal Vite app ----------------------------------------------
cat >"$APP/package.json" <<'EOF'
{
  "name": "hmr-check-app",
  "private": true,
  "version": "0.0.0",
  "type": "module"
}
EOF
cat >"$APP/index.html" <<'EOF'
<!doctype html>
<html>
  <head><meta charset="utf-8"><title>hmr-check</title></head>
  <body style="font: 32px sans-serif; padding: 40px">
    <h1 id="msg">loading…</h1>
    <p id="loaded-at"></p>
    <script type="module" src="/src/main.js"></script>
  </body>
</html>
EOF
cat >"$APP/src/message.js" <<'EOF'
export const message = 'version 1';
EOF
# main.js accepts hot updates of message.js, so an edit there is applied in
# place; a module nobody accepts would make Vite fall back to a full reload.
cat >"$APP/src/main.js" <<'EOF'
import { message } from './message.js';

function render(text) {
  document.querySelector('#msg').textContent = text;
}
render(message);
document.querySelector('#loaded-at').textContent =
  'page loaded at ' + new Date().toISOString();

EOF
if [ "${HMR_CHECK_NO_ACCEPT:-0}" != 1 ]; then
  cat >>"$APP/src/main.js" <<'EOF'

if (import.meta.hot) {
  import.meta.hot.accept('./message.js', (mod) => {
    if (mod) render(mod.message);
  });
}
EOF
fi
cp "$HERE/drive.mjs" "$APP/drive.mjs"

say "npm install $VITE_SPEC $PW_SPEC"
( cd "$APP" && timeout 400 npm install --no-audit --no-fund --loglevel=error \
    --save-dev "$VITE_SPEC" "$PW_SPEC" ) >"$WORK/logs/npm.log" 2>&1 \
  || die 2 "npm install failed (see npm.log)"
VITE_VERSION="$(node -p "require('$APP/node_modules/vite/package.json').version")"
PW_VERSION="$(node -p "require('$APP/node_modules/playwright-core/package.json').version")"
say "vite $VITE_VERSION, playwright-core $PW_VERSION"

# --- 3. gateway (first, so Vite can be told its public port) ------------
( cd "$WORK" && "$CTL_BIN" token issue --id devbox --credentials creds.txtpb ) \
  >"$WORK/issued.txt" 2>"$WORK/logs/tunnelctl.err" || die 2 "tunnelctl failed"
TOKEN=$(awk '/^token:/{print $2}' "$WORK/issued.txt")
SECRET=$(awk '/^secret:/{print $2}' "$WORK/issued.txt")
[ -n "$TOKEN" ] && [ -n "$SECRET" ] || die 2 "tunnelctl printed no token/secret"

start_bg gateway "$GW_BIN" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --domain localhost --ops-addr 127.0.0.1:0 --credentials "$WORK/creds.txtpb"
GRPC=$(wait_for_line "$WORK/logs/gateway.out" '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line "$WORK/logs/gateway.out" '^http ' 10 | awk '{print $2}')
[ -n "$GRPC" ] && [ -n "$HTTP" ] || die 2 "gateway did not print its addresses"
GW_PORT=${HTTP##*:}
say "gateway grpc $GRPC http $HTTP"

# --- Vite on a free port, HMR client pointed at the gateway's port ------
VITE_PORT=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
cat >"$APP/vite.config.js" <<EOF
export default {
  server: {
    host: '127.0.0.1',
    port: $VITE_PORT,
    strictPort: true,
    // The page is visited as http://devbox.localhost:$GW_PORT/ (Host header
    // of the tunnel's subdomain URL).
    allowedHosts: ['.localhost'],
    // The browser must open the HMR websocket to the gateway, not to Vite.
    hmr: { $([ "${HMR_CHECK_NO_CLIENT_PORT:-0}" = 1 ] || echo "clientPort: $GW_PORT") },
  },
};
EOF
start_bg vite bash -c "cd '$APP' && exec npx vite --host 127.0.0.1 --port $VITE_PORT --strictPort"
VITE_PID=${pgids[-1]}
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$VITE_PORT/" 2>/dev/null; do
  kill -0 "$VITE_PID" 2>/dev/null || die 2 "vite exited"
  ((SECONDS < deadline)) || die 2 "vite did not answer on 127.0.0.1:$VITE_PORT"
  sleep 0.2
done
say "vite answering on 127.0.0.1:$VITE_PORT"

# --- agent ---------------------------------------------------------------
TUNNEL_SECRET="$SECRET" start_bg agent "$AGENT_BIN" connect --gateway "$GRPC" \
  --id devbox --token "$TOKEN" --insecure --to "http://127.0.0.1:$VITE_PORT"
PAGE_URL=$(wait_for_line "$WORK/logs/agent.out" '^http://devbox\.' 20)
[ -n "$PAGE_URL" ] || die 1 "agent printed no subdomain URL"
say "tunnel URL $PAGE_URL"

# Plain HTTP sanity check through the tunnel before the browser.
code=$(curl -s -o "$WORK/index-via-tunnel.html" -w '%{http_code}' --max-time 10 \
  --resolve "devbox.localhost:$GW_PORT:127.0.0.1" "$PAGE_URL")
say "curl through tunnel: HTTP $code"
[ "$code" = 200 ] || die 1 "curl $PAGE_URL through the tunnel gave HTTP $code"
grep -q '/@vite/client' "$WORK/index-via-tunnel.html" \
  || die 1 "index.html through the tunnel lacks the /@vite/client script"

# --- 4. the browser ------------------------------------------------------
say "driving chromium"
mkdir -p "$WORK/chrome-profile"
( cd "$APP" && PAGE_URL="$PAGE_URL" GW_PORT="$GW_PORT" VITE_PORT="$VITE_PORT" \
    APP_DIR="$APP" OUT_DIR="$WORK" USER_DATA_DIR="$WORK/chrome-profile" \
    UPDATE_TIMEOUT_MS=15000 \
    CHROMIUM_EXTRA_ARGS="${HMR_CHECK_CHROMIUM_ARGS:-}" \
    timeout -k 5 150 node drive.mjs ) 2>&1 | tee "$WORK/logs/drive.log"
drive_rc=${PIPESTATUS[0]}

for s in before after; do
  [ -f "$WORK/hmr-$s.png" ] && cp "$WORK/hmr-$s.png" "/tmp/hmr-$s.png"
done

# --- 5. verdict ----------------------------------------------------------
[ -f "$WORK/result.json" ] || die 1 "driver wrote no result (exit $drive_rc)"
echo "================ hmr-check ================"
echo "versions: vite $VITE_VERSION, playwright-core $PW_VERSION, $CHROMIUM_VERSION"
echo "tunnel URL: $PAGE_URL (gateway http $HTTP, vite 127.0.0.1:$VITE_PORT)"
echo "screenshots: /tmp/hmr-before.png /tmp/hmr-after.png"
node "$HERE/summarize.mjs" "$WORK/result.json" | tee "$WORK/summary.txt"
if [ "$drive_rc" = 0 ] && grep -q '"pass": true' "$WORK/result.json"; then
  status=0
else
  status=1
  dump_logs
fi
