#!/usr/bin/env bash
# The benchmark: the same workloads (a) directly against an nginx origin,
# (b) through an nginx reverse proxy (one hop, the floor for any proxy) and
# (c) through gateway-tunnel + agent-tunnel — in one run, on this machine,
# everything on 127.0.0.1, each load bounded in time.
#
# Usage: tools/bench/run.sh [--quick]   (--quick: 2 s per load, 1k agents)
# Output: results/bench-<time>/{results.md,chart.png,raw/} and the table on
# stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
AGENT_COUNTS="1000 10000"
if [[ "${1:-}" == "--quick" ]]; then DUR=2; AGENT_COUNTS="1000"; fi

# --- setup -----------------------------------------------------------------
bench_setup bench_sink bench_agents
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_workdir bench


# Files the origin serves.
mkdir -p "$W/www"
head -c 100 /dev/urandom >"$W/www/100b"
head -c 1048576 /dev/urandom >"$W/www/1m"
truncate -s 1G "$W/www/1g"
chmod -R a+rX "$W"  # nginx workers run as www-data

SINK=$(free_port)
start_nginx
build/tools/bench/bench_sink --port "$SINK" >"$W/sink.out" 2>&1 &
pids+=($!)
wait_line "$W/sink.out" '^port' 10 >/dev/null
start_tunnel build/server/gateway-tunnel 1200 -- \
  --to "http://127.0.0.1:$ORIGIN" --to "sink=http://127.0.0.1:$SINK"
AGENT_IDLE_RSS=$(rss_kb "$AG")
# Most of that RSS is shared library text; what the agent itself holds:
AGENT_IDLE_DIRTY=$(awk '/^Private_Dirty/{s+=$2} END{print s}' "/proc/$AG/smaps_rollup")
AGENT_IDLE_CLEAN=$(awk '/^Private_Clean/{s+=$2} END{print s}' "/proc/$AG/smaps_rollup")

declare -A BASE=(
  [direct]="http://127.0.0.1:$ORIGIN"
  [nginx]="http://127.0.0.1:$PROXY"
  [tunnel]="http://$GWHTTP/t/bench"
)

echo "bench: small responses" >&2
declare -A R
# nginx's one worker serves both the origin and the proxy: what proxying
# costs it is its CPU in the proxy run less its CPU in the direct run.
NGX=$(pgrep -P "$(cat "$W/nginx.pid")" | head -1)
declare -A NGX_CPU
for c in 1 16 64 256; do
  for t in direct nginx tunnel; do
    [ "$c" = 64 ] && n0=$(cpu_ticks "$NGX")
    if [ "$t" = tunnel ] && [ "$c" = 64 ]; then
      g0=$(cpu_ticks "$GW"); a0=$(cpu_ticks "$AG")
      gs0=$(ctx_switches "$GW"); as0=$(ctx_switches "$AG")
    fi
    R[small_${t}_$c]=$(run_wrk "small_${t}_c$c" "$c" "${BASE[$t]}/100b")
    if [ "$c" = 64 ]; then
      NGX_CPU[$t]=$(awk -v d=$(($(cpu_ticks "$NGX")-n0)) -v t="$TICK" -v r="$(echo "${R[small_${t}_64]}" | awk '{print $6}')" 'BEGIN{printf "%.3f", d/t/r*10000}')
    fi
    if [ "$t" = tunnel ] && [ "$c" = 64 ]; then
      g1=$(cpu_ticks "$GW"); a1=$(cpu_ticks "$AG")
      reqs=$(echo "${R[small_tunnel_64]}" | awk '{print $6}')
      CPU_GW=$(awk -v d=$((g1-g0)) -v t="$TICK" -v r="$reqs" 'BEGIN{printf "%.2f", d/t/r*10000}')
      CPU_AG=$(awk -v d=$((a1-a0)) -v t="$TICK" -v r="$reqs" 'BEGIN{printf "%.2f", d/t/r*10000}')
      CSW_GW=$(awk -v d=$(($(ctx_switches "$GW")-gs0)) -v r="$reqs" 'BEGIN{printf "%.2f", d/r}')
      CSW_AG=$(awk -v d=$(($(ctx_switches "$AG")-as0)) -v r="$reqs" 'BEGIN{printf "%.2f", d/r}')
    fi
  done
done
# System calls per request (100 B, c=64), when perf is installed.
SYSCALLS="n/a (perf not installed)"
if command -v perf >/dev/null 2>&1; then
  perf stat -x, -e raw_syscalls:sys_enter -p "$GW" -o "$RAW/perf-gw.csv" -- sleep "$DUR" &
  PG=$!
  perf stat -x, -e raw_syscalls:sys_enter -p "$AG" -o "$RAW/perf-ag.csv" -- sleep "$DUR" &
  PA=$!
  sc=$(run_wrk "small_tunnel_c64_syscalls" 64 "${BASE[tunnel]}/100b")
  wait "$PG" "$PA" 2>/dev/null || true
  sreqs=$(echo "$sc" | awk '{print $6}')
  sg=$(awk -F, '/raw_syscalls/{print $1}' "$RAW/perf-gw.csv")
  sa=$(awk -F, '/raw_syscalls/{print $1}' "$RAW/perf-ag.csv")
  if [[ "$sg" =~ ^[0-9]+$ && "$sa" =~ ^[0-9]+$ ]]; then
    SYSCALLS="gateway $(awk -v a="$sg" -v r="$sreqs" 'BEGIN{printf "%.1f", a/r}'), agent $(awk -v a="$sa" -v r="$sreqs" 'BEGIN{printf "%.1f", a/r}')"
  else
    SYSCALLS="n/a (perf could not count: see raw/perf-*.csv)"
  fi
fi

echo "bench: 1 MiB responses" >&2
for c in 1 16 64 256; do
  for t in direct nginx tunnel; do
    [ "$t" = tunnel ] && [ "$c" = 256 ] && reset_peak "$AG"
    R[big_${t}_$c]=$(run_wrk "big_${t}_c$c" "$c" "${BASE[$t]}/1m")
    [ "$t" = tunnel ] && [ "$c" = 256 ] && AG_PEAK_BIG=$(peak_kb "$AG")
  done
done

echo "bench: 1 GiB transfers" >&2
GW_BEFORE=$(rss_kb "$GW"); AG_BEFORE=$(rss_kb "$AG")
DL_DIRECT=$(curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$ORIGIN/1g")
reset_peak "$GW"; reset_peak "$AG"
DL_TUNNEL=$(curl -s -o /dev/null -w '%{speed_download}' "http://$GWHTTP/t/bench/1g")
GW_PEAK_DL=$(peak_kb "$GW"); AG_PEAK_DL=$(peak_kb "$AG")
UP_DIRECT=$(curl -s -o /dev/null -w '%{speed_upload}' -T "$W/www/1g" "http://127.0.0.1:$SINK/upload")
reset_peak "$GW"; reset_peak "$AG"
UP_TUNNEL=$(curl -s -o /dev/null -w '%{speed_upload}' -T "$W/www/1g" "http://$GWHTTP/t/sink-bench/upload")
GW_PEAK_UP=$(peak_kb "$GW"); AG_PEAK_UP=$(peak_kb "$AG")

echo "bench: 1000 slow requests in flight on one agent" >&2
SLOW=$(run_wrk slow_1000 1000 "http://$GWHTTP/t/sink-bench/slow?ms=1000" 10)
SLOW_DIRECT=$(run_wrk slow_1000_direct 1000 "http://127.0.0.1:$SINK/slow?ms=1000" 10)

echo "bench: a slow visitor beside 64 fast ones" >&2
FAST_ALONE=$(run_wrk fast_alone 64 "${BASE[tunnel]}/100b")
curl -s -o /dev/null --limit-rate 10k "http://$GWHTTP/t/bench/1g" &
SLOWV=$!
FAST_WITH=$(run_wrk fast_with_slow 64 "${BASE[tunnel]}/100b")
kill "$SLOWV" 2>/dev/null; wait "$SLOWV" 2>/dev/null || true

# Stop the load set-up before the idle-agent runs.
kill "$AG" "$GW" 2>/dev/null || true
wait "$AG" "$GW" 2>/dev/null || true

echo "bench: idle agents" >&2
declare -A IDLE
for n in $AGENT_COUNTS; do
  build/tools/bench/bench_agents --write-credentials "$W/idle.txtpb" --count "$n"
  GP=$(free_port); HP=$(free_port)
  start_gw() {
    build/server/gateway-tunnel --insecure --admin-addr "" --grpc-addr "127.0.0.1:$GP" --http-addr "127.0.0.1:$HP" --ops-addr "" \
      --credentials "$W/idle.txtpb" --log-level error >"$W/igw.out" 2>>"$RAW/idle-gateway.err" &
    IGW=$!
    wait_line "$W/igw.out" '^http ' 20 >/dev/null
  }
  start_gw
  base=$(rss_kb "$IGW")
  build/tools/bench/bench_agents --gateway "127.0.0.1:$GP" --credentials "$W/idle.txtpb" \
    --count "$n" >"$W/fleet.out" 2>"$RAW/fleet-$n.err" &
  FLEET=$!
  conn_s=$(wait_line "$W/fleet.out" '^connected ' 180 | awk '{print $4}')
  full=$(rss_kb "$IGW")
  per=$(awk -v a="$full" -v b="$base" -v n="$n" 'BEGIN{printf "%.1f", (a-b)/n}')
  kill -9 "$IGW"; wait "$IGW" 2>/dev/null || true
  start_gw
  back_s=$(wait_line "$W/fleet.out" '^reconnected ' 180 | awk '{print $4}')
  IDLE[$n]="$per $conn_s $back_s $base $full"
  kill "$FLEET" "$IGW" 2>/dev/null || true
  wait "$FLEET" "$IGW" 2>/dev/null || true
done

# --- report ----------------------------------------------------------------
f() { echo "$1" | awk -v i="$2" '{print $i}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
fmt() { awk -v v="$1" -v p="${2:-0}" 'BEGIN{printf "%.*f", p, v}'; }
{
  echo "## Benchmark results"
  echo
  echo "Command: \`tools/bench/run.sh\` — $(date -u +%F), $(nproc) cores ($(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo | sed 's/^ //')), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Debian $(cat /etc/debian_version); loads from wrk on the same machine (all on 127.0.0.1), ${DUR} s each."
  echo
  echo "### 100-byte responses, keep-alive"
  echo
  echo "| concurrency | direct req/s | nginx proxy req/s | tunnel req/s | tunnel ÷ direct | p50 direct / nginx / tunnel (ms) | p99 direct / nginx / tunnel (ms) |"
  echo "|---|---|---|---|---|---|---|"
  for c in 1 16 64 256; do
    d=${R[small_direct_$c]}; n=${R[small_nginx_$c]}; t=${R[small_tunnel_$c]}
    echo "| $c | $(fmt "$(f "$d" 1)") | $(fmt "$(f "$n" 1)") | $(fmt "$(f "$t" 1)") | $(ratio "$(f "$t" 1)" "$(f "$d" 1)") | $(f "$d" 2) / $(f "$n" 2) / $(f "$t" 2) | $(f "$d" 3) / $(f "$n" 3) / $(f "$t" 3) |"
  done
  echo
  echo "### 1 MiB responses"
  echo
  echo "| concurrency | direct MiB/s | nginx proxy MiB/s | tunnel MiB/s | tunnel ÷ direct | p50 direct / nginx / tunnel (ms) | p99 direct / nginx / tunnel (ms) |"
  echo "|---|---|---|---|---|---|---|"
  for c in 1 16 64 256; do
    d=${R[big_direct_$c]}; n=${R[big_nginx_$c]}; t=${R[big_tunnel_$c]}
    echo "| $c | $(fmt "$(f "$d" 4)") | $(fmt "$(f "$n" 4)") | $(fmt "$(f "$t" 4)") | $(ratio "$(f "$t" 4)" "$(f "$d" 4)") | $(f "$d" 2) / $(f "$n" 2) / $(f "$t" 2) | $(f "$d" 3) / $(f "$n" 3) / $(f "$t" 3) |"
  done
  echo
  echo "### 1 GiB through one stream"
  echo
  echo "| transfer | direct MB/s | tunnel MB/s | gateway RSS before → peak (MiB) | agent RSS before → peak (MiB) |"
  echo "|---|---|---|---|---|"
  mb() { awk -v v="$1" 'BEGIN{printf "%.0f", v/1e6}'; }
  mib() { awk -v v="$1" 'BEGIN{printf "%.1f", v/1024}'; }
  echo "| download | $(mb "$DL_DIRECT") | $(mb "$DL_TUNNEL") | $(mib "$GW_BEFORE") → $(mib "$GW_PEAK_DL") | $(mib "$AG_BEFORE") → $(mib "$AG_PEAK_DL") |"
  echo "| upload | $(mb "$UP_DIRECT") | $(mb "$UP_TUNNEL") | $(mib "$GW_BEFORE") → $(mib "$GW_PEAK_UP") | $(mib "$AG_BEFORE") → $(mib "$AG_PEAK_UP") |"
  echo
  echo "### Other workloads"
  echo
  echo "| workload | result |"
  echo "|---|---|"
  echo "| 1,000 concurrent 1 s requests on one agent stream (10 s) | tunnel: $(f "$SLOW" 6) requests, $(f "$SLOW" 5) errors, p50 $(f "$SLOW" 2) ms, p99 $(f "$SLOW" 3) ms; direct: $(f "$SLOW_DIRECT" 5) errors, p99 $(f "$SLOW_DIRECT" 3) ms |"
  echo "| 64 fast visitors (100 B) alone / beside a 10 KB/s visitor | p99 $(f "$FAST_ALONE" 3) ms / $(f "$FAST_WITH" 3) ms ($(ratio "$(f "$FAST_WITH" 3)" "$(f "$FAST_ALONE" 3)")×), req/s $(fmt "$(f "$FAST_ALONE" 1)") / $(fmt "$(f "$FAST_WITH" 1)") |"
  echo "| CPU seconds per 10k requests (100 B, c=64) | gateway $CPU_GW s, agent $CPU_AG s; nginx's proxying $(awk -v a="${NGX_CPU[nginx]}" -v b="${NGX_CPU[direct]}" 'BEGIN{printf "%.2f", a-b}') s (its worker: $(fmt "${NGX_CPU[nginx]}" 2) s as origin and proxy, $(fmt "${NGX_CPU[direct]}" 2) s as origin alone) |"
  echo "| context switches per request (100 B, c=64) | gateway $CSW_GW, agent $CSW_AG |"
  echo "| system calls per request (100 B, c=64) | $SYSCALLS |"
  echo "| agent peak RSS, 256 concurrent 1 MiB responses | $(mib "$AG_PEAK_BIG") MiB |"
  echo "| agent idle RSS | $(mib "$AGENT_IDLE_RSS") MiB: $(mib "$AGENT_IDLE_DIRTY") MiB private dirty (heap, stacks, relocated data: the agent's own memory), $(mib "$AGENT_IDLE_CLEAN") MiB private clean (library code no other process maps now), the rest shared library pages |"
  for n in $AGENT_COUNTS; do
    v=${IDLE[$n]}
    echo "| $n idle agents | gateway $(f "$v" 1) KiB RSS per agent ($(mib "$(f "$v" 4)") → $(mib "$(f "$v" 5)") MiB); all connected in $(f "$v" 2) s; after a gateway kill -9 and restart, all back in $(f "$v" 3) s |"
  done
} >"$OUT/results.md"

# Chart: requests/s for 100-byte responses by concurrency.
for c in 1 16 64 256; do
  echo "$c $(f "${R[small_direct_$c]}" 1) $(f "${R[small_nginx_$c]}" 1) $(f "${R[small_tunnel_$c]}" 1)"
done >"$RAW/small.dat"
gnuplot <<GP 2>"$RAW/gnuplot.err" || true
set terminal pngcairo size 900,500
set output "$OUT/chart.png"
set title "100-byte responses, keep-alive (requests/s, higher is better)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xlabel "concurrent connections"
set ylabel "requests/s"
set key top left
set grid ytics
plot "$RAW/small.dat" using 2:xtic(1) title "direct", '' using 3 title "nginx proxy", '' using 4 title "tunnel"
GP
cat "$OUT/results.md"
echo
echo "bench: results in $OUT" >&2
