#!/usr/bin/env bash
# Process-level test of visitor access codes as the README uses them: an
# agent started with --access-code (curl without the code, with a wrong one,
# with ?code=, with the cookie it earns, with X-Tunnel-Access-Code), and
# `tunnelctl set-code` (code from stdin, --public, --json, exit codes)
# against the binaries; basic auth from `tunnelctl hash-password` (PBKDF2)
# and an `htpasswd -B` file (bcrypt), and the agent refusing a password
# where a hash belongs. Codes and passwords never show up in the gateway's
# output.
# Usage: access_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
CTL="$BUILD/tools/tunnelctl"
PY=/usr/bin/python3

enter_workdir access_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_ADMIN TUNNEL_ADMIN_TOKEN_FILE TUNNEL_ADMIN_ADDR \
  TUNNEL_ACCESS_CODE || true

json() { "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }

AGENT_CODE="agent-code-8812"
ADMIN_CODE="admin-code-5519"

issue_token "$BUILD" cam-03
TOKEN3=$TOKEN SECRET3=$SECRET
issue_token "$BUILD" cam-02
TOKEN2=$TOKEN SECRET2=$SECRET
issue_token "$BUILD" cam-01
"$CTL" admin-token issue --file admin.token 2>/dev/null

start_site

"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --access-cookie-ttl 2h \
  --access-code-attempts-per-minute 3 \
  --admin-token-file admin.token --credentials creds.txtpb >gw.out 2>gw.err &
pids+=($!)
ADMIN=$(wait_for_line gw.out '^admin ' 10 | awk '{print $2}')
check "gateway printed its admin address" test -n "$ADMIN"
GRPC=$(awk '/^grpc /{print $2}' gw.out)
HTTP=$(awk '/^http /{print $2}' gw.out)
OPS=$(awk '/^ops /{print $2}' gw.out)
BASE="http://$HTTP"

TUNNEL_SECRET="$SECRET" TUNNEL_TOKEN="$TOKEN" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-01 --insecure --access-code "$AGENT_CODE" \
  --to "http://127.0.0.1:$SVC_PORT" >agent.out 2>agent.err &
pids+=($!)
check "gated agent connected" test -n "$(wait_for_line agent.out '/t/cam-01/$' 20)"
TUNNEL_SECRET="$SECRET2" TUNNEL_TOKEN="$TOKEN2" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-02 --insecure \
  --to "http://127.0.0.1:$SVC_PORT" >agent2.out 2>agent2.err &
pids+=($!)
check "public agent connected" test -n "$(wait_for_line agent2.out '/t/cam-02/$' 20)"

code() { curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$@"; }

check "no code: 401" test "$(code "$BASE/t/cam-01/")" = 401
curl -s --max-time 10 -D nocode.h -o nocode.json "$BASE/t/cam-01/"
check "no code: JSON access_code_required" \
  test "$(json 'd["error"]' <nocode.json)" = access_code_required
check "no code: X-Tunnel-Error" grep -qi '^X-Tunnel-Error: access_code_required' nocode.h
curl -s --max-time 10 -H 'Accept: text/html' -o form.html "$BASE/t/cam-01/"
check "browsers get a form" grep -q 'name="tunnel_access_code"' form.html

curl -s --max-time 10 -D good.h -o /dev/null "$BASE/t/cam-01/?code=$AGENT_CODE"
check "?code= with the right code: 303" grep -q '^HTTP/1.1 303' good.h
check "redirects to the URL without the code" grep -qi '^Location: /t/cam-01/\s*$' good.h
check "sets a 2h HttpOnly cookie scoped to the tunnel" \
  grep -Eqi '^Set-Cookie: tunnel_access=[^;]+; Path=/t/cam-01/; Max-Age=7200; .*HttpOnly; SameSite=Lax' good.h
COOKIE=$(grep -i '^Set-Cookie:' good.h | sed -E 's/^[^:]+: ([^;]+);.*/\1/')
curl -s --max-time 10 -b "$COOKIE" -o page.html "$BASE/t/cam-01/"
check "the cookie opens the tunnel" grep -q "hello from the device" page.html
check "the header code opens it for API clients" \
  test "$(code -H "X-Tunnel-Access-Code: $AGENT_CODE" "$BASE/t/cam-01/")" = 200
check "the cookie does not open another tunnel's gate" \
  test "$(code -b "$COOKIE" "$BASE/t/cam-02/")" = 200  # cam-02 is public


A=(--admin "$ADMIN" --admin-token-file admin.token)
"$CTL" status cam-01 "${A[@]}" --json >s1.json
check "status shows the agent's code as access code" \
  test "$(json 'd["access"]' <s1.json)" = code

# set-code from stdin on the public tunnel.
echo "$ADMIN_CODE" | "$CTL" set-code cam-02 --stdin "${A[@]}" >set.out 2>set.err
check "set-code exits 0" test $? = 0
check "and says the tunnel is gated" grep -q "cam-02 is now code" set.out
check "cam-02 now needs a code" test "$(code "$BASE/t/cam-02/")" = 401
check "the admin's code opens it" \
  test "$(code "$BASE/t/cam-02/?code=$ADMIN_CODE")" = 303
"$CTL" list "${A[@]}" --json >list.json
check "list shows both tunnels gated" \
  test "$(json '" ".join(t["access"] for a in d["agents"] for t in a["tunnels"])' <list.json)" = "code code"
TUNNEL_ACCESS_CODE="$ADMIN_CODE" "$CTL" set-code cam-01 "${A[@]}" --json >env.json
check "set-code takes TUNNEL_ACCESS_CODE (and --json)" \
  test "$(json 'd["slug"]+" "+d["access"]' <env.json)" = "cam-01 code"
check "the admin's code replaced the agent's" \
  test "$(code -H "X-Tunnel-Access-Code: $AGENT_CODE" "$BASE/t/cam-01/")" = 401
"$CTL" set-code cam-01 --public "${A[@]}" >pub.out
check "set-code --public exits 0" test $? = 0
check "--public opens even the agent's gate" test "$(code "$BASE/t/cam-01/")" = 200

"$CTL" set-code cam-01 "${A[@]}" >/dev/null 2>u1.err
check "set-code without a code or --public is usage (exit 2)" test $? = 2
"$CTL" set-code cam-01 abc --public "${A[@]}" >/dev/null 2>u2.err
check "a code with --public is usage (exit 2)" test $? = 2
"$CTL" set-code nobody xyz12 "${A[@]}" >/dev/null 2>nf.err
check "an unknown slug exits 1" test $? = 1
"$CTL" set-code cam-01 xyz12 --admin "$ADMIN" >/dev/null 2>na.err
check "set-code without the admin token exits 1" test $? = 1

# IP rules set with tunnelctl: checked before the access gate.
"$CTL" set-ip-rules cam-02 --deny 127.0.0.1 "${A[@]}" >ip1.out 2>ip1.err
check "set-ip-rules exits 0" test $? = 0
check "and says the rules in force" \
  grep -qx "tunnel cam-02 (admin's rules): allow any; deny 127.0.0.1/32" ip1.out
curl -s --max-time 10 -D ip.h -o ip.json "$BASE/t/cam-02/"
check "a denied address gets 403 before the access gate" grep -q '^HTTP/1.1 403' ip.h
check "with X-Tunnel-Error: ip_not_allowed" grep -qi '^X-Tunnel-Error: ip_not_allowed' ip.h
"$CTL" set-ip-rules cam-02 --clear "${A[@]}" --json >ip2.json 2>ip2.err
check "--clear --json says no rules are left" \
  test "$(json 'd["source"]' <ip2.json)" = none
check "and the access gate answers again" \
  test "$(code "$BASE/t/cam-02/")" != 403
"$CTL" set-ip-rules cam-02 --allow 10.1.2.3/8 "${A[@]}" >/dev/null 2>ip3.err
check "a range with host bits set is usage (exit 2)" test $? = 2
check "naming the network meant" grep -q 'did you mean 10.0.0.0/8?' ip3.err
"$CTL" set-ip-rules nobody --allow 10.0.0.0/8 "${A[@]}" >/dev/null 2>ip4.err
check "set-ip-rules on an unknown slug exits 1" test $? = 1
"$CTL" set-ip-rules cam-02 --clear --deny 10.0.0.0/8 "${A[@]}" >/dev/null 2>ip5.err
check "--clear with ranges is usage (exit 2)" test $? = 2

# cam-02 is gated by the admin's code now.
for _ in 1 2 3; do code "$BASE/t/cam-02/?code=wrong" >/dev/null; done
curl -s --max-time 10 -D limited.h -o /dev/null "$BASE/t/cam-02/?code=wrong"
check "wrong codes past the limit: 429" grep -q '^HTTP/1.1 429' limited.h
check "with Retry-After" grep -qi '^Retry-After: [0-9]' limited.h

# Basic auth for API clients: one user hashed by tunnelctl, one by htpasswd.
echo 'alice-pw' | "$CTL" hash-password alice >alice.line 2>hp.err
check "hash-password prints USER:HASH (PBKDF2)" \
  grep -q '^alice:\$pbkdf2-sha256\$100000\$' alice.line
htpasswd -nbB -C 5 bob 'bob pw' | grep . >users.htpasswd
TUNNEL_SECRET="$SECRET3" TUNNEL_TOKEN="$TOKEN3" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-03 --insecure \
  --basic-auth "$(cat alice.line)" --basic-auth-file users.htpasswd \
  --to "http://127.0.0.1:$SVC_PORT" >agent3.out 2>agent3.err &
pids+=($!)
check "basic-auth agent connected" test -n "$(wait_for_line agent3.out '/t/cam-03/$' 20)"
curl -s --max-time 10 -D ba.h -o ba.json "$BASE/t/cam-03/"
check "no credentials: 401" grep -q '^HTTP/1.1 401' ba.h
check "with a Basic challenge naming the tunnel" \
  grep -qi '^WWW-Authenticate: Basic realm="cam-03", charset="UTF-8"' ba.h
check "and basic_auth_required" test "$(json 'd["error"]' <ba.json)" = basic_auth_required
check "alice (tunnelctl's PBKDF2 hash) gets in" \
  test "$(code -u alice:alice-pw "$BASE/t/cam-03/")" = 200
check "bob (htpasswd's bcrypt hash) gets in" \
  test "$(code -u 'bob:bob pw' "$BASE/t/cam-03/")" = 200
curl -s --max-time 10 -u alice:bob-pw -D bw.h -o /dev/null "$BASE/t/cam-03/"
check "a wrong password: 401 basic_auth_invalid" \
  grep -qi '^X-Tunnel-Error: basic_auth_invalid' bw.h
"$CTL" status cam-03 "${A[@]}" --json >s3.json
check "status shows basic_auth" test "$(json 'd["access"]' <s3.json)" = basic_auth
TUNNEL_SECRET="$SECRET3" TUNNEL_TOKEN="$TOKEN3" "$BUILD/agent/agent-tunnel" \
  connect --gateway "$GRPC" --id cam-03 --insecure --basic-auth alice:alice-pw \
  --to "http://127.0.0.1:$SVC_PORT" >plain.out 2>plain.err
check "a password where the hash belongs is usage (exit 2)" test $? = 2
check "and says how to make a hash" grep -q 'tunnelctl hash-password' plain.err
check "the first agent kept its tunnel" \
  test "$(code -u alice:alice-pw "$BASE/t/cam-03/")" = 200

METRICS=$(curl -s --max-time 10 "http://$OPS/metrics")
check "wrong codes are counted (3 + the replaced agent code)" \
  grep -q '^tunnel_access_denials_total{reason="wrong_code"} 4$' <<<"$METRICS"
check "429s are counted" \
  grep -q '^tunnel_access_denials_total{reason="rate_limited"} 1$' <<<"$METRICS"
check "IP denials are counted" \
  grep -q '^tunnel_ip_denials_total{tunnel="cam-02"} 1$' <<<"$METRICS"
check "basic-auth grants are counted" \
  grep -q '^tunnel_access_grants_total{via="basic_auth"} 3$' <<<"$METRICS"
check "wrong passwords are counted" \
  grep -q '^tunnel_access_denials_total{reason="wrong_password"} 1$' <<<"$METRICS"
check "the gateway never printed a code or password" \
  bash -c "! grep -q -e '$AGENT_CODE' -e '$ADMIN_CODE' -e alice-pw -e 'bob pw' gw.out gw.err"

echo "passed: $passed, failed: $failed"
test "$failed" = 0
