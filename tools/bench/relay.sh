#!/usr/bin/env bash
# The encrypted relay (agent-tunnel share) against the plain tunnel in the
# same run: 100-byte GETs one after another, a 64 MiB download and a 32 MiB
# upload, pairing time, and memory with 500 idle paired browsers
# (relay_bench.py; the browser's role is played by tests/e2e/relay_client.py
# in Python).
#
# Usage: tools/bench/relay.sh [--quick]
# Output: results/relay-<time>/{results.md,raw/} and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x build/server/gateway-tunnel ] || {
  echo "bench: build first (tools/test.sh or cmake --build build)" >&2
  exit 1
}
out="results/relay-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out/raw"
/usr/bin/python3 -u tools/bench/relay_bench.py "$PWD/build" "$PWD/$out/raw" "$@"
mv "$out/raw/results.md" "$out/results.md"
echo "bench: $out/results.md"
