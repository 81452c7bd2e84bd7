#!/usr/bin/env bash
# Soak test (not in CI): load with checked bodies plus periodic kill -9 of
# the agent, for N minutes, everything on 127.0.0.1. Reports outcomes by
# kind and the gateway's and agent's RSS and open fds over time.
#
# Usage: tools/soak.sh [--minutes N] [--kill-every SECONDS] [--threads N]
#                      [--build DIR]
# Output: results/soak-<time>/{samples.csv,summary.md} (summary also printed)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=10
KILL_EVERY=20
THREADS=16
BUILD=build
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --kill-every) KILL_EVERY=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done
for b in server/gateway-tunnel agent/agent-tunnel tools/tunnelctl; do
  [ -x "$BUILD/$b" ] || { echo "soak: $BUILD/$b missing; build first" >&2; exit 2; }
done
OUT="results/soak-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-soak.XXXXXX")
pids=()
AGENT=""
cleanup() {
  for p in "${pids[@]}" $AGENT; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_line() {  # FILE REGEX SECONDS -> first matching line
  local deadline=$((SECONDS + $3))
  until grep -Eq "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "soak: timeout waiting for $2 in $1" >&2; exit 1; }
    sleep 0.05
  done
  grep -Em1 "$2" "$1"
}

"$BUILD/tools/tunnelctl" token issue --id soak \
  --credentials "$WORK/creds.txtpb" >"$WORK/issued" 2>/dev/null
TOKEN=$(awk '/^token:/{print $2}' "$WORK/issued")
SECRET=$(awk '/^secret:/{print $2}' "$WORK/issued")

python3 -u tools/soak_service.py >"$WORK/svc.out" 2>"$WORK/svc.err" &
pids+=($!)
SVC_PORT=$(wait_line "$WORK/svc.out" '^port ' 10 | awk '{print $2}')

"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 \
  --credentials "$WORK/creds.txtpb" --log-level warning \
  >"$WORK/gw.out" 2>"$WORK/gw.err" &
GW=$!
pids+=($GW)
GRPC=$(wait_line "$WORK/gw.out" '^grpc ' 10 | awk '{print $2}')
HTTP_PORT=$(wait_line "$WORK/gw.out" '^http ' 10 | awk '{print $2}' | sed 's/.*://')

start_agent() {
  TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect \
    --gateway "$GRPC" --id soak --token "$TOKEN" --insecure \
    --max-backoff 1s --to "http://127.0.0.1:$SVC_PORT" \
    >>"$WORK/agent.out" 2>>"$WORK/agent.err" &
  AGENT=$!
}
start_agent
wait_line "$WORK/agent.out" '/t/soak/' 20 >/dev/null

SECS=$((MINUTES * 60))
python3 tools/soak_load.py --port "$HTTP_PORT" --threads "$THREADS" \
  --seconds "$SECS" --stats "$WORK/stats.json" &
LOAD=$!
pids+=($LOAD)

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { (ls "/proc/$1/fd" 2>/dev/null || true) | wc -l; }
echo "elapsed_s,gateway_rss_kb,gateway_fds,agent_rss_kb,agent_fds,agent_kills,stats" \
  >"$OUT/samples.csv"
kills=0
start=$SECONDS
next_kill=$((start + KILL_EVERY))
next_sample=$start
while kill -0 "$LOAD" 2>/dev/null; do
  now=$SECONDS
  if ((now >= next_kill)); then
    kill -9 "$AGENT" 2>/dev/null || true
    wait "$AGENT" 2>/dev/null || true
    kills=$((kills + 1))
    start_agent
    next_kill=$((now + KILL_EVERY))
  fi
  if ((now >= next_sample)); then
    stats=$( (cat "$WORK/stats.json" 2>/dev/null || echo '{}') | tr -d ' ' | tr ',' ';')
    echo "$((now - start)),$(rss_kb $GW),$(fds $GW),$(rss_kb $AGENT),$(fds $AGENT),$kills,$stats" \
      >>"$OUT/samples.csv"
    next_sample=$((now + 10))
  fi
  sleep 1
done
wait "$LOAD" || true
final=$(cat "$WORK/stats.json")
first=$(sed -n 2p "$OUT/samples.csv")
last=$(tail -n 1 "$OUT/samples.csv")
{
  echo "# Soak: $MINUTES min, agent kill -9 every ${KILL_EVERY}s, $THREADS visitors + 1 slow"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"
  echo
  echo "Outcomes: \`$final\`"
  echo
  echo "Agent kills: $kills"
  echo
  echo "| | elapsed s | gateway RSS KiB | gateway fds | agent RSS KiB | agent fds |"
  echo "|---|---|---|---|---|---|"
  echo "$first" | awk -F, '{printf "| start | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5}'
  echo "$last" | awk -F, '{printf "| end | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5}'
  echo
  echo "Gateway RSS max: $(awk -F, 'NR>1 && $2>m{m=$2} END{print m}' "$OUT/samples.csv") KiB"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
python3 - "$final" <<'PY'
import json, sys
c = json.loads(sys.argv[1])
bad = c.get("wrong_body", 0) + c.get("silent_truncation", 0)
sys.exit(1 if bad else 0)
PY
