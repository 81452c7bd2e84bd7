#!/usr/bin/env bash
# The gateway cluster: (1) the cost of the extra hop, 100-byte and 1 MiB
# responses at 64 connections through a replica the agent is connected to
# and through the replica it is not connected to, which forwards (nginx
# origin, one agent with its two connections on a and b, Redis, all on
# 127.0.0.1); (2) failover: 1,000 agents (bench_agents, one connection
# each, given all three replicas' addresses) on replica a, a killed with
# -9, and the time until every survivor's directory routes all 1,000 to a
# live replica (tunnelctl list on each survivor), and until the real agent
# (connected to a and b) answers visitors through both survivors.
#
# Usage: tools/bench/cluster.sh [--quick]   (--quick: 2 s per load, 300
# agents)
# Output: results/cluster-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
AGENTS=1000
if [[ "${1:-}" == "--quick" ]]; then DUR=2; AGENTS=300; fi

bench_setup bench_agents
command -v redis-server >/dev/null || { echo "bench: redis-server is needed (tools/install-deps.sh)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
bench_workdir cluster
start_100b_origin
head -c 1048576 /dev/urandom >"$W/www/1m"
chmod a+r "$W/www/1m"

REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  >"$RAW/redis.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$REDIS" ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done

CTL=build/tools/tunnelctl
"$CTL" token issue --id bench --credentials "$W/creds.txtpb" >"$W/issued" 2>/dev/null
TOKEN=$(awk '/^token:/{print $2}' "$W/issued"); SECRET=$(awk '/^secret:/{print $2}' "$W/issued")
build/tools/bench/bench_agents --write-credentials "$W/fleet.txtpb" --count "$AGENTS" >/dev/null
cat "$W/fleet.txtpb" >>"$W/creds.txtpb"
"$CTL" admin-token issue --file "$W/cluster.secret" >/dev/null 2>&1
"$CTL" admin-token issue --file "$W/admin.token" >/dev/null 2>&1

declare -A GRPC HTTP ADMIN PID
replica() {  # replica NAME: starts gateway-tunnel --cluster-id NAME
  local n=$1
  build/server/gateway-tunnel --insecure --grpc-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --ops-addr "" --admin-addr 127.0.0.1:0 \
    --admin-token-file "$W/admin.token" --credentials "$W/creds.txtpb" \
    --log-level warning --max-agents 20000 \
    --cluster-redis "redis://127.0.0.1:$REDIS" \
    --cluster-secret-file "$W/cluster.secret" --cluster-id "$n" \
    --cluster-heartbeat 1s --cluster-lease 3s \
    >"$W/$n.out" 2>"$RAW/$n.err" &
  PID[$n]=$!; pids+=($!)
  GRPC[$n]=$(wait_line "$W/$n.out" '^grpc ' 10 | awk '{print $2}')
  HTTP[$n]=$(wait_line "$W/$n.out" '^http ' 10 | awk '{print $2}')
  ADMIN[$n]=$(wait_line "$W/$n.out" '^admin ' 10 | awk '{print $2}')
}
for n in a b c; do replica "$n"; done

# The real agent: two connections, on a and b.
TUNNEL_SECRET="$SECRET" build/agent/agent-tunnel connect \
  --gateway "${GRPC[a]},${GRPC[b]},${GRPC[c]}" --id bench --token "$TOKEN" \
  --insecure --max-concurrent 1200 --log-level warning --inspect "" \
  --max-backoff 2s --to "http://127.0.0.1:$ORIGIN" >"$W/agent.out" 2>"$RAW/agent.err" &
AG=$!; pids+=($AG)
wait_line "$W/agent.out" '/t/bench/' 20 >/dev/null
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN/100b" && break; sleep 0.05; done
for _ in $(seq 200); do
  curl -sf -o /dev/null "http://${HTTP[c]}/t/bench/100b" && break
  sleep 0.05
done

{
  echo "# Gateway cluster ($(date -u +%Y-%m-%dT%H:%MZ), ${DUR}s per load, $(nproc) cores)"
  echo
  echo "Three replicas and Redis on one machine; the agent is connected to replicas a and b; c forwards."
  echo
  echo "| path | body | connections | req/s | MiB/s | p50 ms | p99 ms | errors |"
  echo "|---|---|---|---|---|---|---|---|"
} | tee "$OUT/results.md"
row() {  # row LABEL BODY URL
  local r
  r=$(run_wrk "$(printf '%s-%s' "$1" "$2" | tr -c 'A-Za-z0-9-' _)" 64 "$3")
  read -r rps p50 p99 mib errs _ <<<"$r"
  echo "| $1 | $2 | 64 | $rps | $mib | $p50 | $p99 | $errs |" | tee -a "$OUT/results.md"
}
row "direct nginx" 100B "http://127.0.0.1:$ORIGIN/100b"
row "via the agent's replica (a)" 100B "http://${HTTP[a]}/t/bench/100b"
row "via a replica that forwards (c -> a/b)" 100B "http://${HTTP[c]}/t/bench/100b"
row "via the agent's replica (a)" 1MiB "http://${HTTP[a]}/t/bench/1m"
row "via a replica that forwards (c -> a/b)" 1MiB "http://${HTTP[c]}/t/bench/1m"

# --- failover ---
build/tools/bench/bench_agents --gateway "${GRPC[a]},${GRPC[b]},${GRPC[c]}" \
  --credentials "$W/fleet.txtpb" --count "$AGENTS" >"$W/fleet.out" 2>"$RAW/fleet.err" &
pids+=($!)
wait_line "$W/fleet.out" '^connected ' 120 >/dev/null
live_on() {  # live_on REPLICA: agents the replica's listing puts on b or c
  "$CTL" list --json --admin "${ADMIN[$1]}" --admin-token-file "$W/admin.token" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for a in d["agents"] if a["agent_id"].startswith("idle-") and a["replica"] in ("b","c")))' 2>/dev/null || echo 0
}
# Everyone on a first (each fleet agent starts with a's address).
for _ in $(seq 600); do
  n=$("$CTL" list --json --admin "${ADMIN[b]}" --admin-token-file "$W/admin.token" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for a in d["agents"] if a["replica"]=="a"))' 2>/dev/null || echo 0)
  [ "$n" -ge "$((AGENTS + 1))" ] && break
  sleep 0.1
done
echo "replica b's directory shows $n agents on a before the kill" >"$RAW/before.txt"

kill -9 "${PID[a]}"
t0=$(date +%s.%N)
{ wait "${PID[a]}"; } 2>/dev/null || true  # (bash would report the kill)
t_visit=""; t_b=""; t_c=""
for _ in $(seq 1200); do  # bounded: 120 s
  now=$(date +%s.%N)
  if [ -z "$t_visit" ] && curl -sf -m 2 -o /dev/null "http://${HTTP[b]}/t/bench/100b" &&
     curl -sf -m 2 -o /dev/null "http://${HTTP[c]}/t/bench/100b"; then
    t_visit=$(awk -v a="$now" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
  fi
  [ -z "$t_b" ] && [ "$(live_on b)" -ge "$AGENTS" ] && t_b=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
  [ -z "$t_c" ] && [ "$(live_on c)" -ge "$AGENTS" ] && t_c=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
  [ -n "$t_visit" ] && [ -n "$t_b" ] && [ -n "$t_c" ] && break
  sleep 0.1
done
{
  echo
  echo "Failover: $AGENTS idle agents (bench_agents, one connection each) on replica a and the real agent on a and b; a killed with -9 (lease 3 s, heartbeat 1 s, backoff capped at 2 s):"
  echo
  echo "| after kill -9 of a | seconds |"
  echo "|---|---|"
  echo "| the real agent's tunnel answers through b and c | ${t_visit:-not within 120 s} |"
  echo "| b's directory routes all $AGENTS idle agents to b or c | ${t_b:-not within 120 s} |"
  echo "| c's directory routes all $AGENTS idle agents to b or c | ${t_c:-not within 120 s} |"
} | tee -a "$OUT/results.md"
echo "results: $OUT/results.md"
