#!/usr/bin/env bash
# TLS with the real binaries and certificates made here with the openssl CLI:
# gateway-tunnel refuses plaintext unless --insecure and names a wrong key
# file; agent-tunnel verifies the gateway with --ca (and stops, saying why,
# without it); visitors use HTTPS (curl --cacert), WebSockets over TLS
# (python3-websockets with an ssl context) and mTLS for the agent.
# Usage: tls_e2e.sh BUILD_DIR
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
PY=/usr/bin/python3  # Debian's python3-websockets imports only here
enter_workdir tls_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO \
  TUNNEL_INSECURE TUNNEL_TLS_CERT TUNNEL_TLS_KEY TUNNEL_CA || true

# new_ca NAME: NAME.key/NAME.crt, a self-signed CA.
new_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.crt" -days 1 -subj "/CN=$1" \
    -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
# issue CA NAME: NAME.key/NAME.crt signed by CA, for localhost/127.0.0.1.
issue() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$2.key" -out "$2.csr" -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth,clientAuth" >"$2.ext"
  openssl x509 -req -in "$2.csr" -CA "$1.crt" -CAkey "$1.key" \
    -CAcreateserial -days 1 -extfile "$2.ext" -out "$2.crt" 2>/dev/null
}
new_ca ca
issue ca gateway
new_ca agents-ca
issue agents-ca cam
issue ca stranger
check "openssl made the certificates" test -s gateway.crt -a -s cam.crt

issue_token "$BUILD" cam-01
GW_BIN="$BUILD/server/gateway-tunnel"
AGENT_BIN="$BUILD/agent/agent-tunnel"
COMMON=(--grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --ops-addr ""
  --credentials creds.txtpb)

"$GW_BIN" "${COMMON[@]}" >/dev/null 2>plain.err
check "gateway without TLS or --insecure exits 2" test $? = 2
check "and says to pass --tls-cert/--tls-key or --insecure" \
  grep -q -- "--tls-cert FILE --tls-key FILE.*--insecure" plain.err

"$GW_BIN" "${COMMON[@]}" --tls-cert gateway.crt --tls-key stranger.key \
  >/dev/null 2>wrongkey.err
check "gateway with the key of another certificate exits 1" test $? = 1
check "and names the key file" grep -q "stranger.key is not the private key" \
  wrongkey.err
"$GW_BIN" "${COMMON[@]}" --tls-cert missing.crt --tls-key gateway.key \
  >/dev/null 2>missing.err
check "gateway with a missing certificate names it" grep -q "missing.crt" \
  missing.err

$PY -u "$HERE/ws_echo.py" >ws.out 2>ws.err &
pids+=($!)
WS_PORT=$(wait_for_line ws.out '^port ' 10 | awk '{print $2}')

# TLS on both listeners, agent certificates required (mTLS).
"$GW_BIN" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --credentials creds.txtpb --domain localhost \
  --tls-cert gateway.crt --tls-key gateway.key --client-ca agents-ca.crt \
  >gw.out 2>gw.err &
pids+=($!)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line gw.out '^http ' 10 | awk '{print $2}')
HTTP_PORT=${HTTP##*:}

# Without --ca: the system roots do not know our CA; the agent stops.
TUNNEL_SECRET="$SECRET" "$AGENT_BIN" connect --gateway "$GRPC" --id cam-01 \
  --token "$TOKEN" --to "http://127.0.0.1:$WS_PORT" >noca.out 2>noca.err &
NOCA=$!
wait_for_exit "$NOCA" 30
check "agent without --ca exits 1" test "$exit_code" = 1
check "and says the certificate is not trusted (use --ca)" \
  grep -q "certificate not trusted.*--ca" noca.err
check "gRPC's own log lines come in our format (no E1204 … lines)" \
  bash -c "! grep -Eq '^[EWID][0-9]{4} ' noca.err"

# With --ca but no client certificate: refused by mTLS.
TUNNEL_SECRET="$SECRET" "$AGENT_BIN" connect --gateway "$GRPC" --id cam-01 \
  --token "$TOKEN" --ca ca.crt --to "http://127.0.0.1:$WS_PORT" \
  >nocert.out 2>nocert.err &
NOCERT=$!
wait_for_exit "$NOCERT" 30
check "agent without a client certificate exits 1" test "$exit_code" = 1
check "and is told to use --client-cert" grep -q "client-cert" nocert.err

TUNNEL_SECRET="$SECRET" "$AGENT_BIN" connect --gateway "$GRPC" --id cam-01 \
  --token "$TOKEN" --ca ca.crt --client-cert cam.crt --client-key cam.key \
  --to "http://127.0.0.1:$WS_PORT" >agent.out 2>agent.err &
pids+=($!)
check "agent with --ca and a client certificate connects" \
  wait_for_line agent.out '/t/cam-01/$' 20
check "its public URLs say https" grep -q '^https://localhost:' agent.out

BODY=$(curl -sS --max-time 10 --cacert ca.crt \
  "https://localhost:$HTTP_PORT/t/cam-01/http" 2>curl.err)
check "curl --cacert through the tunnel over HTTPS" test "$BODY" = "plain http"
curl -sS --max-time 10 "https://localhost:$HTTP_PORT/t/cam-01/http" \
  >/dev/null 2>curl-noca.err
check "curl without the CA refuses the front door's certificate" \
  test $? = 60

# 127.0.0.1 (in the certificate's names too): a minimal Debian has no
# /etc/hosts, and Python does not resolve "localhost" without one.
if timeout 120 $PY "$HERE/ws_client_check.py" \
  "wss://127.0.0.1:$HTTP_PORT/t/cam-01" ca.crt >client.out 2>&1; then
  pass "websocket checks over TLS (wss://, path routing)"
else
  fail "websocket checks over TLS (wss://, path routing)"
fi
cat client.out
echo "tls_e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
