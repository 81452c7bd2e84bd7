"""Settings every target of ours shares."""

# Warnings apply to our code only (generated protobuf code is exempt).
TUNNEL_COPTS = ["-Wall", "-Wextra"]
