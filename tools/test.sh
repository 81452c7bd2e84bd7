#!/usr/bin/env bash
# The whole test suite in one command: installs what is needed (Debian
# bookworm), builds everything with -Wall -Wextra through the same script as
# the container image (tools/build-release.sh), and runs every test with
# ctest. Usage: tools/test.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/build-release.sh --build-dir build
ctest --test-dir build -j2 --output-on-failure "$@"
