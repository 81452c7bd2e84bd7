"""Settings every target of ours shares."""

# Warnings apply to our code only (generated protobuf code is exempt).
TUNNEL_COPTS = ["-Wall", "-Wextra"]

# The version /healthz and tunnel_build_info report. CMake takes it from
# project(VERSION) in CMakeLists.txt; tools/bazel-test.sh fails when the two
# differ.
TUNNEL_VERSION = "0.1.0"

def grpc_proto_library(name, protos, proto_path, srcs = []):
    """C++ message and gRPC code for `protos` (paths below `proto_path`,
    without ".proto"), made by the host's protoc and grpc_cpp_plugin
    (Debian's protobuf-compiler and protobuf-compiler-grpc), as in CMake.

    `proto_path` is a shell expression; `srcs` are the .proto files when
    they are in the workspace (files from /usr/share need none).
    """
    generated = [p + ext for p in protos for ext in [
        ".pb.h",
        ".pb.cc",
        ".grpc.pb.h",
        ".grpc.pb.cc",
    ]]
    native.genrule(
        name = name + "_codegen",
        srcs = srcs,
        outs = generated,
        cmd = ("protoc --proto_path=" + proto_path +
               " --cpp_out=$(RULEDIR) --grpc_out=$(RULEDIR)" +
               " --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) " +
               " ".join([proto_path + "/" + p + ".proto" for p in protos])),
    )
    native.cc_library(
        name = name,
        srcs = [f for f in generated if f.endswith(".cc")],
        hdrs = [f for f in generated if f.endswith(".h")],
        includes = ["."],
        deps = ["@system//:grpc"],
    )
