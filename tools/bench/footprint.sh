#!/usr/bin/env bash
# The agent's footprint on a device: stripped binary size per architecture
# (native, and every cross build in dist/ from tools/cross/build-agent.sh),
# the shared libraries it needs, and, natively, idle RSS, peak RSS under
# load and CPU seconds per 10k requests, at the default --max-concurrent and
# at a small device's setting. Everything on 127.0.0.1, each load bounded.
#
# Usage: tools/bench/footprint.sh [--max-concurrent N]   (default 8)
# Output: results/footprint-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=10
SMALL=8
if [[ "${1:-}" == "--max-concurrent" && -n "${2:-}" ]]; then SMALL=$2; fi

bench_setup
bench_workdir footprint

# --- sizes -------------------------------------------------------------------
strip -o "$W/agent-native" build/agent/agent-tunnel
declare -A SIZE=([$(uname -m)]=$(stat -c %s "$W/agent-native"))
for bin in dist/*/agent-tunnel; do
  [ -f "$bin" ] && SIZE[$(basename "$(dirname "$bin")")]=$(stat -c %s "$bin")
done
LIBS=$(readelf -d build/agent/agent-tunnel | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')

# --- an nginx origin, the gateway -------------------------------------------
mkdir -p "$W/www"
head -c 100 /dev/urandom >"$W/www/100b"
head -c 1048576 /dev/urandom >"$W/www/1m"
chmod -R a+rX "$W"
ORIGIN=$(free_port)
cat >"$W/nginx.conf" <<NGINX
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$ORIGIN; root $W/www; }
}
NGINX
nginx -c "$W/nginx.conf" -p "$W" -g 'daemon off;' 2>"$RAW/nginx.err" &
pids+=($!)
build/tools/tunnelctl token issue --id dev --credentials "$W/creds.txtpb" >"$W/issued" 2>/dev/null
TOKEN=$(awk '/^token:/{print $2}' "$W/issued"); SECRET=$(awk '/^secret:/{print $2}' "$W/issued")
build/server/gateway-tunnel --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --ops-addr "" \
  --credentials "$W/creds.txtpb" --log-level warning >"$W/gw.out" 2>"$RAW/gateway.err" &
pids+=($!)
GRPC=$(wait_line "$W/gw.out" '^grpc ' 10 | awk '{print $2}')
GWHTTP=$(wait_line "$W/gw.out" '^http ' 10 | awk '{print $2}')
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN/100b" && break; sleep 0.05; done

# measure MAX_CONCURRENT -> "idle_kb idle_private_kb small_peak_kb
#   small_cpu_per_10k small_rps big_peak_kb big_mibps errors"
measure() {
  local mc=$1 ag
  TUNNEL_SECRET="$SECRET" build/agent/agent-tunnel connect --gateway "$GRPC" \
    --id dev --token "$TOKEN" --insecure --max-concurrent "$mc" \
    --to "http://127.0.0.1:$ORIGIN" --log-level warning \
    >"$W/agent.out" 2>"$RAW/agent-$mc.err" &
  ag=$!
  pids+=($ag)
  wait_line "$W/agent.out" '/t/dev/' 20 >/dev/null
  curl -sf -o /dev/null "http://$GWHTTP/t/dev/100b"
  local idle idle_priv
  idle=$(rss_kb "$ag")
  idle_priv=$(awk '/^Private_Dirty/{s+=$2} END{print s}' "/proc/$ag/smaps_rollup")
  reset_peak "$ag"
  local a0 a1 small big
  a0=$(cpu_ticks "$ag")
  small=$(run_wrk "small_mc$mc" 64 "http://$GWHTTP/t/dev/100b")
  a1=$(cpu_ticks "$ag")
  local small_peak cpu
  small_peak=$(peak_kb "$ag")
  cpu=$(awk -v d=$((a1 - a0)) -v t="$TICK" -v r="$(echo "$small" | awk '{print $6}')" \
    'BEGIN{printf "%.2f", d/t/r*10000}')
  reset_peak "$ag"
  big=$(run_wrk "big_mc$mc" 64 "http://$GWHTTP/t/dev/1m")
  local big_peak errors
  big_peak=$(peak_kb "$ag")
  errors=$(($(echo "$small" | awk '{print $5}') + $(echo "$big" | awk '{print $5}')))
  kill -TERM "$ag"
  wait "$ag" 2>/dev/null || true
  echo "$idle $idle_priv $small_peak $cpu $(echo "$small" | awk '{print $1}') $big_peak $(echo "$big" | awk '{print $4}') $errors"
}
echo "footprint: default --max-concurrent" >&2
DEFAULT_MC=$(build/agent/agent-tunnel connect --help 2>&1 |
  grep -A1 -- '--max-concurrent' | sed -n 's/.*\[default: \([0-9]*\)\].*/\1/p')
DEFAULT_MC=${DEFAULT_MC:-256}
M_DEFAULT=$(measure "$DEFAULT_MC")
echo "footprint: --max-concurrent $SMALL" >&2
M_SMALL=$(measure "$SMALL")

# --- report ------------------------------------------------------------------
f() { echo "$1" | awk -v i="$2" '{print $i}'; }
mib() { awk -v v="$1" 'BEGIN{printf "%.1f", v/1024}'; }
{
  echo "## Agent footprint"
  echo
  echo "Command: \`tools/bench/footprint.sh\` — $(date -u +%F), $(nproc) cores ($(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo | sed 's/^ //')), Debian $(cat /etc/debian_version); wrk with 64 connections through gateway + agent to an nginx origin, ${DUR} s per load, all on 127.0.0.1."
  echo
  echo "| architecture | stripped agent-tunnel |"
  echo "|---|---|"
  for arch in "${!SIZE[@]}"; do
    echo "| $arch | $(awk -v v="${SIZE[$arch]}" 'BEGIN{printf "%.0f KiB", v/1024}') |"
  done | sort
  echo
  echo "Shared libraries ($(echo "$LIBS" | wc -l)): $(echo "$LIBS" | tr '\n' ' ')"
  echo
  echo "| native ($(uname -m)) | --max-concurrent $DEFAULT_MC (default) | --max-concurrent $SMALL |"
  echo "|---|---|---|"
  echo "| idle RSS (private dirty) | $(mib "$(f "$M_DEFAULT" 1)") MiB ($(mib "$(f "$M_DEFAULT" 2)") MiB) | $(mib "$(f "$M_SMALL" 1)") MiB ($(mib "$(f "$M_SMALL" 2)") MiB) |"
  echo "| peak RSS, 100 B responses | $(mib "$(f "$M_DEFAULT" 3)") MiB | $(mib "$(f "$M_SMALL" 3)") MiB |"
  echo "| peak RSS, 1 MiB responses | $(mib "$(f "$M_DEFAULT" 6)") MiB | $(mib "$(f "$M_SMALL" 6)") MiB |"
  echo "| CPU seconds per 10k requests (100 B) | $(f "$M_DEFAULT" 4) s | $(f "$M_SMALL" 4) s |"
  echo "| requests/s (100 B) | $(printf %.0f "$(f "$M_DEFAULT" 5)") | $(printf %.0f "$(f "$M_SMALL" 5)") |"
  echo "| MiB/s (1 MiB) | $(printf %.0f "$(f "$M_DEFAULT" 7)") | $(printf %.0f "$(f "$M_SMALL" 7)") |"
  echo "| errors | $(f "$M_DEFAULT" 8) | $(f "$M_SMALL" 8) |"
} >"$OUT/results.md"
cat "$OUT/results.md"
echo
echo "footprint: results in $OUT" >&2
