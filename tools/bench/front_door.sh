#!/usr/bin/env bash
# Where a small request's CPU goes, and the floors under it: the gateway's
# front door alone (a request for a tunnel nobody serves, answered 404 by
# the gateway itself: accept, parse, route, error page, access log; no
# agent), against nginx serving the same 100-byte file, then the whole
# tunnel. CPU seconds per 10k requests and system calls per request, 100 B,
# wrk at 64 keep-alive connections, everything on 127.0.0.1, each load 5 s.
# wrk's own CPU is reported too: against nginx it is a minimal keep-alive
# HTTP/1.1 client, the work the agent's origin client cannot avoid. Last,
# grpc_floor: one gRPC round trip on one stream with no tunnel code, the
# floor under the tunnel's latency at concurrency 1.
#
# Usage: tools/bench/front_door.sh
# Output: results/front-door-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
export LC_ALL=C  # `times` prints seconds with the locale's decimal point
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5

bench_setup grpc_floor
bench_workdir front-door
start_100b_origin
start_tunnel build/server/gateway-tunnel 1200 -- --to "http://127.0.0.1:$ORIGIN"
NGX=$(pgrep -P "$(cat "$W/nginx.pid")" | head -1)
run_wrk warm 16 "http://$GWHTTP/t/bench/100b" 1 >/dev/null

per10k() { awk -v a="$1" -v b="$2" -v n="$3" -v t="$TICK" 'BEGIN{printf "%.2f", (b-a)/t/n*10000}'; }
# syscalls PID -> counts system calls for DUR-1 s into $W/sc.PID (background)
syscalls() { perf stat -e raw_syscalls:sys_enter -p "$1" -o "$W/sc.$1" -- sleep $((DUR - 1)) >/dev/null 2>&1 & SC_PID=$!; }
per_req() { awk -v n="$2" -v d="$DUR" '/sys_enter/{gsub(",","",$1); printf "%.1f", $1/(n*(d-1)/d)}' "$W/sc.$1"; }
HAVE_PERF=0
perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && HAVE_PERF=1

{
  echo "| load (100 B, c=64) | req/s | gateway CPU s / 10k | agent CPU s / 10k | nginx CPU s / 10k | wrk CPU s / 10k | gateway syscalls / req |"
  echo "|---|---|---|---|---|---|---|"
} >"$OUT/results.md"
for load in nginx front_door tunnel; do
  case $load in
    nginx) url="http://127.0.0.1:$ORIGIN/100b"; name="nginx serving the file" ;;
    front_door) url="http://$GWHTTP/t/nobody/100b"; name="front door alone (404, no agent)" ;;
    tunnel) url="http://$GWHTTP/t/bench/100b"; name="the tunnel (front door, gRPC, agent, nginx)" ;;
  esac
  g0=$(cpu_ticks "$GW"); a0=$(cpu_ticks "$AG"); n0=$(cpu_ticks "$NGX")
  SC_PID=""
  [ "$HAVE_PERF" = 1 ] && syscalls "$GW"
  # `times` in the subshell: the CPU of its children, wrk (and run_wrk's awk).
  out=$(run_wrk "$load" 64 "$url"; times)
  read -r rps _ _ _ _ reqs <<<"$(head -1 <<<"$out")"
  if [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
    echo "front_door.sh: wrk served no requests for $load; see $RAW/$load.txt" >&2
    exit 1
  fi
  # user and system seconds of the children
  read -r wrk_user wrk_sys <<<"$(tail -1 <<<"$out" | awk '{ for (i = 1; i <= 2; i++) { split($i, p, "m"); t[i] = p[1] * 60 + p[2] } print t[1], t[2] }')"
  [ -n "$SC_PID" ] && wait "$SC_PID"
  g1=$(cpu_ticks "$GW"); a1=$(cpu_ticks "$AG"); n1=$(cpu_ticks "$NGX")
  sc="—"
  [ "$HAVE_PERF" = 1 ] && [ "$load" != nginx ] && sc=$(per_req "$GW" "$reqs")
  wrk10k=$(awk -v u="$wrk_user" -v s="$wrk_sys" -v n="$reqs" 'BEGIN{printf "%.2f (%.2f system)", (u+s)/n*10000, s/n*10000}')
  # A process the load does not go through: "—".
  gw10k="—" ag10k="—" ngx10k="—"
  [ "$load" != nginx ] && gw10k=$(per10k "$g0" "$g1" "$reqs")
  [ "$load" = tunnel ] && ag10k=$(per10k "$a0" "$a1" "$reqs")
  [ "$load" != front_door ] && ngx10k=$(per10k "$n0" "$n1" "$reqs")
  echo "| $name | $rps | $gw10k | $ag10k | $ngx10k | $wrk10k | $sc |" >>"$OUT/results.md"
done
{
  echo
  echo "The floor under c=1 latency: $(build/tools/bench/grpc_floor --round-trips 20000 --bytes 200)"
} >>"$OUT/results.md"
cat "$OUT/results.md"
