#!/usr/bin/env bash
# The Bazel build, offline with Debian's bazel-bootstrap: installs it (and
# the packages CMake needs too), builds every target and runs every test.
# Usage: tools/bazel-test.sh [extra bazel test args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh
if ! command -v bazel >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
    --no-install-recommends bazel-bootstrap
fi
cmake_version=$(sed -n 's/^project(tunnel VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
bazel_version=$(sed -n 's/^TUNNEL_VERSION = "\(.*\)"/\1/p' bazel/tunnel.bzl)
if [ "$cmake_version" != "$bazel_version" ]; then
  echo "bazel-test: version $bazel_version in bazel/tunnel.bzl, $cmake_version in CMakeLists.txt" >&2
  exit 1
fi
bazel build --jobs=2 //...
bazel test --jobs=2 --local_test_jobs=2 "$@" //...
