#!/usr/bin/env bash
# The whole test suite in one command: installs what is needed (Debian
# bookworm), builds everything with -Wall -Wextra, and runs every test with
# ctest. Usage: tools/test.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
ctest --test-dir build -j2 --output-on-failure "$@"
