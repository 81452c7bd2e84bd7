#!/usr/bin/env bash
# WebSocket (HTTP/1.1 upgrade) passthrough with real parts: a python3-
# websockets echo service behind agent-tunnel, gateway-tunnel, and a real
# WebSocket client. Usage: websocket_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
PY=/usr/bin/python3  # Debian's python3-websockets imports only here
enter_workdir websocket_e2e

issue_token "$BUILD" cam-01
$PY -u "$HERE/ws_echo.py" >ws.out 2>ws.err &
pids+=($!)
WS_PORT=$(wait_for_line ws.out '^port ' 10 | awk '{print $2}')
"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --credentials creds.txtpb \
  --heartbeat-interval 200ms --heartbeat-timeout 1s >gw.out 2>gw.err &
pids+=($!)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line gw.out '^http ' 10 | awk '{print $2}')
TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect \
  --gateway "$GRPC" --id cam-01 --token "$TOKEN" --insecure \
  --to "http://127.0.0.1:$WS_PORT" >agent.out 2>agent.err &
AGENT=$!
pids+=($AGENT)
wait_for_line agent.out '/t/cam-01/$' 20 >/dev/null

if AGENT_PID=$AGENT timeout 120 $PY "$HERE/ws_client_check.py" "ws://$HTTP/t/cam-01" >client.out 2>&1; then
  pass "websocket checks (path routing)"
else
  fail "websocket checks (path routing)"
fi
cat client.out
echo "websocket_e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
