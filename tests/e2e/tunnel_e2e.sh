#!/usr/bin/env bash
# Process-level test of the three binaries exactly as the README uses them:
# tunnelctl issues a credential, gateway-tunnel binds port 0 and prints its
# addresses, agent-tunnel takes its secret from the environment and prints
# the public URLs, curl reaches a real local service by path and subdomain.
# Usage: tunnel_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

enter_workdir tunnel_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO || true

issue_token "$BUILD" cam-01
check "tunnelctl issued a token" test -n "$TOKEN" -a -n "$SECRET"

start_site

"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --credentials creds.txtpb >gw.out 2>gw.err &
GW=$!
pids+=($GW)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line gw.out '^http ' 10 | awk '{print $2}')
check "gateway printed its grpc address" test -n "$GRPC"
check "gateway printed its http address" test -n "$HTTP"
HTTP_PORT=${HTTP##*:}

# A port nothing listens on: the "down" tunnel's service is unreachable.
DOWN_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TUNNEL_SECRET="$SECRET" TUNNEL_TOKEN="$TOKEN" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-01 --insecure \
  --to "http://127.0.0.1:$SVC_PORT" --to "down=http://127.0.0.1:$DOWN_PORT" \
  >agent.out 2>agent.err &
AGENT=$!
pids+=($AGENT)
URL=$(wait_for_line agent.out '^http://cam-01\.' 20)
PATH_URL=$(wait_for_line agent.out '/t/cam-01/$' 20)
check "agent printed the subdomain URL" \
  test "$URL" = "http://cam-01.localhost:$HTTP_PORT/"
check "agent printed the path URL" \
  test "$PATH_URL" = "http://localhost:$HTTP_PORT/t/cam-01/"
check "the secret is not on the agent's command line" \
  bash -c "! tr '\0' ' ' </proc/$AGENT/cmdline | grep -q -- '$SECRET'"

body=$(curl -sS --max-time 10 "http://127.0.0.1:$HTTP_PORT/t/cam-01/")
check "curl by path answers through the tunnel" \
  test "$body" = "hello from the device"
body=$(curl -sS --max-time 10 --resolve "cam-01.localhost:$HTTP_PORT:127.0.0.1" \
  "$URL")
check "curl by subdomain answers through the tunnel" \
  test "$body" = "hello from the device"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
  "http://127.0.0.1:$HTTP_PORT/t/nobody/")
check "unknown tunnel is 404" test "$code" = 404
check "the gateway wrote an access line per request" \
  test "$(grep -c ' INFO access ' gw.err)" -ge 3
check "the 404's access line names the tunnel, status and error" \
  grep -Eq ' INFO access .*tunnel=nobody method=GET path=/t/nobody/ status=404 .*error=tunnel_not_found$' gw.err

# A request the agent cannot deliver: the visitor's X-Request-Id is in the
# gateway's access line and in the agent's log line about it.
curl -s -o /dev/null -D down.head --max-time 10 -H 'X-Request-Id: e2e-req-42' \
  "http://127.0.0.1:$HTTP_PORT/t/down-cam-01/"
check "an unreachable service is 502" grep -q '^HTTP/1.1 502' down.head
check "the answer keeps the visitor's request id" \
  grep -qi '^X-Request-Id: e2e-req-42' down.head
check "the gateway's access line has it" \
  grep -Eq ' INFO access request_id=e2e-req-42 .*status=502' gw.err
check "the agent's log line names it, and says what went wrong in words" \
  wait_for_line agent.err 'cannot reach its local service .*\(connection refused: nothing listens there, or it is down\) \(request e2e-req-42\)' 10

# A wrong secret is permanent: the agent says so and exits 1.
"$BUILD/agent/agent-tunnel" connect --gateway "$GRPC" --id cam-01 \
  --token "$TOKEN" --secret AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA \
  --insecure --to "http://127.0.0.1:$SVC_PORT" >bad.out 2>bad.err &
BAD=$!
wait_for_exit $BAD 20
check "agent with a wrong secret exits 1" test "$exit_code" = 1
check "and says the credentials were refused" \
  grep -q "refused the credentials" bad.err
check "the gateway never logs the secret" \
  bash -c "! grep -q -- '$SECRET' gw.err"

# A slug the agent can tell is invalid is bad usage: exit 2, naming it.
TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect --gateway "$GRPC" \
  --id cam-01 --token "$TOKEN" --insecure --slug www \
  --to "http://127.0.0.1:$SVC_PORT" >slug.out 2>slug.err
check "an invalid --slug exits 2" test $? = 2
check "and says why" grep -q 'slug "www" is reserved' slug.err

# Nothing listens on the gateway port: said at once (not after the connect
# timeout), in words, and the agent keeps retrying.
TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect \
  --gateway "127.0.0.1:$DOWN_PORT" --id cam-01 --token "$TOKEN" --insecure \
  --connect-timeout 60s --to "http://127.0.0.1:$SVC_PORT" >refused.out 2>refused.err &
REFUSED=$!
pids+=($REFUSED)
check "a refused gateway port is reported as such, before the connect timeout" \
  wait_for_line refused.err "connection refused.*reconnecting in" 10
kill -TERM $REFUSED
wait_for_exit $REFUSED 5
check "SIGTERM while retrying: exit 0 at once" test "$exit_code" = 0

# A gateway port that accepts TCP but never answers: SIGTERM while the agent
# waits for the connection (a 60 s connect timeout) ends it at once.
/usr/bin/python3 -u -c '
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1])
c, _ = s.accept(); print("accepted")
time.sleep(60)' >silent.out 2>/dev/null &
pids+=($!)
SILENT_PORT=$(wait_for_line silent.out '^[0-9]+$' 10)
TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect \
  --gateway "127.0.0.1:$SILENT_PORT" --id cam-01 --token "$TOKEN" --insecure \
  --connect-timeout 60s --to "http://127.0.0.1:$SVC_PORT" >silent_agent.out 2>silent_agent.err &
SILENT_AGENT=$!
pids+=($SILENT_AGENT)
wait_for_line silent.out '^accepted' 10 >/dev/null
kill -TERM $SILENT_AGENT
wait_for_exit $SILENT_AGENT 5
check "SIGTERM while connecting: exit 0 within a few seconds" \
  test "$exit_code" = 0

"$BUILD/agent/agent-tunnel" connect --gateway "$GRPC" >usage.out 2>usage.err
check "missing flags exit 2" test $? = 2
check "and name the missing flag" grep -q -- "--id is required" usage.err
"$BUILD/agent/agent-tunnel" connect --help >help.out 2>&1
check "--help exits 0 and lists --to" grep -q -- "--to" help.out
"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr "" --credentials missing.txtpb >/dev/null 2>missing.err
check "gateway with a missing credentials file exits 1" test $? = 1
check "and names the file" grep -q "missing.txtpb" missing.err
check "and says what to run" \
  grep -q "issue a token first: tunnelctl token issue --id DEVICE --credentials missing.txtpb" missing.err
check "a 0600 credentials file draws no warning" \
  bash -c "! grep -q 'accessible to group or others' gw.err"
# Every agent's secret is in the file: a readable one is warned about.
cp creds.txtpb shared.txtpb
chmod 644 shared.txtpb
"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr "" --credentials shared.txtpb \
  >shared.out 2>shared.err &
SHARED=$!
pids+=($SHARED)
if wait_for_line shared.err 'shared.txtpb is accessible to group or others \(mode 0644\).*chmod 600' 10 >/dev/null; then
  pass "a credentials file others can read is warned about"
else
  fail "a credentials file others can read is warned about"
fi
check "and the warning carries no secret" \
  bash -c "! grep -q -- '$SECRET' shared.err"
kill -TERM "$SHARED"
wait_for_exit "$SHARED" 10

kill -TERM "$AGENT"
wait_for_exit "$AGENT" 10
check "agent exits 0 on SIGTERM" test "$exit_code" = 0
kill -TERM "$GW"
wait_for_exit "$GW" 10
check "gateway exits 0 on SIGTERM" test "$exit_code" = 0

# --- Drain and heartbeats, with a service that can hold a request. ---
python3 -u "$HERE/gated_service.py" --release "$WORK/release" \
  >gated.out 2>gated.err &
pids+=($!)
GATED_PORT=$(wait_for_line gated.out '^port ' 10 | awk '{print $2}')
"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --credentials creds.txtpb \
  --heartbeat-interval 200ms --drain-timeout 20s >gw2.out 2>gw2.err &
GW2=$!
pids+=($GW2)
GRPC2=$(wait_for_line gw2.out '^grpc ' 10 | awk '{print $2}')
HTTP2=$(wait_for_line gw2.out '^http ' 10 | awk '{print $2}')
TUNNEL_SECRET="$SECRET" "$BUILD/agent/agent-tunnel" connect \
  --gateway "$GRPC2" --id cam-01 --token "$TOKEN" --insecure \
  --heartbeat-timeout 1s --max-backoff 300ms \
  --to "http://127.0.0.1:$GATED_PORT" >agent2.out 2>agent2.err &
AGENT2=$!
pids+=($AGENT2)
wait_for_line agent2.out '/t/cam-01/$' 20 >/dev/null

# A 304 without Content-Length (nginx's way) comes back at once, and the
# next request on the tunnel still works.
# Both requests go over one visitor connection: a 304 left half-open would
# hold it.
codes=$(curl -s -o /dev/null -o /dev/null -w '%{http_code} ' --max-time 5 \
  -H 'If-None-Match: "v1"' "http://$HTTP2/t/cam-01/not-modified" \
  "http://$HTTP2/t/cam-01/")
check "a 304 without Content-Length passes through at once" \
  test "$codes" = "304 200 "

# The gateway goes silent (SIGSTOP): the agent notices within its
# heartbeat timeout and reconnects once the gateway is back.
kill -STOP "$GW2"
if wait_for_line agent2.err 'sent nothing for 1s' 10 >/dev/null; then
  pass "agent notices a silent gateway"
else
  fail "agent notices a silent gateway"
fi
kill -CONT "$GW2"
reconnected() { [ "$(grep -c 'connected to' agent2.err)" -ge 2 ]; }
deadline=$((SECONDS + 20))
until reconnected || ((SECONDS >= deadline)); do sleep 0.05; done
check "agent has a second session" reconnected

# SIGTERM drain: a request in flight before the signal completes with 200;
# one arriving during the drain gets 503 with Retry-After.
curl -sS --max-time 30 -o inflight.body -w '%{http_code}' \
  "http://$HTTP2/t/cam-01/gated" >inflight.code 2>inflight.err &
CURL=$!
wait_for_line gated.out '^held' 10 >/dev/null
kill -TERM "$GW2"
wait_for_line gw2.err 'draining for up to' 10 >/dev/null
code=$(curl -s -D during.headers -o /dev/null -w '%{http_code}' \
  --max-time 10 "http://$HTTP2/t/cam-01/")
check "a request during the drain gets 503" test "$code" = 503
check "with Retry-After" grep -qi '^retry-after:' during.headers
touch "$WORK/release"
wait "$CURL"
check "the request in flight completed with 200" \
  test "$(cat inflight.code)" = 200
check "and its whole body" test "$(cat inflight.body)" = released
wait_for_exit "$GW2" 20
check "the draining gateway exits 0" test "$exit_code" = 0
check "the agent says in words why its session ended" \
  wait_for_line agent2.err 'the gateway closed the connection \(restart or drain\); reconnecting in' 10
check "never in gRPC's status names" bash -c "! grep -q 'CANCELLED' agent2.err"

echo "tunnel_e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
