#!/usr/bin/env bash
# Two builds side by side: tunnel A (gateway + agent) and tunnel B run at
# once against one nginx origin, and short wrk loads alternate between them
# (A then B, then B then A, ...), so both see the same machine. On this
# shared 2-core VM a single run moves by ±30 %; a paired run shows a change
# of 10 %. Reports the requests each served and the CPU seconds per 10k
# requests of each process, summed over the rounds. Both tunnels and wrk
# share the cores, so the CPU figures are above run.sh's: compare A with B.
#
# Usage: tools/bench/paired.sh --a-gateway BIN --a-agent BIN
#          [--b-gateway BIN] [--b-agent BIN] [--concurrency C] [--rounds R]
#          [--seconds S] [--size 100b|1m]
#   B defaults to this checkout's build; C=64, R=6, S=3, size 100b.
#   A build of another commit: git worktree add /tmp/a COMMIT &&
#   cmake -S /tmp/a -B /tmp/a/build -G Ninja -DCMAKE_BUILD_TYPE=Release
#   -DTUNNEL_BUILD_TESTS=OFF && ninja -C /tmp/a/build gateway-tunnel
#   agent-tunnel
# Output: results/paired-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source tools/bench/lib.sh

A_GW="" A_AG="" B_GW=build/server/gateway-tunnel B_AG=build/agent/agent-tunnel
C=64 ROUNDS=6 DUR=3 SIZE=100b
while [ $# -gt 0 ]; do
  case "$1" in
    --a-gateway) A_GW="${2:?--a-gateway needs a binary}"; shift 2 ;;
    --a-agent) A_AG="${2:?--a-agent needs a binary}"; shift 2 ;;
    --b-gateway) B_GW="${2:?--b-gateway needs a binary}"; shift 2 ;;
    --b-agent) B_AG="${2:?--b-agent needs a binary}"; shift 2 ;;
    --concurrency) C="${2:?--concurrency needs a number}"; shift 2 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
    --seconds) DUR="${2:?--seconds needs a number}"; shift 2 ;;
    --size) SIZE="${2:?--size needs 100b or 1m}"; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "paired.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$A_GW" ] || [ -z "$A_AG" ]; then
  echo "paired.sh: --a-gateway and --a-agent are required (see --help)" >&2
  exit 2
fi
case "$SIZE" in 100b | 1m) ;; *) echo "paired.sh: --size is 100b or 1m" >&2; exit 2 ;; esac
for b in "$A_GW" "$A_AG" "$B_GW" "$B_AG"; do
  [ -x "$b" ] || { echo "paired.sh: $b is not an executable" >&2; exit 2; }
done

bench_setup
bench_workdir paired
mkdir -p "$W/www"
head -c 100 /dev/urandom >"$W/www/100b"
head -c 1048576 /dev/urandom >"$W/www/1m"
chmod -R a+rX "$W"
start_nginx
AGENT_BIN="$A_AG" start_tunnel "$A_GW" 1200 -- --to "http://127.0.0.1:$ORIGIN"
GW_A=$GW AG_A=$AG HTTP_A=$GWHTTP
AGENT_BIN="$B_AG" start_tunnel "$B_GW" 1200 -- --to "http://127.0.0.1:$ORIGIN"
GW_B=$GW AG_B=$AG HTTP_B=$GWHTTP
run_wrk warm-a 16 "http://$HTTP_A/t/bench/$SIZE" 1 >/dev/null
run_wrk warm-b 16 "http://$HTTP_B/t/bench/$SIZE" 1 >/dev/null

declare -A N=([a]=0 [b]=0) G=([a]=0 [b]=0) A=([a]=0 [b]=0) E=([a]=0 [b]=0)
one() {  # one LABEL HTTP GW_PID AG_PID ROUND
  local g0 a0 errs reqs
  g0=$(cpu_ticks "$3"); a0=$(cpu_ticks "$4")
  read -r _ _ _ _ errs reqs <<<"$(run_wrk "$1-$5" "$C" "http://$2/t/bench/$SIZE")"
  N[$1]=$((N[$1] + reqs)); E[$1]=$((E[$1] + errs))
  G[$1]=$((G[$1] + $(cpu_ticks "$3") - g0)); A[$1]=$((A[$1] + $(cpu_ticks "$4") - a0))
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    one a "$HTTP_A" "$GW_A" "$AG_A" "$r"; one b "$HTTP_B" "$GW_B" "$AG_B" "$r"
  else
    one b "$HTTP_B" "$GW_B" "$AG_B" "$r"; one a "$HTTP_A" "$GW_A" "$AG_A" "$r"
  fi
done
per10k() { awk -v d="$1" -v n="$2" -v t="$TICK" 'BEGIN{printf "%.3f", d/t/n*10000}'; }
{
  echo "Command: \`tools/bench/paired.sh\` — $(date -u +%Y-%m-%d), $SIZE at c=$C, $ROUNDS rounds of ${DUR} s each way"
  echo
  echo "| tunnel | requests | errors | gateway CPU s / 10k | agent CPU s / 10k |"
  echo "|---|---|---|---|---|"
  echo "| A ($A_GW, $A_AG) | ${N[a]} | ${E[a]} | $(per10k "${G[a]}" "${N[a]}") | $(per10k "${A[a]}" "${N[a]}") |"
  echo "| B ($B_GW, $B_AG) | ${N[b]} | ${E[b]} | $(per10k "${G[b]}" "${N[b]}") | $(per10k "${A[b]}" "${N[b]}") |"
  echo
  echo "B served $(awk -v a="${N[a]}" -v b="${N[b]}" 'BEGIN{printf "%.2f", b/a}')× A's requests in the same time."
} >"$OUT/results.md"
cat "$OUT/results.md"
