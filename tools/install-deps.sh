#!/usr/bin/env bash
# Installs everything needed to build and test the tunnel on Debian bookworm.
# Idempotent: packages already present are left alone. Run as root (or with
# sudo). Usage: tools/install-deps.sh [--build-only]
#   --build-only  just what building needs (the container's build stage),
#                 without the tools the tests use.
set -euo pipefail

build_packages=(
  build-essential cmake pkg-config ninja-build ccache git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libssl-dev libcpp-httplib-dev libqrencode-dev grpc-proto
  libboost-context-dev libcurl4-openssl-dev libcrypt-dev libhiredis-dev
)
# libboost-context-dev: the front door runs each active request on a fiber.
# libcurl4-openssl-dev: the agent's client towards https local services and
# services by host name (agent/origin_loop: libcurl's multi interface; plain
# http goes to a native client on the same loop, whose HTTP/1 parser is
# Boost.Beast's, from the libboost headers libboost-context-dev brings).
# libcrypt-dev: bcrypt for basic auth (crypt_rn; libxcrypt).
# libhiredis-dev: the gateway cluster's directory in Redis (hiredis, a
# maintained C client, instead of a hand-written RESP client).
# grpc-proto: grpc.health.v1, which the gateway serves itself (it also
# gives grpc_ops_e2e the reflection proto).
# GoogleTest: the unit and integration tests; curl, python3-*: process-level
# tests; systemd: systemd-analyze for install_tree;
# apache2-utils: htpasswd -B makes a bcrypt file for access_e2e;
# redis-server: the gateway cluster's tests start their own (cluster_e2e);
# chromium: the inspector's page and the encrypted relay's page checked in
# a real browser (inspect_browser_e2e, relay_browser_e2e, over the DevTools
# protocol); python3-cryptography: the relay's third implementation in
# relay_e2e; nodejs: relay.js's own tests (relay_js_test);
# zbar-tools: zbarimg decodes the agent's QR code and bsdutils' `script`
# gives it a terminal (agent_ux_e2e).
test_packages=(
  libgtest-dev libgmock-dev curl python3 python3-websockets clang-format
  python3-grpcio python3-protobuf systemd python3-prometheus-client
  zbar-tools bsdutils apache2-utils chromium redis-server
  python3-cryptography nodejs
)

case "${1:-}" in
  "") packages=("${build_packages[@]}" "${test_packages[@]}") ;;
  --build-only) packages=("${build_packages[@]}") ;;
  *)
    echo "usage: $0 [--build-only]" >&2
    exit 2
    ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
