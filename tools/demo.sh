#!/usr/bin/env bash
# One command from a fresh Debian machine to a working tunnel: installs the
# packages, builds, and starts a demo on this machine — a small local web
# service, gateway-tunnel and agent-tunnel — then prints the curl lines that
# answer through the tunnel. Everything listens on 127.0.0.1 only.
#
# Usage: tools/demo.sh [--check]
#   --check   verify the tunnel answers, then stop everything and exit
#             (what CI runs); without it the demo runs until Ctrl-C.
# Ports: DEMO_GRPC_PORT (8080), DEMO_HTTP_PORT (8082), DEMO_OPS_PORT (8083),
# DEMO_SERVICE_PORT (3000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

GRPC_PORT=${DEMO_GRPC_PORT:-8080}
HTTP_PORT=${DEMO_HTTP_PORT:-8082}
OPS_PORT=${DEMO_OPS_PORT:-8083}
SERVICE_PORT=${DEMO_SERVICE_PORT:-3000}

bash tools/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target gateway-tunnel agent-tunnel tunnelctl

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_for() {  # wait_for FILE REGEX SECONDS
  local deadline=$((SECONDS + $3))
  until grep -Eq "$2" "$1" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "demo: timed out waiting for $2 in $1:" >&2
      cat "$1" "${1%.out}.err" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
}

# 1. A local web service, as on the device.
mkdir -p "$WORK/site"
echo "Hello from the device behind the NAT!" >"$WORK/site/index.html"
python3 -u -m http.server "$SERVICE_PORT" --bind 127.0.0.1 \
  --directory "$WORK/site" >"$WORK/service.out" 2>"$WORK/service.err" &
pids+=($!)
wait_for "$WORK/service.out" "Serving HTTP" 10

# 2. A credential for the agent "demo".
build/tools/tunnelctl token issue --id demo \
  --credentials "$WORK/credentials.txtpb" >"$WORK/issued.txt" 2>/dev/null
TOKEN=$(awk '/^token:/{print $2}' "$WORK/issued.txt")
SECRET=$(awk '/^secret:/{print $2}' "$WORK/issued.txt")

# 3. The gateway (on a public host this would listen on 0.0.0.0).
build/server/gateway-tunnel --insecure --admin-addr "" --grpc-addr "127.0.0.1:$GRPC_PORT" \
  --http-addr "127.0.0.1:$HTTP_PORT" --ops-addr "127.0.0.1:$OPS_PORT" \
  --domain localhost \
  --credentials "$WORK/credentials.txtpb" \
  >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
pids+=($!)
wait_for "$WORK/gateway.out" "^http " 10

# 4. The agent, with its secret in the environment rather than in `ps`.
TUNNEL_SECRET="$SECRET" build/agent/agent-tunnel connect \
  --gateway "127.0.0.1:$GRPC_PORT" --id demo --token "$TOKEN" --insecure \
  --to "http://127.0.0.1:$SERVICE_PORT" \
  >"$WORK/agent.out" 2>"$WORK/agent.err" &
pids+=($!)
wait_for "$WORK/agent.out" "/t/demo/" 20

answer=$(curl -sS --max-time 10 "http://localhost:$HTTP_PORT/t/demo/")
if [[ "$answer" != "Hello from the device behind the NAT!" ]]; then
  echo "demo: the tunnel did not answer as expected: $answer" >&2
  exit 1
fi

echo
echo "The tunnel is up. The agent printed its public URLs:"
sed 's/^/  /' "$WORK/agent.out"
echo
echo "Try:"
echo "  curl http://localhost:$HTTP_PORT/t/demo/"
echo "  curl http://demo.localhost:$HTTP_PORT/"
echo "  curl http://127.0.0.1:$OPS_PORT/healthz      # and /metrics"
echo
echo "It answers: $answer"
if ((CHECK_ONLY)); then
  echo "demo: check passed"
  exit 0
fi
echo "Logs are in $WORK. Press Ctrl-C to stop."
wait
