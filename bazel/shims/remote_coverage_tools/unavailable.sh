#!/bin/sh
echo "bazel coverage is not available in the offline build (use CMake)" >&2
exit 1
