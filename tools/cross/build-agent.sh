#!/usr/bin/env bash
# Cross-builds agent-tunnel (and tunnelctl and the agent's tests) for a
# device architecture on Debian bookworm, through Debian multiarch:
#   tools/cross/build-agent.sh arm64     # aarch64-linux-gnu (Raspberry Pi 3/4/5, 64-bit)
#   tools/cross/build-agent.sh armhf     # arm-linux-gnueabihf (32-bit)
# It installs the cross compiler and the target's -dev packages
# (dpkg --add-architecture; the host's protoc and grpc_cpp_plugin generate
# the code), configures an agent-only build in build-<triplet>/ with
# cmake/toolchains/<triplet>.cmake, builds, runs the agent's unit tests and
# tunnelctl's test under qemu-user, and writes the stripped binary to
# dist/<arch>/agent-tunnel with the Debian packages a device needs to run it.
#
# Options: --no-install (packages are there already), --no-test.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() { echo "usage: $0 arm64|armhf [--no-install] [--no-test]" >&2; exit 2; }
[ $# -ge 1 ] || usage
ARCH="$1"
shift
install=1 run_tests=1
for opt in "$@"; do
  case "$opt" in
    --no-install) install=0 ;;
    --no-test) run_tests=0 ;;
    *) usage ;;
  esac
done
case "$ARCH" in
  arm64) TRIPLET=aarch64-linux-gnu ;;
  armhf) TRIPLET=arm-linux-gnueabihf ;;
  *) usage ;;
esac
BUILD="build-$TRIPLET"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ "$install" = 1 ]; then
  bash tools/install-deps.sh  # the host side: cmake, ninja, protoc, plugin
  # The cross compiler by name: crossbuild-essential-<arch> would do the same,
  # but apt's resolver gives up on its "gcc-<triplet> | gcc:<arch>"
  # alternative once the target's -dev packages are in the same request.
  packages=(
    "g++-$TRIPLET" qemu-user-static
    "libgrpc++-dev:$ARCH" "libprotobuf-dev:$ARCH" "libabsl-dev:$ARCH"
    "libssl-dev:$ARCH" "libcpp-httplib-dev:$ARCH" "libqrencode-dev:$ARCH"
    "libcurl4-openssl-dev:$ARCH" "libcrypt-dev:$ARCH"
    "libgtest-dev:$ARCH" "libgmock-dev:$ARCH"
  )
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
      grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    added_arch=0
    if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
      $SUDO dpkg --add-architecture "$ARCH"
      added_arch=1
    fi
    $SUDO apt-get update -q
    echo "cross: installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
      --no-install-recommends "${missing[@]}"; then
      cat >&2 <<MSG
cross: apt could not install the $ARCH packages (its reason is above).
Multiarch needs the same version of every shared library (libssl3, ...) for
$ARCH as for the host; when the repositories this machine uses carry newer
host versions than they do for $ARCH (e.g. security updates published for
amd64 only), the two cannot be installed side by side.
MSG
      if [ "$added_arch" = 1 ]; then $SUDO dpkg --remove-architecture "$ARCH" || true; fi
      exit 1
    fi
  fi
fi

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="cmake/toolchains/$TRIPLET.cmake" \
  -DTUNNEL_BUILD_GATEWAY=OFF
targets=(agent-tunnel tunnelctl)
if [ "$run_tests" = 1 ]; then targets+=(common_test agent_test relay_test); fi
cmake --build "$BUILD" -j2 --target "${targets[@]}"

if [ "$run_tests" = 1 ]; then
  # Runs under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR from the toolchain).
  ctest --test-dir "$BUILD" -j2 --output-on-failure
fi

mkdir -p "dist/$ARCH"
"$TRIPLET-strip" -o "dist/$ARCH/agent-tunnel" "$BUILD/agent/agent-tunnel"
size=$(stat -c %s "dist/$ARCH/agent-tunnel")
needed=$("$TRIPLET-readelf" -d "dist/$ARCH/agent-tunnel" |
  sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
runtime=$(for lib in $needed; do
  dpkg -S "/usr/lib/$TRIPLET/$lib" "/lib/$TRIPLET/$lib" 2>/dev/null |
    sed 's/:.*//' || true
done | sort -u | tr '\n' ' ')
echo "cross: dist/$ARCH/agent-tunnel: $size bytes stripped ($(( (size + 1023) / 1024 )) KiB), $(echo "$needed" | wc -l) shared libraries"
echo "cross: on the device (Debian/Raspberry Pi OS bookworm): apt install $runtime"
