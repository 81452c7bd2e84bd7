#!/usr/bin/env bash
# What the request inspector costs: 100-byte and 1 MiB responses through
# gateway + agent to an nginx origin (wrk, keep-alive, 64 connections, all
# on 127.0.0.1, each load bounded in time), with the agent's inspector off
# and on (--inspect on a free port, the defaults: 500 requests, 1 MiB per
# body and direction, 64 MiB of bodies in all), each after a one-second
# warm-up; then the agent's RSS with a full ring of 1 MiB responses.
#
# Usage: tools/bench/inspect.sh [--quick]   (--quick: 2 s per load)
# Output: results/inspect-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
if [[ "${1:-}" == "--quick" ]]; then DUR=2; fi

bench_setup
bench_workdir inspect
start_100b_origin
head -c 1048576 /dev/urandom >"$W/www/1m"
chmod a+r "$W/www/1m"

declare -A R
load() {  # load LABEL FILE -> R[LABEL]
  run_wrk "$1-warmup" 64 "http://$GWHTTP/t/bench/$2" 1 >/dev/null
  R[$1]=$(run_wrk "$1" 64 "http://$GWHTTP/t/bench/$2")
}

for mode in off on; do
  flags=()
  if [ "$mode" = on ]; then
    IPORT=$(free_port)
    flags=(--inspect "127.0.0.1:$IPORT")
  fi
  start_tunnel build/server/gateway-tunnel 256 -- --to "http://127.0.0.1:$ORIGIN" "${flags[@]}"
  load "small_$mode" 100b
  # After the 100 B load the ring holds 500 small requests (heads and all).
  [ "$mode" = on ] && RSS_SMALL=$(rss_kb "$AG")
  load "big_$mode" 1m
  if [ "$mode" = on ]; then
    # The ring is full now (500 of the last 1 MiB responses would be 500 MiB:
    # the 64 MiB memory bound holds it to about 64 of them).
    STATUS=$(curl -s "http://127.0.0.1:$IPORT/api/status")
    RSS_ON=$(rss_kb "$AG")
  else
    RSS_OFF=$(rss_kb "$AG")
  fi
  kill "$AG" "$GW" 2>/dev/null || true
  wait "$AG" "$GW" 2>/dev/null || true
done

field() { awk -v i="$2" '{print $i}' <<<"${R[$1]}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
  echo "# Inspector cost ($(date -u +%Y-%m-%dT%H:%MZ), ${DUR}s per load, 64 connections, $(nproc) cores)"
  echo
  echo "| load | inspector off | inspector on | on ÷ off | p99 ms off / on | errors off / on |"
  echo "|---|---|---|---|---|---|"
  printf '| 100 B, req/s | %s | %s | %s | %s / %s | %s / %s |\n' \
    "$(field small_off 1)" "$(field small_on 1)" \
    "$(ratio "$(field small_on 1)" "$(field small_off 1)")" \
    "$(field small_off 3)" "$(field small_on 3)" "$(field small_off 5)" "$(field small_on 5)"
  printf '| 1 MiB, MiB/s | %s | %s | %s | %s / %s | %s / %s |\n' \
    "$(field big_off 4)" "$(field big_on 4)" \
    "$(ratio "$(field big_on 4)" "$(field big_off 4)")" \
    "$(field big_off 3)" "$(field big_on 3)" "$(field big_off 5)" "$(field big_on 5)"
  echo
  echo "Agent RSS after the loads: inspector off $((RSS_OFF / 1024)) MiB; on, ring full of 500 small requests $((RSS_SMALL / 1024)) MiB, ring full of 1 MiB responses (64 MiB of bodies and heads) $((RSS_ON / 1024)) MiB."
  echo "Inspector status at the end: $STATUS"
} | tee "$OUT/results.md"
echo
echo "results: $OUT/results.md"
