#!/usr/bin/env bash
# Many agents on one gateway: the gateway's CPU while N agents (bench_agents,
# one TCP connection each) connect, the load generator's CPU beside it, and
# a credentials reload (SIGHUP) with every session live: how long until
# tunnel_credentials_reloads_total counts it, and the gateway's CPU for it.
#
# Usage: tools/bench/agents_reload.sh [--agents N] [--gateway BIN]
#   N defaults to 10000 (needs `ulimit -n` of N + 100; raised if allowed);
#   BIN to this checkout's gateway-tunnel.
# Output: results/agents-reload-<time>/results.md and the line on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh

N=10000 GW_BIN=build/server/gateway-tunnel
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) N="${2:?--agents needs a number}"; shift 2 ;;
    --gateway) GW_BIN="${2:?--gateway needs a binary}"; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "agents_reload.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "agents_reload.sh: --agents needs a positive number" >&2; exit 2; }
[ -x "$GW_BIN" ] || { echo "agents_reload.sh: $GW_BIN is not an executable" >&2; exit 2; }
ulimit -n $((N + 100)) 2>/dev/null || {
  echo "agents_reload.sh: $N agents need ulimit -n $((N + 100)) (hard limit $(ulimit -Hn))" >&2
  exit 2
}

bench_setup bench_agents
bench_workdir agents-reload
build/tools/bench/bench_agents --write-credentials "$W/agents.txtpb" --count "$N"
GP=$(free_port); HP=$(free_port); OP=$(free_port)
"$GW_BIN" --insecure --admin-addr "" --grpc-addr "127.0.0.1:$GP" \
  --http-addr "127.0.0.1:$HP" --ops-addr "127.0.0.1:$OP" \
  --credentials "$W/agents.txtpb" --log-level error >"$W/gw.out" 2>"$RAW/gateway.err" &
GW=$!; pids+=($GW)
wait_line "$W/gw.out" '^http ' 20 >/dev/null

g0=$(cpu_ticks "$GW")
build/tools/bench/bench_agents --gateway "127.0.0.1:$GP" --credentials "$W/agents.txtpb" \
  --count "$N" >"$W/fleet.out" 2>"$RAW/fleet.err" &
FLEET=$!; pids+=($FLEET)
conn_s=$(wait_line "$W/fleet.out" '^connected ' 300 | awk '{print $4}')
g1=$(cpu_ticks "$GW"); f1=$(cpu_ticks "$FLEET")

reloads() {
  curl -s "http://127.0.0.1:$OP/metrics" |
    awk '/^tunnel_credentials_reloads_total\{result="ok"\}/{print $2}'
}
r0=$(reloads)
g2=$(cpu_ticks "$GW")
t0=$(date +%s.%N)
kill -HUP "$GW"
deadline=$((SECONDS + 60))
until [ "$(reloads)" != "$r0" ]; do
  ((SECONDS < deadline)) || { echo "agents_reload.sh: the reload was not counted within 60 s" >&2; exit 1; }
  sleep 0.01
done
t1=$(date +%s.%N)
g3=$(cpu_ticks "$GW")

{
  echo "Command: \`tools/bench/agents_reload.sh --agents $N\` — $(date -u +%F), $(nproc) cores"
  echo
  echo "| agents | connected in | gateway CPU for the connects | bench_agents CPU meanwhile | reload (SIGHUP) with every session live | gateway CPU for the reload |"
  echo "|---|---|---|---|---|---|"
  echo "| $N | $conn_s s | $(awk -v d=$((g1 - g0)) -v t="$TICK" -v n="$N" 'BEGIN{printf "%.2f s (%.0f µs per agent)", d/t, d/t/n*1e6}') | $(awk -v d="$f1" -v t="$TICK" -v s="$conn_s" 'BEGIN{printf "%.2f s (%.2f cores)", d/t, d/t/s}') | $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f s", b-a}') | $(awk -v d=$((g3 - g2)) -v t="$TICK" 'BEGIN{printf "%.2f s", d/t}') |"
} >"$OUT/results.md"
cat "$OUT/results.md"
