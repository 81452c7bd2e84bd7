#!/usr/bin/env bash
# Process-level test of the visitor limits as the README configures them:
# the gateway binary with limits from a config file and from flags, the
# agent binary, a real local service, curl as the visitor. Checks the 429
# with X-RateLimit-* and Retry-After, the headers on successes, 413 for a
# large upload, the counters on /metrics, and that bad values are refused.
# Usage: limits_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
GW="$BUILD/server/gateway-tunnel"
PY=/usr/bin/python3

enter_workdir limits_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_CONFIG TUNNEL_TUNNEL_REQUESTS_PER_MINUTE TUNNEL_MAX_REQUEST_BODY || true

# Bad values are usage errors that name the flag or the field.
"$GW" --insecure --ops-addr "" --admin-addr "" --max-request-body -5 \
  >/dev/null 2>neg.err
check "a negative --max-request-body exits 2" test $? = 2
check "and says which flag" grep -q -- '--max-request-body' neg.err
"$GW" --insecure --ops-addr "" --admin-addr "" --tunnel-concurrent-requests many \
  >/dev/null 2>nan.err
check "a non-number exits 2" test $? = 2
echo 'max_response_body: -1' >bad.txtpb
"$GW" --insecure --ops-addr "" --admin-addr "" --config bad.txtpb \
  >/dev/null 2>badcfg.err
check "a negative max_response_body in a config file exits 2" test $? = 2

issue_token "$BUILD" cam-01
start_site

printf 'tunnel_requests_per_minute: 2\nmax_request_body: 100\n' >gateway.txtpb
"$GW" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --admin-addr "" --config gateway.txtpb \
  --tunnel-requests-per-minute 3 --credentials creds.txtpb >gw.out 2>gw.err &
pids+=($!)
OPS=$(wait_for_line gw.out '^ops ' 10 | awk '{print $2}')
check "gateway started" test -n "$OPS"
GRPC=$(awk '/^grpc /{print $2}' gw.out)
HTTP=$(awk '/^http /{print $2}' gw.out)
BASE="http://$HTTP"

TUNNEL_SECRET="$SECRET" TUNNEL_TOKEN="$TOKEN" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-01 --insecure \
  --to "http://127.0.0.1:$SVC_PORT" --to "api=http://127.0.0.1:$SVC_PORT" \
  >agent.out 2>agent.err &
pids+=($!)
check "agent connected" test -n "$(wait_for_line agent.out '/t/api-cam-01/$' 20)"

# The flag (3) overrides the file (2).
for i in 1 2 3; do
  curl -s --max-time 10 -D ok$i.h -o ok$i.html "$BASE/t/cam-01/"
done
check "requests within the limit pass" grep -q "hello from the device" ok3.html
check "successes carry X-RateLimit-Limit" grep -qi '^X-RateLimit-Limit: 3' ok1.h
check "X-RateLimit-Remaining counts down" \
  bash -c "grep -qi '^X-RateLimit-Remaining: 2' ok1.h && grep -qi '^X-RateLimit-Remaining: 0' ok3.h"
check "X-RateLimit-Reset is seconds until the window ends" \
  grep -Eqi '^X-RateLimit-Reset: ([1-9]|[1-5][0-9]|60)\s*$' ok1.h
curl -s --max-time 10 -D over.h -o over.json "$BASE/t/cam-01/"
check "over the limit: 429" grep -q '^HTTP/1.1 429' over.h
check "with X-Tunnel-Error: tunnel_rate_limited" \
  grep -qi '^X-Tunnel-Error: tunnel_rate_limited' over.h
check "with Retry-After" grep -Eqi '^Retry-After: [0-9]+' over.h
check "and a JSON error body" grep -q '"error":"tunnel_rate_limited"' over.json
check "another tunnel is not affected" \
  test "$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$BASE/t/api-cam-01/")" = 200

# max_request_body from the file (the service answers POST with 501).
head -c 101 /dev/zero >big.bin
head -c 100 /dev/zero >fits.bin
check "a body over the limit: 413" test "$(curl -s --max-time 10 -o big.json \
  -w '%{http_code}' --data-binary @big.bin "$BASE/t/api-cam-01/")" = 413
check "named request_too_large" grep -q '"error":"request_too_large"' big.json
check "a body at the limit reaches the service" test "$(curl -s --max-time 10 \
  -o /dev/null -w '%{http_code}' --data-binary @fits.bin "$BASE/t/api-cam-01/")" = 501
check "the service never saw the large one" \
  test "$(grep -c '"POST ' svc.err)" = 1

METRICS=$(curl -s --max-time 10 "http://$OPS/metrics")
check "the 429 is counted" grep -q \
  '^tunnel_limit_rejections_total{limit="tunnel_requests_per_minute"} 1$' <<<"$METRICS"
check "the 413 is counted" grep -q \
  '^tunnel_limit_rejections_total{limit="max_request_body"} 1$' <<<"$METRICS"
# Requests count once their answer is written: poll (bounded).
counted() {
  local deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    curl -s --max-time 10 "http://$OPS/metrics" | grep -qF "$1" && return 0
    sleep 0.05
  done
  return 1
}
check "and the 429 as a request of its tunnel" counted \
  'tunnel_http_requests_total{tunnel="cam-01",code="4xx",error="tunnel_rate_limited"} 1'

echo "passed: $passed, failed: $failed"
test "$failed" = 0
