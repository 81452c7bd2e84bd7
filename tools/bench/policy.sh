#!/usr/bin/env bash
# What visitor policies cost: 100-byte responses through gateway + agent to
# an nginx origin (wrk, keep-alive, all on 127.0.0.1, each load bounded in
# time) for a public tunnel, a tunnel with basic auth (the verified-
# credential cache on, the default), and with the cache off
# (--basic-auth-cache-ttl 0: one PBKDF2 of 100000 rounds per request),
# each after a one-second warm-up on the same connections.
#
# Usage: tools/bench/policy.sh [--quick]   (--quick: 2 s per load)
# Output: results/policy-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh
DUR=5
if [[ "${1:-}" == "--quick" ]]; then DUR=2; fi

bench_setup
bench_workdir policy
start_100b_origin

ENTRY=$(echo 'bench-pw' | build/tools/tunnelctl hash-password bench)
AUTH="Authorization: Basic $(printf 'bench:bench-pw' | base64)"

row() {  # row LABEL CONC [GATEWAY FLAGS...] -- [AGENT FLAGS...]
  local label=$1 conc=$2
  shift 2
  start_tunnel build/server/gateway-tunnel 256 "$@" --to "http://127.0.0.1:$ORIGIN"
  local r
  # A warm-up second first: the first request of each connection pays the
  # slow hash once (64 of them queue on the gateway's two hash threads).
  run_wrk "$label-warmup" "$conc" "http://$GWHTTP/t/bench/100b" 1 >/dev/null
  r=$(run_wrk "$label-c$conc" "$conc" "http://$GWHTTP/t/bench/100b")
  read -r rps p50 p99 _ errs reqs <<<"$r"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$conc" "$rps" "$p50" "$p99" "$errs" | tee -a "$OUT/results.md"
  kill "$AG" "$GW" 2>/dev/null || true
  wait "$AG" "$GW" 2>/dev/null || true
}

{
  echo "# Visitor policy cost ($(date -u +%Y-%m-%dT%H:%MZ), ${DUR}s per load, $(nproc) cores)"
  echo
  echo "| tunnel | connections | req/s | p50 ms | p99 ms | errors |"
  echo "|---|---|---|---|---|---|"
} | tee "$OUT/results.md"
row public 64 --
WRK_HEADER="$AUTH" row "basic auth (cached)" 64 -- --basic-auth "$ENTRY"
WRK_HEADER="$AUTH" row "basic auth (no cache)" 64 --basic-auth-cache-ttl 0 -- --basic-auth "$ENTRY"
WRK_HEADER="Authorization: Basic $(printf 'bench:wrong' | base64)" \
  row "basic auth, wrong password" 64 -- --basic-auth "$ENTRY"
echo
echo "results: $OUT/results.md"
