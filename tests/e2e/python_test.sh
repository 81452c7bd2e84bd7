#!/usr/bin/env bash
# Runs one of the Python process-level tests for Bazel's sh_test with
# Debian's /usr/bin/python3 (the only one that imports Debian's python3-*
# packages). Usage: python_test.sh SCRIPT.py ARGS...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
script="$1"
shift
exec /usr/bin/python3 -u "$here/$script" "$@"
