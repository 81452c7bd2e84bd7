#!/usr/bin/env bash
# Pools: 100-byte responses at 64 connections through one agent, and
# through a pool of two agents (the same gateway and nginx origin, all on
# 127.0.0.1; on 2 cores a second agent adds processes competing for the same
# CPU, so this shows the pool's overhead, not a gain); then failover: 16
# visitors keep requesting the pool while one member's local service is
# killed, and we report the errors and the time from the kill to the last
# error (default health checks: TCP every 5 s, unhealthy after 2 failures).
#
# Usage: tools/bench/pool.sh [--quick]   (--quick: 2 s per load)
# Output: results/pool-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
if [[ "${1:-}" == "--quick" ]]; then DUR=2; fi

bench_setup
bench_workdir pool
start_100b_origin

CTL=build/tools/tunnelctl
declare -A TOKEN SECRET
for id in solo m1 m2; do
  if [ "$id" = solo ]; then "$CTL" token issue --id "$id" --credentials "$W/creds.txtpb" >"$W/issued" 2>/dev/null
  else "$CTL" token issue --id "$id" --pool web --credentials "$W/creds.txtpb" >"$W/issued" 2>/dev/null; fi
  TOKEN[$id]=$(awk '/^token:/{print $2}' "$W/issued")
  SECRET[$id]=$(awk '/^secret:/{print $2}' "$W/issued")
done
build/server/gateway-tunnel --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --credentials "$W/creds.txtpb" \
  --log-level warning >"$W/gw.out" 2>"$RAW/gateway.err" &
pids+=($!)
GRPC=$(wait_line "$W/gw.out" '^grpc ' 10 | awk '{print $2}')
GWHTTP=$(wait_line "$W/gw.out" '^http ' 10 | awk '{print $2}')

agent() {  # agent ID TARGET [FLAGS...]: starts it, waits for its URL line
  local id=$1 to=$2
  shift 2
  TUNNEL_SECRET="${SECRET[$id]}" build/agent/agent-tunnel connect --gateway "$GRPC" \
    --id "$id" --token "${TOKEN[$id]}" --insecure --log-level warning "$@" \
    --to "$to" >"$W/$id.out" 2>"$RAW/$id.err" &
  pids+=($!)
  LAST=$!
  wait_line "$W/$id.out" '/t/' 20 >/dev/null
}
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN/100b" && break; sleep 0.05; done

{
  echo "# Pools ($(date -u +%Y-%m-%dT%H:%MZ), ${DUR}s per load, $(nproc) cores)"
  echo
  echo "| tunnel | connections | req/s | p50 ms | p99 ms | errors |"
  echo "|---|---|---|---|---|---|"
} | tee "$OUT/results.md"
row() {  # row LABEL URL
  local r
  r=$(run_wrk "$1" 64 "$2")
  read -r rps p50 p99 _ errs _ <<<"$r"
  printf '| %s | 64 | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "$errs" | tee -a "$OUT/results.md"
}
agent solo "http://127.0.0.1:$ORIGIN"
row "one agent" "http://$GWHTTP/t/solo/100b"
agent m1 "http://127.0.0.1:$ORIGIN" --pool web
M1=$LAST
# m2's service is one we can kill: a small Python server of the same file.
/usr/bin/python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$W/www" \
  >"$W/svc2.out" 2>/dev/null &
SVC2=$!
pids+=($SVC2)
SVC2_PORT=$(wait_line "$W/svc2.out" 'port [0-9]+' 10 | sed -E 's/.*port ([0-9]+).*/\1/')
agent m2 "http://127.0.0.1:$ORIGIN" --pool web
M2=$LAST
row "pool of two agents" "http://$GWHTTP/t/web/100b"

# Failover: m2 now serves the Python server; kill it under load.
kill "$M2"; wait "$M2" 2>/dev/null || true
agent m2 "http://127.0.0.1:$SVC2_PORT" --pool web
/usr/bin/python3 - "$GWHTTP" "$SVC2" "$DUR" >"$RAW/failover.txt" <<'PY'
import http.client, os, signal, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
svc, dur = int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
kill_at = start + 1.0
end = start + 1.0 + max(dur, 12.0)  # past two 5 s health checks
lock = threading.Lock()
n = 0
errors = []
killed = None
def worker():
    global n, killed
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    while time.monotonic() < end:
        now = time.monotonic()
        with lock:
            if killed is None and now >= kill_at:
                os.kill(svc, signal.SIGKILL)
                killed = now
        try:
            conn.request("GET", "/t/web/100b")
            r = conn.getresponse()
            body = r.read()
            ok = r.status == 200 and len(body) == 100
        except Exception:
            ok = False
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        with lock:
            n += 1
            if not ok:
                errors.append(time.monotonic())
threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
last = "none" if not errors else "%.2f s" % (max(errors) - killed)
print("requests %d errors %d last_error_after_kill %s" % (n, len(errors), last))
PY
read -r _ freq _ ferr _ flast <<<"$(cat "$RAW/failover.txt")"
{
  echo
  echo "Failover (16 visitors, one member's service killed): $freq requests, $ferr errors, last error $flast after the kill."
} | tee -a "$OUT/results.md"
echo
echo "results: $OUT/results.md"
