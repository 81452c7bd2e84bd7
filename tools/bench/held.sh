#!/usr/bin/env bash
# The held-connections benchmark: what idle visitor connections cost the
# gateway, side by side with the nginx reverse proxy in the same run.
#
# For the nginx proxy and for gateway + agent (nginx origin behind both,
# everything on 127.0.0.1): wrk measures 100-byte requests at c=64 with no
# connection held, then while N = 1,000 and 10,000 idle keep-alive
# connections are held (tools/bench/hold_connections: each made one request
# and stays open). Reports req/s and p99 against the run with none held, the
# server's RSS per held connection and its thread count. Then 2,000
# Server-Sent Events streams through one agent (tools/bench/sse_bench), one
# event a second each: how late the events arrive.
#
# Usage: tools/bench/held.sh [--quick]     (--quick: 2 s loads, N = 1,000)
# GATEWAY=path/to/gateway-tunnel measures another build (e.g. an older one).
# Output: results/held-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
HELD="1000 10000"
SSE_STREAMS=2000
SSE_SECONDS=10
if [[ "${1:-}" == "--quick" ]]; then DUR=2; HELD="1000"; SSE_SECONDS=4; fi

bench_setup hold_connections sse_bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
GATEWAY_BIN=${GATEWAY:-build/server/gateway-tunnel}
bench_workdir held

head -c 100 /dev/urandom >"$W/100b"
mkdir -p "$W/www" && mv "$W/100b" "$W/www/100b"
chmod -R a+rX "$W"

SSE=$(free_port)
start_nginx
build/tools/bench/sse_bench serve --port "$SSE" >"$W/sse.out" 2>"$RAW/sse.err" &
pids+=($!)
wait_line "$W/sse.out" '^port' 10 >/dev/null
start_tunnel "$GATEWAY_BIN" $((SSE_STREAMS + 100)) \
  --keep-alive-timeout 300s --read-timeout 300s -- \
  --to "http://127.0.0.1:$ORIGIN" --to "sse=http://127.0.0.1:$SSE"
NGINX_WORKER=$(pgrep -P "$(cat "$W/nginx.pid")" | head -1)
threads_of() { awk '/^Threads/{print $2}' "/proc/$1/status"; }

declare -A URL=([nginx]="http://127.0.0.1:$PROXY/100b" [tunnel]="http://$GWHTTP/t/bench/100b")
declare -A ADDR=([nginx]="127.0.0.1:$PROXY" [tunnel]="$GWHTTP")
declare -A PATHS=([nginx]="/100b" [tunnel]="/t/bench/100b")
declare -A PID=([nginx]="$NGINX_WORKER" [tunnel]="$GW")
declare -A R RSS THR
for t in nginx tunnel; do
  echo "bench: $t, nothing held" >&2
  RSS[${t}_0]=$(rss_kb "${PID[$t]}"); THR[${t}_0]=$(threads_of "${PID[$t]}")
  R[${t}_0]=$(run_wrk "${t}_held0" 64 "${URL[$t]}")
  for n in $HELD; do
    echo "bench: $t, $n held" >&2
    rm -f "$W/hold_in"; mkfifo "$W/hold_in"
    build/tools/bench/hold_connections --addr "${ADDR[$t]}" \
      --path "${PATHS[$t]}" --keep-alive "$n" --hold 600 --connect-timeout 120 \
      <"$W/hold_in" >"$RAW/hold_${t}_$n.out" 2>&1 &
    HP=$!
    exec {hold_in}>"$W/hold_in"
    wait_line "$RAW/hold_${t}_$n.out" '^ready ' 130 >/dev/null
    RSS[${t}_$n]=$(rss_kb "${PID[$t]}"); THR[${t}_$n]=$(threads_of "${PID[$t]}")
    R[${t}_$n]=$(run_wrk "${t}_held$n" 64 "${URL[$t]}")
    exec {hold_in}>&-  # the holder lets go once its stdin closes
    wait "$HP" || true
  done
  # Nothing held again: the baseline is the mean of the runs before and
  # after (a shared machine drifts).
  R[${t}_again]=$(run_wrk "${t}_held0_again" 64 "${URL[$t]}")
done

echo "bench: $SSE_STREAMS SSE streams" >&2
SSE_TUNNEL=$(build/tools/bench/sse_bench watch --addr "$GWHTTP" --path /t/sse-bench/ \
  --streams "$SSE_STREAMS" --seconds "$SSE_SECONDS" 2>"$RAW/sse_tunnel.err")
SSE_DIRECT=$(build/tools/bench/sse_bench watch --addr "127.0.0.1:$SSE" --path / \
  --streams "$SSE_STREAMS" --seconds "$SSE_SECONDS" 2>"$RAW/sse_direct.err")
echo "$SSE_TUNNEL" >"$RAW/sse_tunnel.txt"; echo "$SSE_DIRECT" >"$RAW/sse_direct.txt"
GW_THREADS_END=$(threads_of "$GW")

field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k{print $2}'; }
{
  echo "Command: \`tools/bench/held.sh${1:+ $1}\` — $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; wrk 100 B at c=64, ${DUR} s each, all on 127.0.0.1; held connections are idle keep-alive connections that made one request."
  echo
  echo "Ratios are against the mean of the two runs with nothing held (before and after)."
  echo
  echo "| server | held | req/s | ÷ none held | p99 (ms) | × none held | RSS (MiB) | RSS per held connection | threads |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for t in nginx tunnel; do
    read -r rps_a _ p99_a _ _ _ <<<"${R[${t}_0]}"
    read -r rps_b _ p99_b _ _ _ <<<"${R[${t}_again]}"
    rps0=$(awk -v a="$rps_a" -v b="$rps_b" 'BEGIN{print (a+b)/2}')
    p990=$(awk -v a="$p99_a" -v b="$p99_b" 'BEGIN{print (a+b)/2}')
    for n in 0 $HELD again; do
      read -r rps _ p99 _ errs _ <<<"${R[${t}_$n]}"
      per="—"; held=$n; rss=${RSS[${t}_$n]:-}; thr=${THR[${t}_$n]:-}
      if [ "$n" = again ]; then held="0 (again)"; rss=""; thr=""; fi
      if [ "$n" != 0 ] && [ "$n" != again ]; then
        per=$(awk -v a="${RSS[${t}_$n]}" -v b="${RSS[${t}_0]}" -v n="$n" 'BEGIN{printf "%.1f KiB", (a-b)/n}')
      fi
      name=$([ "$t" = nginx ] && echo "nginx proxy (1 worker)" || echo "gateway-tunnel")
      awk -v name="$name" -v n="$held" -v rps="$rps" -v rps0="$rps0" -v p99="$p99" -v p990="$p990" \
        -v rss="$rss" -v per="$per" -v thr="$thr" -v errs="$errs" \
        'BEGIN{printf "| %s | %s | %.0f%s | %.2f | %.2f | %.2f | %s | %s | %s |\n", name, n, rps, (errs>0?" ("errs" errors)":""), rps/rps0, p99, p99/p990, (rss==""?"":sprintf("%.1f", rss/1024)), per, thr}'
    done
  done
  echo
  echo "| $SSE_STREAMS SSE streams, one event/s each, ${SSE_SECONDS} s | events | p50 (ms) | p99 (ms) | max (ms) | events later than 100 ms | streams that missed events |"
  echo "|---|---|---|---|---|---|---|"
  for t in tunnel direct; do
    line=$([ "$t" = tunnel ] && echo "$SSE_TUNNEL" || echo "$SSE_DIRECT")
    echo "| $t | $(field "$line" events) | $(field "$line" p50_ms) | $(field "$line" p99_ms) | $(field "$line" max_ms) | $(field "$line" over_100ms) | $(field "$line" streams_missing_events) |"
  done
  echo
  echo "Gateway threads at the end: $GW_THREADS_END."
} >"$OUT/results.md"
cat "$OUT/results.md"
