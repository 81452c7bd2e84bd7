#!/usr/bin/env bash
# Process-level test of pools as the README uses them: two agents with
# tokens issued --pool web serve one URL; `tunnelctl status` shows both
# members; a token without the pool is refused naming the fix (exit 1);
# SIGTERM on one member while 400 requests with checked bodies run (32 at a
# time) costs no request, the member exits 0, and the other takes over;
# `tunnelctl drain` makes the other exit 0 too.
# Usage: pool_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
CTL="$BUILD/tools/tunnelctl"
AGENT="$BUILD/agent/agent-tunnel"
PY=/usr/bin/python3

enter_workdir pool_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_ADMIN TUNNEL_ADMIN_TOKEN_FILE TUNNEL_POOL TUNNEL_SLUG || true

issue() {  # issue AGENT_ID [tunnelctl flags]: sets TOKEN and SECRET
  local id="$1"
  shift
  "$CTL" token issue --id "$id" --credentials creds.txtpb "$@" >issued.txt 2>/dev/null
  TOKEN=$(awk '/^token:/{print $2}' issued.txt)
  SECRET=$(awk '/^secret:/{print $2}' issued.txt)
}
issue pi-1 --pool web
check "token issue --pool prints the pools" grep -qx 'pools: web' issued.txt
T1=$TOKEN S1=$SECRET
issue pi-2 --pool web
T2=$TOKEN S2=$SECRET
issue pi-3
T3=$TOKEN S3=$SECRET
"$CTL" token list --credentials creds.txtpb >list.txt
check "token list shows the pool" grep -Eq '^tok_[0-9a-f]+ +pi-1 +web ' list.txt
"$CTL" admin-token issue --file admin.token 2>/dev/null

# Each member's service answers its name, then the request body.
cat >echo.py <<'PY'
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, body):
        out = (name + "\n").encode() + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self): self.answer(b"")
    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers["Content-Length"])))
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("port", s.server_address[1], flush=True)
s.serve_forever()
PY
for n in 1 2; do
  "$PY" -u echo.py "pi-$n" >"svc$n.out" 2>&1 &
  pids+=($!)
done
P1=$(wait_for_line svc1.out '^port ' 10 | awk '{print $2}')
P2=$(wait_for_line svc2.out '^port ' 10 | awk '{print $2}')
check "both services started" test -n "$P1" -a -n "$P2"

"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --admin-token-file admin.token \
  --credentials creds.txtpb >gw.out 2>gw.err &
pids+=($!)
ADMIN=$(wait_for_line gw.out '^admin ' 10 | awk '{print $2}')
GRPC=$(awk '/^grpc /{print $2}' gw.out)
HTTP=$(awk '/^http /{print $2}' gw.out)
check "gateway started" test -n "$ADMIN"

TUNNEL_SECRET="$S1" "$AGENT" connect --gateway "$GRPC" --id pi-1 --token "$T1" \
  --insecure --pool web --to "http://127.0.0.1:$P1" >a1.out 2>a1.err &
A1=$!
pids+=($A1)
TUNNEL_SECRET="$S2" "$AGENT" connect --gateway "$GRPC" --id pi-2 --token "$T2" \
  --insecure --pool web --to "http://127.0.0.1:$P2" >a2.out 2>a2.err &
A2=$!
pids+=($A2)
check "member pi-1 connected with the pool's URL" test -n "$(wait_for_line a1.out '/t/web/$' 20)"
check "member pi-2 connected with the pool's URL" test -n "$(wait_for_line a2.out '/t/web/$' 20)"

"$CTL" status web --admin "$ADMIN" --admin-token-file admin.token >status.txt
check "status names the pool" grep -Eq '^pool: +web$' status.txt
check "status lists both members" \
  test "$(grep -Ec '^member: +pi-[12] \(healthy, [0-9]+ in flight\)$' status.txt)" = 2

TUNNEL_SECRET="$S3" "$AGENT" connect --gateway "$GRPC" --id pi-3 --token "$T3" \
  --insecure --pool web --to "http://127.0.0.1:$P1" >a3.out 2>a3.err
check "a token without the pool: exit 1" test $? = 1
check "naming the fix" grep -q 'tunnelctl token issue --id pi-3 --pool web' a3.err

# Load with checked bodies; SIGTERM pi-2 once 100 requests are done.
"$PY" - "$HTTP" "$A2" >load.out 2>load.err <<'PY'
import http.client, os, signal, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
member_pid = int(sys.argv[2])
lock = threading.Lock()
done = 0
errors = []
after = {}
termed = False
def worker(w):
    global done, termed
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(400 // 32 + 1):
        body = ("visitor %d request %d " % (w, i)).encode() * 50
        late = termed
        try:
            conn.request("POST", "/t/web/echo", body)
            r = conn.getresponse()
            got = r.read()
            name, _, echoed = got.partition(b"\n")
            if r.status != 200 or echoed != body:
                errors.append("%d %r" % (r.status, got[:80]))
            elif late:
                with lock:
                    after[name] = after.get(name, 0) + 1
        except Exception as e:
            errors.append(repr(e))
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        with lock:
            done += 1
            if done == 100 and not termed:
                termed = True
                os.kill(member_pid, signal.SIGTERM)
threads = [threading.Thread(target=worker, args=(w,)) for w in range(32)]
for t in threads: t.start()
for t in threads: t.join()
print("done", done, "errors", len(errors))
print("after", " ".join("%s=%d" % (k.decode(), v) for k, v in sorted(after.items())))
for e in errors[:5]: print("error", e)
PY
check "the load ran 416 requests" grep -qx 'done 416 errors 0' load.out
check "SIGTERM on a member cost no request" grep -q 'errors 0' load.out
check "the other member took the rest" grep -Eq '^after .*pi-1=[0-9]+' load.out
wait_for_exit "$A2" 30
check "the drained member exited 0" test "$exit_code" = 0
check "and said it was draining" grep -q 'taking no new requests' a2.err

# An administrator drains the remaining member: it exits 0 by itself.
"$CTL" drain pi-1 --admin "$ADMIN" --admin-token-file admin.token >drain.out 2>drain.err
check "tunnelctl drain exits 0" test $? = 0
check "and says what happens" grep -q '^draining agent pi-1 (session [0-9a-f]*): 0 request(s) in flight finish, then it exits$' drain.out
wait_for_exit "$A1" 30
check "the drained agent exited 0" test "$exit_code" = 0
check "saying the gateway asked" grep -q 'the gateway asks this agent to drain (drained by an administrator)' a1.err
"$CTL" drain pi-1 --admin "$ADMIN" --admin-token-file admin.token >/dev/null 2>drain2.err
check "draining an agent that is gone exits 1" test $? = 1

echo "passed: $passed, failed: $failed"
test "$failed" = 0
