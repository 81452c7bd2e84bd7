#!/usr/bin/env bash
# The one build script: CI and tools/test.sh build with it, and so does the
# container's build stage (Dockerfile). Installs the Debian packages it
# needs, configures a Release build (-Wall -Wextra), builds, and with
# --prefix installs.
#
# Usage: tools/build-release.sh [--build-dir DIR] [--prefix DIR]
#            [--destdir DIR] [--no-tests] [-- CMAKE_ARGS...]
#   --build-dir DIR  build tree (default: build)
#   --prefix DIR     CMAKE_INSTALL_PREFIX, where the files will live (the
#                    systemd units name $prefix/bin); installs after building
#   --destdir DIR    stage the install under DIR (DESTDIR) instead of /
#   --no-tests       skip the test suite and the packages only tests need
# JOBS (default 2) sets the build's parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
prefix=""
destdir=""
tests=ON
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    --no-tests) tests=OFF; shift ;;
    --) shift; break ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
      exit 2
      ;;
  esac
done
if [ -n "$destdir" ] && [ -z "$prefix" ]; then
  echo "build-release: --destdir needs --prefix" >&2
  exit 2
fi

if [ "$tests" = ON ]; then
  bash tools/install-deps.sh
else
  bash tools/install-deps.sh --build-only
fi

configure=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DTUNNEL_BUILD_TESTS="$tests")
if [ -n "$prefix" ]; then configure+=(-DCMAKE_INSTALL_PREFIX="$prefix"); fi
cmake "${configure[@]}" "$@"
cmake --build "$build_dir" -j"${JOBS:-2}"

if [ -n "$prefix" ]; then
  DESTDIR="$destdir" cmake --install "$build_dir"
  echo "build-release: installed into ${destdir}${prefix}"
fi
