"""Settings every target of ours shares."""

# Warnings apply to our code only (generated protobuf code is exempt).
TUNNEL_COPTS = ["-Wall", "-Wextra"]

# The version /healthz and tunnel_build_info report. CMake takes it from
# project(VERSION) in CMakeLists.txt; tools/bazel-test.sh fails when the two
# differ.
TUNNEL_VERSION = "0.1.0"
