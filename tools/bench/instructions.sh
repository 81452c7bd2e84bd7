#!/usr/bin/env bash
# Instructions per small request, counted by callgrind (user space only):
# 100-byte keep-alive requests through gateway, agent and an nginx origin,
# all on 127.0.0.1. Unlike req/s and CPU seconds on a shared VM, which move
# by ±30 % with the machine's load, these counts repeat to within 2–3 %
# (how many envelopes share a gRPC message varies a little), so a change to
# a per-request path that saves more than that shows in a run or two before
# and after. Each process is measured in its own run (the other runs natively):
# a warm-up, then the counters are reset and N requests go at concurrency C
# (ab -k; every request must succeed).
#
# Usage: tools/bench/instructions.sh [--requests N] [--concurrency C]
#   defaults: 3000 requests at concurrency 16.
# Output: results/instructions-<time>/{results.md,raw/} and the table on
# stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh

N=3000
C=16
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N="${2:?--requests needs a number}"; shift 2 ;;
    --concurrency) C="${2:?--concurrency needs a number}"; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "instructions.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if ! [[ "$N" =~ ^[1-9][0-9]*$ && "$C" =~ ^[1-9][0-9]*$ ]] || [ "$C" -gt "$N" ]; then
  echo "instructions.sh: --requests and --concurrency must be positive, concurrency at most requests" >&2
  exit 2
fi

need=()
for p in valgrind apache2-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
bench_setup
bench_workdir instructions
start_100b_origin

# measure WHO (gateway|agent): sets IR, its instructions per request.
measure() {
  local who=$1 wrap pid dumps total
  wrap="valgrind --tool=callgrind --callgrind-out-file=$RAW/callgrind.$who.%p"
  if [ "$who" = gateway ]; then
    GW_WRAP="$wrap" start_tunnel build/server/gateway-tunnel 1200 -- --to "http://127.0.0.1:$ORIGIN"
    pid=$GW
  else
    AGENT_WRAP="$wrap" start_tunnel build/server/gateway-tunnel 1200 -- --to "http://127.0.0.1:$ORIGIN"
    pid=$AG
  fi
  ab -q -k -n 500 -c "$C" "http://$GWHTTP/t/bench/100b" >"$RAW/ab-warm.$who" 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1  # dump 1: start-up and warm-up
  ab -q -k -n "$N" -c "$C" "http://$GWHTTP/t/bench/100b" >"$RAW/ab.$who" 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1  # dump 2: exactly the N requests
  if ! grep -q "^Failed requests: *0$" "$RAW/ab.$who" ||
    ! grep -q "^Complete requests: *$N$" "$RAW/ab.$who"; then
    echo "instructions.sh: requests failed during the $who run (see $RAW/ab.$who)" >&2
    exit 1
  fi
  dumps=("$RAW"/callgrind."$who".*.2)
  total=$(callgrind_annotate "${dumps[0]}" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  kill "$AG" "$GW" 2>/dev/null || true
  wait "$AG" "$GW" 2>/dev/null || true
  IR=$((total / N))
}

measure gateway
GW_IR=$IR
measure agent
AG_IR=$IR
{
  echo "| 100 B, keep-alive, c=$C, $N requests | instructions per request |"
  echo "|---|---|"
  echo "| gateway | $GW_IR |"
  echo "| agent | $AG_IR |"
  echo "| together | $((GW_IR + AG_IR)) |"
} >"$OUT/results.md"
cat "$OUT/results.md"
