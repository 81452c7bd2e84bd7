#!/usr/bin/env bash
# Process-level test of credentials at run time: tunnelctl issues two tokens
# for one agent, the agent connects with the first, the gateway reloads its
# file on SIGHUP without touching the session, a revoked token's session is
# closed with the reason (the agent exits 1 saying so), the second token
# connects, a broken file on reload keeps the credentials in force,
# `tunnelctl reload` does what SIGHUP does, and no secret reaches a log.
# Usage: credentials_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

enter_workdir credentials_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_CREDENTIALS || true

issue_token "$BUILD" cam-01
TOKEN1=$TOKEN SECRET1=$SECRET
check "tunnelctl issued the first token" test -n "$TOKEN1" -a -n "$SECRET1"

"$BUILD/tools/tunnelctl" admin-token issue --file admin.token >/dev/null 2>&1
check "tunnelctl wrote an admin token" test -s admin.token

start_site

"$BUILD/server/gateway-tunnel" --insecure --admin-addr 127.0.0.1:0 \
  --admin-token-file admin.token --grpc-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 \
  --credentials creds.txtpb >gw.out 2>gw.err &
GW=$!
pids+=($GW)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line gw.out '^http ' 10 | awk '{print $2}')
OPS=$(wait_for_line gw.out '^ops ' 10 | awk '{print $2}')
ADMIN=$(wait_for_line gw.out '^admin ' 10 | awk '{print $2}')
check "gateway started" test -n "$GRPC" -a -n "$HTTP" -a -n "$OPS" -a -n "$ADMIN"
HTTP_PORT=${HTTP##*:}

fetch() { curl -sS --max-time 10 "http://127.0.0.1:$HTTP_PORT/t/cam-01/"; }
metric() { curl -sS --max-time 10 "http://$OPS/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
seen() { wait_for_line "$@" >/dev/null; }

TUNNEL_SECRET="$SECRET1" "$BUILD/agent/agent-tunnel" connect \
  --gateway "$GRPC" --id cam-01 --token "$TOKEN1" --insecure \
  --to "http://127.0.0.1:$SVC_PORT" >agent1.out 2>agent1.err &
AGENT1=$!
pids+=($AGENT1)
check "the agent connected with the first token" \
  seen agent1.out '/t/cam-01/$' 20
check "and serves" test "$(fetch)" = "hello from the device"

# Rotation: a second token for the same agent, then SIGHUP.
issue_token "$BUILD" cam-01
TOKEN2=$TOKEN SECRET2=$SECRET
check "tunnelctl issued a second token" test -n "$TOKEN2" -a "$TOKEN2" != "$TOKEN1"
kill -HUP $GW
check "SIGHUP reloads and says how many tokens are live" \
  seen gw.err 'credentials_reloaded .*live_tokens=2 sessions_closed=0' 10
check "the session survived the reload" test "$(fetch)" = "hello from the device"
check "without reconnecting" test "$(grep -c 'connected to' agent1.err)" = 1

# A broken file is refused on reload; the credentials in force stay.
cp creds.txtpb creds.good
echo 'credentials { token_id: ' >>creds.txtpb
kill -HUP $GW
check "a broken file is reported with file and line" \
  seen gw.err 'ERROR credentials_reload_failed file=creds.txtpb error="creds.txtpb:[0-9]+:' 10
check "and counted" test "$(metric 'tunnel_credentials_reloads_total{result="error"}')" = 1
check "the session still serves" test "$(fetch)" = "hello from the device"
mv creds.good creds.txtpb

# Revoking the first token closes its session with the reason.
"$BUILD/tools/tunnelctl" token revoke "$TOKEN1" --credentials creds.txtpb \
  >revoke.out 2>&1
check "tunnelctl revoked the first token" grep -q "revoked token $TOKEN1" revoke.out
kill -HUP $GW
wait_for_exit $AGENT1 20
check "the agent of the revoked token exits 1" test "$exit_code" = 1
check "saying its token was revoked" \
  grep -q "the gateway closed the session: token $TOKEN1 was revoked" agent1.err
check "the gateway logs the closed session" \
  grep -Eq "agent_token_revoked agent_id=cam-01 .*token=$TOKEN1 .*reason=\"token $TOKEN1 was revoked\"" gw.err
check "and counts it" test "$(metric tunnel_agent_sessions_revoked_total)" = 1

TUNNEL_SECRET="$SECRET1" "$BUILD/agent/agent-tunnel" connect \
  --gateway "$GRPC" --id cam-01 --token "$TOKEN1" --insecure \
  --to "http://127.0.0.1:$SVC_PORT" >again.out 2>again.err &
AGAIN=$!
wait_for_exit $AGAIN 20
check "the revoked token cannot connect again" test "$exit_code" = 1

TUNNEL_SECRET="$SECRET2" "$BUILD/agent/agent-tunnel" connect \
  --gateway "$GRPC" --id cam-01 --token "$TOKEN2" --insecure \
  --to "http://127.0.0.1:$SVC_PORT" >agent2.out 2>agent2.err &
pids+=($!)
check "the second token connects" seen agent2.out '/t/cam-01/$' 20
check "and serves" test "$(fetch)" = "hello from the device"

# Without signal access: the admin API reloads too.
"$BUILD/tools/tunnelctl" reload --admin "$ADMIN" >noauth.out 2>noauth.err
check "tunnelctl reload without the admin token exits 1" test $? = 1
chmod 644 creds.txtpb
"$BUILD/tools/tunnelctl" reload --admin "$ADMIN" --admin-token-file admin.token \
  >reload.out 2>reload.err
check "tunnelctl reload exits 0" test $? = 0
check "and reports the live tokens" \
  grep -q "reloaded the credentials: 1 live token(s), 0 session(s) closed" reload.out
check "a reload warns about a file others may read" \
  seen gw.err 'accessible to group or others .*chmod 600' 10
check "the reloads are counted" \
  test "$(metric 'tunnel_credentials_reloads_total{result="ok"}')" = 3
check "the second token's session survived it" \
  test "$(fetch)" = "hello from the device"

check "no secret in the gateway's log" \
  bash -c "! grep -q -e '$SECRET1' -e '$SECRET2' gw.err"
check "no secret in the agents' logs" \
  bash -c "! cat agent1.err agent2.err again.err | grep -q -e '$SECRET1' -e '$SECRET2'"

kill -TERM $GW
wait_for_exit $GW 20
check "the gateway still stops on SIGTERM" test "$exit_code" = 0

echo "passed: $passed, failed: $failed"
test "$failed" = 0
