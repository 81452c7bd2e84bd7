#!/usr/bin/env bash
# The agent cross-built for another architecture (tools/cross/build-agent.sh)
# runs under qemu-user against the native gateway and a real local service,
# and requests pass through the tunnel end to end, bodies checked by SHA-256.
#
# Usage: cross_agent_e2e.sh NATIVE_BUILD_DIR TRIPLET
# The cross build is looked for in $TUNNEL_CROSS_DIR, else build-TRIPLET at
# the repo root. Without it (or without qemu) the test is skipped (exit 77),
# unless TUNNEL_REQUIRE_CROSS lists TRIPLET, as CI does: then it fails.
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
TRIPLET="$2"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CROSS="${TUNNEL_CROSS_DIR:-$ROOT/build-$TRIPLET}"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

case "$TRIPLET" in
  aarch64-linux-gnu) QEMU=qemu-aarch64-static MACHINE=AArch64 ;;
  arm-linux-gnueabihf) QEMU=qemu-arm-static MACHINE=ARM ;;
  *) echo "unknown triplet $TRIPLET" >&2; exit 2 ;;
esac
AGENT_BIN="$CROSS/agent/agent-tunnel"
missing=""
[ -x "$AGENT_BIN" ] || missing="no agent at $AGENT_BIN (build it with tools/cross/build-agent.sh)"
command -v "$QEMU" >/dev/null || missing="no $QEMU (Debian package qemu-user-static)"
if [ -n "$missing" ]; then
  if [[ " ${TUNNEL_REQUIRE_CROSS:-} " == *" $TRIPLET "* ]]; then
    echo "FAIL: $missing" >&2
    exit 1
  fi
  echo "skipped: $missing"
  exit 77
fi

enter_workdir cross_agent_e2e
unset TUNNEL_GATEWAY TUNNEL_ID TUNNEL_TOKEN TUNNEL_SECRET TUNNEL_TO || true

check "the agent is a $MACHINE binary" \
  bash -c "readelf -h '$AGENT_BIN' | grep -q 'Machine:.*$MACHINE'"

issue_token "$BUILD" dev-01
python3 -u "$ROOT/tools/soak_service.py" >svc.out 2>svc.err &
pids+=($!)
SVC_PORT=$(wait_for_line svc.out '^port ' 10 | awk '{print $2}')
"$BUILD/server/gateway-tunnel" --insecure --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --ops-addr 127.0.0.1:0 --admin-addr "" --credentials creds.txtpb >gw.out 2>gw.err &
pids+=($!)
GRPC=$(wait_for_line gw.out '^grpc ' 10 | awk '{print $2}')
HTTP=$(wait_for_line gw.out '^http ' 10 | awk '{print $2}')
check "service and gateway started" test -n "$SVC_PORT" -a -n "$HTTP"

# -L /: the target's loader and libraries are where Debian multiarch put them.
TUNNEL_SECRET="$SECRET" "$QEMU" -L / "$AGENT_BIN" connect --gateway "$GRPC" \
  --id dev-01 --token "$TOKEN" --insecure --max-concurrent 16 \
  --to "http://127.0.0.1:$SVC_PORT" >agent.out 2>agent.err &
AGENT=$!
pids+=($AGENT)
URL=$(wait_for_line agent.out '/t/dev-01/$' 60)
check "the emulated agent connected and printed its URL" \
  test "$URL" = "http://localhost:${HTTP##*:}/t/dev-01/"
BASE="http://$HTTP/t/dev-01"

expected() {  # expected SIZE SEED: SHA-256 of the service's body
  python3 -c 'import hashlib, random, sys
print(hashlib.sha256(random.Random(int(sys.argv[2])).randbytes(int(sys.argv[1]))).hexdigest())' "$1" "$2"
}
fetched() {  # fetched PATH: SHA-256 of what the visitor got ("" on error)
  curl -fsS --max-time 60 "$BASE$1" | sha256sum | awk '{print $1}'
}

check "a 100-byte response" \
  test "$(fetched '/blob?size=100&seed=1')" = "$(expected 100 1)"
check "an 8 MiB download (Content-Length)" \
  test "$(fetched '/blob?size=8388608&seed=2')" = "$(expected 8388608 2)"
check "an 8 MiB download (chunked)" \
  test "$(fetched '/stream?size=8388608&seed=3')" = "$(expected 8388608 3)"
head -c 8388608 /dev/urandom >upload.bin
sent=$(sha256sum upload.bin | awk '{print $1}')
got=$(curl -fsS --max-time 60 --data-binary @upload.bin "$BASE/sha256")
check "an 8 MiB upload reaches the service intact" test "$got" = "$sent"
got=$(curl -fsS --max-time 60 -H 'Transfer-Encoding: chunked' \
  --data-binary @upload.bin "$BASE/sha256")
check "a chunked 8 MiB upload reaches the service intact" test "$got" = "$sent"

# 32 requests at once on the one stream, each with its own body.
for seed in $(seq 100 131); do
  (
    size=$((seed * 997))
    if [ "$(fetched "/blob?size=$size&seed=$seed")" = "$(expected $size $seed)" ]; then
      echo ok
    else
      echo "bad $seed"
    fi
  ) >"concurrent.$seed" &
done
wait_concurrent() {
  local deadline=$((SECONDS + 90))
  while ((SECONDS < deadline)); do
    [ "$(cat concurrent.* 2>/dev/null | wc -l)" -ge 32 ] && return 0
    sleep 0.1
  done
  return 1
}
wait_concurrent
check "32 concurrent requests each got their own body" \
  test "$(cat concurrent.* | grep -c '^ok$')" = 32

kill -TERM "$AGENT"
wait_for_exit "$AGENT" 30
check "the emulated agent drains and exits 0 on SIGTERM" test "$exit_code" = 0

echo "cross_agent_e2e ($TRIPLET): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
