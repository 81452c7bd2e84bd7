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
bazel build --jobs=2 //...
bazel test --jobs=2 --local_test_jobs=2 "$@" //...
