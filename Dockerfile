# syntax=docker/dockerfile:1
# gateway-tunnel in a container.
#
#   docker build -t tunnel-gateway .
#   docker run -d --name tunnel-gateway --stop-timeout 40 \
#     -p 8080:8080 -p 8082:8082 -v /srv/tunnel:/etc/tunnel \
#     -e TUNNEL_DOMAIN=example.com tunnel-gateway
#
# TLS on both listeners uses /etc/tunnel/tls-cert.pem and tls-key.pem (in
# the mounted directory, readable by uid 10001). Behind a TLS-terminating
# proxy instead, run with -e TUNNEL_TLS_CERT= -e TUNNEL_TLS_KEY=
# -e TUNNEL_INSECURE=true (plaintext on both listeners).
#
# The build stage runs tools/build-release.sh, the script CI runs with the
# same arguments (.ci/run), so the build steps are tested without a Docker
# engine. The runtime stage has only the runtime libraries (the list in
# packaging/runtime-packages.txt, which the install_tree test checks against
# the binaries) and runs as an unprivileged user.

FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN JOBS="$(nproc)" tools/build-release.sh --build-dir /tmp/build \
      --prefix /opt/tunnel --destdir /stage --no-tests

FROM debian:bookworm-slim
COPY packaging/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -q \
 && grep -v '^#' /tmp/runtime-packages.txt \
    | DEBIAN_FRONTEND=noninteractive xargs apt-get install -y -q \
        --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin tunnel
COPY --from=build /stage/opt/tunnel/bin/gateway-tunnel \
                  /stage/opt/tunnel/bin/tunnelctl /usr/local/bin/

# Agents on 8080 (gRPC: also reflection and grpc.health.v1.Health),
# visitors on 8082. The ops listener (/healthz, /metrics; --ops-addr,
# 127.0.0.1:8083 by default) stays on the container's loopback: the
# HEALTHCHECK below runs inside the container.
ENV TUNNEL_GRPC_ADDR=0.0.0.0:8080 \
    TUNNEL_HTTP_ADDR=0.0.0.0:8082 \
    TUNNEL_CREDENTIALS=/etc/tunnel/credentials.txtpb \
    TUNNEL_TLS_CERT=/etc/tunnel/tls-cert.pem \
    TUNNEL_TLS_KEY=/etc/tunnel/tls-key.pem
EXPOSE 8080 8082
USER tunnel:tunnel
# SIGTERM drains for up to --drain-timeout (30 s): run with --stop-timeout 40
# (docker's default of 10 s would cut the drain short).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS --max-time 2 http://127.0.0.1:8083/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/gateway-tunnel"]
