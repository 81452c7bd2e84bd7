#!/usr/bin/env bash
# Process-level test of the config files and the agent's terminal UX: the
# gateway and the agent read --config files (text format and JSON) with
# flag > environment > file > default; bad files exit 2 naming the file and
# the field; on a terminal (a pty from `script`) the agent draws a QR code
# that zbarimg decodes to its first URL; --quiet leaves only the URL lines;
# `agent-tunnel status` reports a running agent as connected, a stopped one
# as not responding, a killed one as not running, keeps one file per agent
# id and forgets a failure once the agent connected.
# Usage: agent_ux_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

enter_workdir agent_ux_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_CONFIG TUNNEL_STATE_FILE TUNNEL_QUIET TUNNEL_PUBLIC_PORT || true
AGENT_BIN="$BUILD/agent/agent-tunnel"

# wait_until SECONDS command...: polls (bounded) until the command succeeds.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  while ((SECONDS < deadline)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

# has_line FILE REGEX SECONDS: wait_for_line without printing the line.
has_line() { wait_for_line "$@" >/dev/null; }

issue_token "$BUILD" cam-02
TOKEN2=$TOKEN SECRET2=$SECRET
issue_token "$BUILD" cam-01
check "tunnelctl issued a token" test -n "$TOKEN" -a -n "$SECRET"

# --- gateway from a text-format file ---
cat >gw.txtpb <<EOT
# tunnel.v1.GatewayConfig
grpc_addr: "127.0.0.1:0"
http_addr: "127.0.0.1:0"
ops_addr: ""              # overridden by --ops-addr below
credentials: "creds.txtpb"
domain: "cfg.test"        # only here: the file beats the default
public_port: 8443         # overridden by TUNNEL_PUBLIC_PORT below
response_timeout: "20s"
insecure: true           # plaintext, as in every test here
admin_addr: ""
EOT
TUNNEL_PUBLIC_PORT=9999 "$BUILD/server/gateway-tunnel" --config gw.txtpb \
  --ops-addr 127.0.0.1:0 >gw.out 2>gw.err &
GW=$!
pids+=($GW)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
check "gateway from a config file printed its grpc address" test -n "$GRPC"
check "the --ops-addr flag beat the file's empty ops_addr" \
  has_line gw.out '^ops 127\.0\.0\.1:[0-9]+$' 10

# --- agent from a JSON file, on a terminal ---
cat >agent.json <<EOT
{
  "gateway": "$GRPC",
  "id": "cam-01",
  "token": "$TOKEN",
  "secret": "$SECRET",
  "to": ["http://127.0.0.1:9"],
  "insecure": true,
  "health_interval": "200ms",
  "health_unhealthy_after": 1,
  "state_file": "$WORK/state/agent.json"
}
EOT
chmod 600 agent.json
# Hold 127.0.0.1:4040: on a terminal the agent's inspector is on by default
# there, and must move on to the next free port. (If another process holds
# it already, the same holds.)
python3 -c '
import signal, socket
s = socket.socket()
s.bind(("127.0.0.1", 4040))
s.listen()
print("held", flush=True)
signal.pause()' >hold4040.out 2>&1 &
pids+=($!)
wait_for_line hold4040.out held 5 >/dev/null || true
script -qec "'$AGENT_BIN' connect --config agent.json 2>tty.err" /dev/null \
  >tty.out </dev/null &
pids+=($!)
URL=$(wait_for_line tty.out '^https?://cam-01\.' 20 | tr -d '\r')
check "env TUNNEL_PUBLIC_PORT beat the file, the file's domain the default" \
  test "$URL" = "http://cam-01.cfg.test:9999/"
check "status of a connected agent exits 0" \
  wait_until 10 "$AGENT_BIN" status --state-file state/agent.json
"$AGENT_BIN" status --state-file state/agent.json >status.txt
check "status says connected" grep -q '^connected: agent cam-01' status.txt
check "status lists the URL" grep -q "url  *http://cam-01.cfg.test:9999/" \
  status.txt
INSPECT=$(wait_for_line tty.err 'inspector: http://127\.0\.0\.1:404[1-9]/' 10 |
  sed -E 's|.*inspector: (http://[^ ]*/).*|\1|')
check "on a terminal the inspector is on, past the taken port 4040" \
  test -n "$INSPECT"
check "its API answers" bash -c "curl -sf '${INSPECT}api/status' | grep -q '\"max_requests\":\"500\"'"
check "status shows the inspector's address" \
  grep -qx "  inspector   $INSPECT" status.txt
check "status shows the local service its checks find down" \
  wait_until 10 bash -c "'$AGENT_BIN' status --state-file state/agent.json | grep -q '^  unhealthy   http://127.0.0.1:9: connection refused$'"
check "and the agent logged it" \
  grep -q 'local service http://127.0.0.1:9 is unhealthy (connection refused)' tty.err
"$AGENT_BIN" status --json --state-file state/agent.json >status.json
check "status --json has running, connected and the URLs" python3 -c '
import json, sys
s = json.load(open("status.json"))
assert s["running"] and s["connected"], s
assert s["urls"][0] == "http://cam-01.cfg.test:9999/", s
assert s["session_id"] and s["agent_id"] == "cam-01", s
'
AGENT_PID=$(python3 -c 'import json; print(json.load(open("status.json"))["pid"])')
check "the state names the agent's pid" test -n "$AGENT_PID"

# The QR code follows the URL lines once drawn; poll until it is complete.
qr_decodes() {
  python3 "$HERE/qr_text_to_pgm.py" tty.out qr.pgm 2>/dev/null &&
    test "$(zbarimg -q --raw qr.pgm 2>/dev/null)" = "$URL"
}
check "the QR code on the terminal decodes (zbarimg) to the first URL" \
  wait_until 10 qr_decodes
check "a 0600 config file with a secret is not warned about" \
  bash -c "! grep -q 'readable by group or others' tty.err"

kill -KILL "$AGENT_PID"
check "status of a killed agent exits 1" \
  wait_until 10 bash -c "! '$AGENT_BIN' status --state-file state/agent.json"
"$AGENT_BIN" status --state-file state/agent.json >dead.txt
check "and says it is not running" grep -q '^not running: agent cam-01' dead.txt
"$AGENT_BIN" status --state-file nowhere.json >none.txt
check "status without a state file exits 1" test $? = 1
check "and says no agent runs" grep -q '^no agent running' none.txt

# --- --quiet on a terminal, from a text file readable by others ---
cat >agent.txtpb <<EOT
gateway: "$GRPC"
id: "cam-01"
token: "$TOKEN"
secret: "$SECRET"
to: "http://127.0.0.1:9"
insecure: true
quiet: true
state_file: "$WORK/state/quiet.json"
EOT
chmod 644 agent.txtpb
script -qec "'$AGENT_BIN' connect --config agent.txtpb 2>quiet.err" /dev/null \
  >quiet.out </dev/null &
pids+=($!)
QUIET_SCRIPT=$!
check "--quiet still prints the URL lines" \
  has_line quiet.out '^http://cfg\.test:9999/t/cam-01/' 20
check "--quiet: connected per status" \
  wait_until 10 "$AGENT_BIN" status --state-file state/quiet.json
check "--quiet: no QR code" bash -c "! grep -q $'\u2588' quiet.out"
check "--quiet: stdout has only the two URL lines" \
  test "$(tr -d '\r' <quiet.out | grep -c .)" = 2
check "--quiet: no INFO lines on stderr" bash -c "! grep -q ' INFO ' quiet.err"
check "a config file with a secret readable by others is warned about" \
  grep -q 'agent.txtpb holds a secret and is readable by group or others' \
  quiet.err
QUIET_PID=$("$AGENT_BIN" status --json --state-file state/quiet.json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
kill -TERM "$QUIET_PID"
check "status after SIGTERM: not running" \
  wait_until 20 bash -c "'$AGENT_BIN' status --state-file state/quiet.json | grep -q '^not running'"
# The inspector is on here (a terminal): its threads must leave SIGTERM to
# the agent, which drains and exits 0 (`script -e` passes the code on).
wait_for_exit "$QUIET_SCRIPT" 20
check "SIGTERM with the inspector on: the agent drains and exits 0" \
  test "$exit_code" = 0

# --- not a terminal: exactly the URL lines, no QR code ---
rm -f state/agent.json
"$AGENT_BIN" connect --config agent.json --state-file "" >pipe.out \
  2>pipe.err &
PIPE=$!
pids+=($PIPE)
check "on a pipe the agent prints the URL lines" \
  has_line pipe.out '/t/cam-01/$' 20
check "on a pipe: no QR code" bash -c "! grep -q $'\u2588' pipe.out"
check "on a pipe: no inspector" bash -c "! grep -q 'inspector:' pipe.err"
check "on a pipe: stdout has only the two URL lines" \
  test "$(grep -c . pipe.out)" = 2
check "--state-file \"\" (flag over file) writes no state" \
  test ! -e state/agent.json
kill "$PIPE"

# --- bad files exit 2 naming the file and the field ---
printf 'gateway: "g"\nmax_concurrent: many\n' >bad.txtpb
"$AGENT_BIN" connect --config bad.txtpb >/dev/null 2>bad.err
check "a text syntax error exits 2" test $? = 2
check "and names file:line:col" grep -q '^agent-tunnel: bad.txtpb:2:17: ' bad.err
check "and the field" grep -q 'bad.txtpb:2:17: field max_concurrent (flag --max-concurrent): ' bad.err
printf 'grpc_addr: "127.0.0.1:0"\nmax_agents: "lots"\n' >lots.txtpb
"$BUILD/server/gateway-tunnel" --config lots.txtpb >/dev/null 2>lots.err
check "a string for a number in the gateway's file exits 2" test $? = 2
check "and names the field" grep -q 'lots.txtpb:2:13: field max_agents (flag --max-agents): ' lots.err
printf '{"gateway": "g", "secrett": "x"}' >unknown.json
"$AGENT_BIN" connect --config unknown.json >/dev/null 2>unknown.err
check "an unknown JSON field exits 2" test $? = 2
check "and names the file and the field" \
  grep -q 'unknown.json: .*secrett' unknown.err
printf 'grpc_addr: "127.0.0.1:0"\nheartbeat_timeout: "soon"\n' >badval.txtpb
"$BUILD/server/gateway-tunnel" --config badval.txtpb >/dev/null 2>badval.err
check "a bad duration in the gateway's file exits 2" test $? = 2
check "and names the file and the field" \
  grep -q '^gateway-tunnel: badval.txtpb: field heartbeat_timeout ' badval.err
"$BUILD/server/gateway-tunnel" --config missing.txtpb >/dev/null 2>missing.err
check "a missing config file exits 2" test $? = 2

# --- a stopped (SIGSTOP) agent is "not responding", not "connected" ---
"$AGENT_BIN" connect --config agent.json --state-file state/frozen.json \
  --state-refresh 200ms >frozen.out 2>frozen.err &
FROZEN=$!
pids+=($FROZEN)
check "an agent refreshing its state every 200ms is connected" \
  wait_until 20 "$AGENT_BIN" status --state-file state/frozen.json
kill -STOP $FROZEN
check "stopped, it is reported not responding (exit 1)" \
  wait_until 10 bash -c "'$AGENT_BIN' status --state-file state/frozen.json | grep -q '^not responding: agent cam-01'"
"$AGENT_BIN" status --state-file state/frozen.json >/dev/null
check "status of a stopped agent exits 1" test $? = 1
kill -CONT $FROZEN
check "continued, it is connected again" \
  wait_until 10 "$AGENT_BIN" status --state-file state/frozen.json
kill $FROZEN

# --- one state file per agent id; status --id picks one ---
mkdir -p xdg
XDG_RUNTIME_DIR="$WORK/xdg" TUNNEL_SECRET="$SECRET2" "$AGENT_BIN" connect \
  --gateway "$GRPC" --id cam-02 --token "$TOKEN2" --insecure \
  --to http://127.0.0.1:9 >two.out 2>two.err &
pids+=($!)
XDG_RUNTIME_DIR="$WORK/xdg" "$AGENT_BIN" connect --config agent.json \
  --state-file auto >one.out 2>one.err &
pids+=($!)
check "each agent keeps its own default state file" \
  wait_until 20 test -e xdg/agent-tunnel/cam-01.json -a -e xdg/agent-tunnel/cam-02.json
check "status --id cam-02 finds it connected" \
  wait_until 20 env XDG_RUNTIME_DIR="$WORK/xdg" "$AGENT_BIN" status --id cam-02
XDG_RUNTIME_DIR="$WORK/xdg" "$AGENT_BIN" status >several.out 2>several.err
check "status without --id and two agents exits 2" test $? = 2
check "and names them" grep -q 'several agents .*(cam-01, cam-02); say which with --id' several.err

# --- a failure is forgotten once the agent connects ---
LATE_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TUNNEL_SECRET="$SECRET" "$AGENT_BIN" connect --gateway "127.0.0.1:$LATE_PORT" \
  --id cam-01 --token "$TOKEN" --insecure --to http://127.0.0.1:9 \
  --state-file state/late.json >late.out 2>late.err &
pids+=($!)
check "before the gateway is up, status shows the failure" \
  wait_until 10 bash -c "'$AGENT_BIN' status --state-file state/late.json | grep -q 'last error.*connection refused'"
"$BUILD/server/gateway-tunnel" --config gw.txtpb --grpc-addr "127.0.0.1:$LATE_PORT" \
  --http-addr 127.0.0.1:0 >gw2.out 2>gw2.err &
pids+=($!)
check "once it is, the agent connects" \
  wait_until 20 "$AGENT_BIN" status --state-file state/late.json
"$AGENT_BIN" status --state-file state/late.json >late.txt
check "and status no longer shows the old error" \
  bash -c "! grep -q 'last error' late.txt"

# --- a token that expires within a day is warned about ---
"$BUILD/tools/tunnelctl" token issue --id cam-03 --ttl 5h --credentials creds.txtpb \
  >issued3.txt 2>/dev/null
TOKEN3=$(awk '/^token:/{print $2}' issued3.txt)
EXPIRES3=$(awk '/^expires:/{print $2}' issued3.txt)
kill -HUP "$GW"
check "the gateway reloads the new token" \
  wait_until 10 grep -q '"credentials_reloaded".*"live_tokens":3\|credentials_reloaded.*live_tokens=3' gw.err
TUNNEL_SECRET="$(awk '/^secret:/{print $2}' issued3.txt)" "$AGENT_BIN" connect \
  --gateway "$GRPC" --id cam-03 --token "$TOKEN3" --insecure \
  --to http://127.0.0.1:9 --state-file state/expiring.json >exp.out 2>exp.err &
pids+=($!)
check "an agent whose token expires in 5 h connects" \
  wait_until 20 "$AGENT_BIN" status --state-file state/expiring.json
check "and warns in its log when the token expires" \
  grep -Eq "the token $TOKEN3 expires at $EXPIRES3 \(in (5h|4h5[89]m)\): extend it with .tunnelctl token extend $TOKEN3" exp.err
"$AGENT_BIN" status --state-file state/expiring.json >expiring.txt
check "status shows the expiry" grep -q "^  token  *expires $EXPIRES3$" expiring.txt
check "and the warning" grep -q "^warning: the token $TOKEN3 expires at $EXPIRES3" expiring.txt
"$AGENT_BIN" status --state-file state/agent.json >never.txt 2>/dev/null || true
check "a token without expiry shows none" bash -c "! grep -q 'token  *expires' never.txt"

echo "agent_ux_e2e: $passed passed, $failed failed"
test "$failed" = 0
