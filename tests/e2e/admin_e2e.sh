#!/usr/bin/env bash
# Process-level test of the admin API as the README uses it: tunnelctl makes
# an admin token, gateway-tunnel serves the admin API on port 0 and prints
# "admin HOST:PORT", and tunnelctl list/status/disconnect (table and --json,
# parsed with Python's json) talk to it, with their exit codes.
# Usage: admin_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
CTL="$BUILD/tools/tunnelctl"
PY=/usr/bin/python3

enter_workdir admin_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_ADMIN TUNNEL_ADMIN_TOKEN_FILE TUNNEL_ADMIN_ADDR || true

# json EXPR: evaluates EXPR with `d` bound to the JSON document on stdin.
json() { "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }

issue_token "$BUILD" cam-02  # reserved slug, never connected
issue_token "$BUILD" cam-01

"$CTL" admin-token issue --file admin.token 2>issue.err
check "admin-token issue exits 0" test $? = 0
check "the admin token file is mode 0600" test "$(stat -c %a admin.token)" = 600
check "the admin token is one long line" \
  test "$(wc -l <admin.token)" = 1 -a "$(wc -c <admin.token)" -ge 40
"$CTL" admin-token issue --file admin.token 2>again.err
check "admin-token issue refuses to replace a file (exit 1)" test $? = 1
check "and says how to force it" grep -q -- "--force" again.err
"$CTL" admin-token issue 2>nofile.err
check "admin-token issue without --file is usage (exit 2)" test $? = 2

# A token file others may read is refused at start.
cp admin.token loose.token && chmod 0644 loose.token
"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr "" --admin-addr 127.0.0.1:0 --admin-token-file loose.token \
  --credentials creds.txtpb >loose.out 2>loose.err &
LOOSE=$!
wait_for_exit $LOOSE 20
check "gateway refuses a group/other-readable token file (exit 1)" \
  test "$exit_code" = 1
check "and says chmod 600" grep -q "chmod 600" loose.err

"$BUILD/server/gateway-tunnel" --insecure --admin-addr "" --admin-token-file admin.token \
  --credentials creds.txtpb >/dev/null 2>noaddr.err
check "a token file without an admin listener is usage (exit 2)" test $? = 2

start_site

"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  --admin-token-file admin.token --credentials creds.txtpb >gw.out 2>gw.err &
pids+=($!)
ADMIN=$(wait_for_line gw.out '^admin ' 10 | awk '{print $2}')
check "gateway printed its admin address" test -n "$ADMIN"
check "the admin line comes after grpc, http and ops" \
  test "$(awk '{print $1}' gw.out | tr '\n' ' ')" = "grpc http ops admin "
GRPC=$(awk '/^grpc /{print $2}' gw.out)
HTTP=$(awk '/^http /{print $2}' gw.out)
HTTP_PORT=${HTTP##*:}
check "no warning when the admin API is configured" \
  bash -c "! grep -q ' WARN' gw.err"

TUNNEL_SECRET="$SECRET" TUNNEL_TOKEN="$TOKEN" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-01 --insecure \
  --to "http://127.0.0.1:$SVC_PORT" >agent.out 2>agent.err &
pids+=($!)
check "agent connected" test -n "$(wait_for_line agent.out '/t/cam-01/$' 20)"

for _ in 1 2 3; do
  curl -sS --max-time 10 -o /dev/null "http://127.0.0.1:$HTTP_PORT/t/cam-01/"
done
BODY_LEN=$(wc -c <site/index.html)

A=(--admin "$ADMIN" --admin-token-file admin.token)
"$CTL" list "${A[@]}" >list.txt 2>list.err
check "list exits 0" test $? = 0
check "list has a header" grep -q '^AGENT  *SESSION  *REMOTE' list.txt
check "list shows cam-01 with 3 requests and its public tunnel" \
  grep -Eq "^cam-01 .* 3 +0 +$((3 * BODY_LEN)) +0 +cam-01 +public +http://cam-01\.localhost:$HTTP_PORT/$" list.txt

"$CTL" list "${A[@]}" --json >list.json
check "list --json: one agent" test "$(json 'len(d["agents"])' <list.json)" = 1
check "list --json: agent id and counters" \
  test "$(json '(lambda a: "%s %d %d %d %d" % (a["agent_id"], a["requests"], a["bytes_in"], a["bytes_out"], a["streams_in_flight"]))(d["agents"][0])' <list.json)" \
  = "cam-01 3 0 $((3 * BODY_LEN)) 0"
check "list --json: tunnel slug, access and URL" \
  test "$(json '(lambda t: t["slug"]+" "+t["access"]+" "+t["path_url"])(d["agents"][0]["tunnels"][0])' <list.json)" \
  = "cam-01 public http://localhost:$HTTP_PORT/t/cam-01/"
SESSION=$(json 'd["agents"][0]["session_id"]' <list.json)
check "list --json: session id" test -n "$SESSION"

TUNNEL_ADMIN="$ADMIN" TUNNEL_ADMIN_TOKEN_FILE=admin.token "$CTL" list --json \
  >env.json
check "TUNNEL_ADMIN and TUNNEL_ADMIN_TOKEN_FILE work" \
  test "$(json 'd["agents"][0]["agent_id"]' <env.json)" = cam-01

"$CTL" status cam-01 "${A[@]}" >status.txt
check "status exits 0" test $? = 0
check "status says online" grep -Eq '^status: +online$' status.txt
check "status shows the URL" \
  grep -Eq "^url: +http://cam-01\.localhost:$HTTP_PORT/$" status.txt
check "status shows access and requests in the last hour" \
  bash -c "grep -Eq '^access: +public$' status.txt && grep -Eq '^requests \(last hour\): +3$' status.txt"
"$CTL" status cam-01 "${A[@]}" --json >status.json
check "status --json" \
  test "$(json '"%s %s %d %s" % (d["status"], d["access"], d["requests_last_hour"], d["uptime_seconds"] >= 0)' <status.json)" \
  = "online public 3 True"
"$CTL" status cam-02 "${A[@]}" --json >offline.json
check "a reserved slug without its agent is offline" \
  test "$(json 'd["status"]+" "+d["agent_id"]' <offline.json)" = "offline cam-02"
"$CTL" status nobody "${A[@]}" >nf.out 2>nf.err
check "an unknown slug exits 1" test $? = 1
check "and says it does not exist" grep -q 'tunnel "nobody" does not exist' nf.err

# Tokens.
"$CTL" list --admin "$ADMIN" >noauth.out 2>noauth.err
check "list without a token exits 1" test $? = 1
check "and says the token is missing" grep -q "missing admin token" noauth.err
"$CTL" admin-token issue --file other.token 2>/dev/null
"$CTL" list --admin "$ADMIN" --admin-token-file other.token >wrong.out 2>wrong.err
check "list with a wrong token exits 1" test $? = 1
check "and says it was refused" grep -q "admin token was refused" wrong.err
OPS=$(awk '/^ops /{print $2}' gw.out)
check "refusals are counted on /metrics" \
  bash -c "curl -s --max-time 10 http://$OPS/metrics | grep -q '^tunnel_admin_auth_failures_total{reason=\"wrong_token\"} 1$'"

# Usage errors.
"$CTL" status "${A[@]}" >/dev/null 2>usage.err
check "status without a slug exits 2" test $? = 2
"$CTL" list --bogus >/dev/null 2>&1
check "an unknown flag exits 2" test $? = 2
"$CTL" list "${A[@]}" --timeout 0s >/dev/null 2>&1
check "a zero --timeout exits 2" test $? = 2
"$CTL" list --admin 127.0.0.1:1 --admin-token-file admin.token --timeout 3s \
  >/dev/null 2>unreach.err
check "an unreachable gateway exits 1" test $? = 1
check "and says it cannot reach it" grep -q "cannot reach" unreach.err

# Disconnect: the agent logs why, the session ends, the agent comes back.
"$CTL" disconnect cam-01 "${A[@]}" --json >disc.json 2>disc.err
check "disconnect exits 0" test $? = 0
check "disconnect names the closed session" \
  test "$(json 'd["session_id"]' <disc.json)" = "$SESSION"
check "the agent logs that an administrator disconnected it" \
  test -n "$(wait_for_line agent.err 'disconnected by an administrator' 20)"
check "the gateway logs the disconnect with its reason" \
  test -n "$(wait_for_line gw.err 'agent_disconnected .*reason="?disconnected by an administrator' 20)"
new=""
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
  new=$("$CTL" list "${A[@]}" --json 2>/dev/null |
    json '"".join(a["session_id"] for a in d["agents"])' 2>/dev/null)
  if [ -n "$new" ] && [ "$new" != "$SESSION" ]; then break; fi
  sleep 0.1
done
check "the agent reconnected with a new session" \
  test -n "$new" -a "$new" != "$SESSION"
"$CTL" disconnect cam-02 "${A[@]}" >/dev/null 2>nc.err
check "disconnecting an agent that is not connected exits 1" test $? = 1
check "and says it is not connected" grep -q "not connected" nc.err

# A gateway without --admin-token-file: the listener says how to set it up.
"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr "" --admin-addr 127.0.0.1:0 --credentials creds.txtpb \
  >gw2.out 2>gw2.err &
pids+=($!)
ADMIN2=$(wait_for_line gw2.out '^admin ' 10 | awk '{print $2}')
"$CTL" list --admin "$ADMIN2" --admin-token-file admin.token >/dev/null 2>nt.err
check "an admin API without a token refuses (exit 1)" test $? = 1
check "and says to start the gateway with --admin-token-file" \
  grep -q -- "--admin-token-file" nt.err

echo "passed: $passed, failed: $failed"
test "$failed" = 0
