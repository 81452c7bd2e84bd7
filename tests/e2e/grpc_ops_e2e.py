"""gRPC reflection and health on the gateway's agent port, checked with real
clients against the real binaries.

Starts tunnelctl, gateway-tunnel (port 0), a local service that can hold a
request, and agent-tunnel; then, with Debian's python3-grpcio and the
reflection and health protos from Debian's grpc-proto (compiled here with
protoc into a temp dir):

- reflection lists tunnel.v1.TunnelService, grpc.health.v1.Health and the
  reflection service, and describes tunnel.v1.Envelope (its oneof) and
  TunnelService.Connect (bidi streaming), as `grpcurl describe` would; the
  admin listener (--admin-addr) serves reflection of tunnel.v1.AdminService;
- Health.Check answers SERVING for "" and "tunnel.v1.TunnelService" (and
  NOT_FOUND for an unknown name), while Connect without credentials is still
  refused with UNAUTHENTICATED;
- with a visitor request held in flight, SIGTERM starts the drain: a
  Health.Watch opened before the signal reports NOT_SERVING, Check says
  NOT_SERVING for both names while the gateway is still draining (and so
  does the admin port's Health, while its API still answers), and once
  the request is released it completes and the gateway exits 0.

Usage: /usr/bin/python3 grpc_ops_e2e.py BUILD_DIR PROTOC
(Debian's Python packages import only under /usr/bin/python3.)
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

GRPC_PROTO_DIR = "/usr/share/grpc-proto"
HEALTH_PROTO = "grpc/health/v1/health.proto"
# gRPC C++ 1.51 serves reflection v1alpha only (v1 came in later releases).
REFLECTION_PROTO = "grpc/reflection/v1alpha/reflection.proto"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
HEALTH_SERVICE = "grpc.health.v1.Health"
TUNNEL_SERVICE = "tunnel.v1.TunnelService"
ADMIN_SERVICE = "tunnel.v1.AdminService"
TIMEOUT = 20  # seconds; every wait below is bounded by it

passed = 0
failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok:", what)
    else:
        failed += 1
        print("FAIL:", what, detail, file=sys.stderr)


def wait_until(condition, timeout=TIMEOUT):
    """Polls `condition` until it returns something truthy or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    return None


def wait_for_line(path, regex, timeout=TIMEOUT):
    pattern = re.compile(regex)

    def find():
        try:
            with open(path) as f:
                for line in f:
                    if pattern.search(line):
                        return line.rstrip("\n")
        except FileNotFoundError:
            pass
        return None

    return wait_until(find, timeout)


def compile_protos(protoc, out):
    """Generates health_pb2 and reflection_pb2 in `out`. The protos are
    copied under flat names first: their own paths (grpc/...) would make
    Python modules named grpc.*, which grpcio's package shadows."""
    src = os.path.join(out, "src")
    os.makedirs(src)
    for proto, name in ((HEALTH_PROTO, "health.proto"),
                        (REFLECTION_PROTO, "reflection.proto")):
        shutil.copy(os.path.join(GRPC_PROTO_DIR, proto),
                    os.path.join(src, name))
    subprocess.run([protoc, "-I", src, "--python_out", out,
                    os.path.join(src, "health.proto"),
                    os.path.join(src, "reflection.proto")], check=True)
    sys.path.insert(0, out)


class Clients:
    """Generic gRPC calls built from the generated messages (no stubs are
    needed for that, so no grpc_tools plugin either)."""

    def __init__(self, channel):
        import health_pb2
        import reflection_pb2
        self.health_pb2 = health_pb2
        self.reflection_pb2 = reflection_pb2
        self.check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        self.watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        self.reflect = channel.stream_stream(
            "/" + REFLECTION_SERVICE + "/ServerReflectionInfo",
            request_serializer=(
                reflection_pb2.ServerReflectionRequest.SerializeToString),
            response_deserializer=(
                reflection_pb2.ServerReflectionResponse.FromString))
        self.connect = channel.stream_stream(
            "/tunnel.v1.TunnelService/Connect",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b)

    def status(self, service):
        reply = self.check(self.health_pb2.HealthCheckRequest(service=service),
                           timeout=TIMEOUT)
        return self.health_pb2.HealthCheckResponse.ServingStatus.Name(
            reply.status)

    def reflection(self, **request):
        reply = list(self.reflect(
            iter([self.reflection_pb2.ServerReflectionRequest(**request)]),
            timeout=TIMEOUT))
        assert len(reply) == 1, reply
        return reply[0]


def check_admin_reflection(c):
    """The admin listener serves reflection for its own service only."""
    listed = c.reflection(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    check("admin port reflection lists " + ADMIN_SERVICE,
          ADMIN_SERVICE in names, sorted(names))
    check("admin port does not serve " + TUNNEL_SERVICE,
          TUNNEL_SERVICE not in names, sorted(names))
    files = c.reflection(file_containing_symbol=ADMIN_SERVICE)
    fds = []
    for raw in files.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        fds.append(fd.name)
    check("admin port describes tunnel/v1/admin.proto",
          "tunnel/v1/admin.proto" in fds, fds)


def check_reflection(c):
    listed = c.reflection(list_services="")
    names = {s.name for s in listed.list_services_response.service}
    for name in (TUNNEL_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE):
        check("reflection lists " + name, name in names, sorted(names))

    files = c.reflection(file_containing_symbol="tunnel.v1.Envelope")
    protos = []
    for raw in files.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        protos.append(fd)
    check("file_containing_symbol returns tunnel/v1/tunnel.proto",
          any(fd.name == "tunnel/v1/tunnel.proto" for fd in protos),
          [fd.name for fd in protos])

    # What `grpcurl describe` does: load the returned files into a pool.
    pool = descriptor_pool.DescriptorPool()
    for fd in protos:
        pool.Add(fd)
    try:
        envelope = pool.FindMessageTypeByName("tunnel.v1.Envelope")
        oneof = envelope.oneofs_by_name["message"]
        in_oneof = {f.name for f in oneof.fields}
        want = {"connect", "request", "response", "control", "data", "close",
                "connect_error", "accepted"}
        check("Envelope's oneof `message` has " + ", ".join(sorted(want)),
              want <= in_oneof, sorted(in_oneof))
        connect = pool.FindServiceByName(TUNNEL_SERVICE).FindMethodByName(
            "Connect")
        check("TunnelService.Connect is described as bidi Envelope streams",
              connect.input_type.full_name == "tunnel.v1.Envelope" and
              connect.output_type.full_name == "tunnel.v1.Envelope" and
              connect.client_streaming and connect.server_streaming)
    except KeyError as e:
        check("the descriptors describe Envelope and TunnelService", False,
              repr(e))

    missing = c.reflection(file_containing_symbol="tunnel.v1.NoSuchThing")
    check("an unknown symbol is NOT_FOUND",
          missing.error_response.error_code == grpc.StatusCode.NOT_FOUND
          .value[0], missing)


def main():
    build, protoc = os.path.abspath(sys.argv[1]), sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    work = tempfile.mkdtemp(prefix="grpc_ops_e2e.")
    procs = []

    def start(name, argv, env=None):
        out = open(os.path.join(work, name + ".out"), "w")
        err = open(os.path.join(work, name + ".err"), "w")
        p = subprocess.Popen(argv, cwd=work, stdout=out, stderr=err,
                             env=dict(os.environ, **(env or {})))
        procs.append(p)
        return p

    try:
        compile_protos(protoc, os.path.join(work, "gen"))
        issued = subprocess.run(
            [os.path.join(build, "tools/tunnelctl"), "token", "issue", "--id",
             "cam-01", "--credentials", "creds.txtpb"],
            cwd=work, capture_output=True, text=True, check=True).stdout
        token = re.search(r"^token: (\S+)", issued, re.M).group(1)
        secret = re.search(r"^secret: (\S+)", issued, re.M).group(1)

        release = os.path.join(work, "release")
        start("gated", [sys.executable, "-u",
                        os.path.join(here, "gated_service.py"), "--release",
                        release])
        gated_port = wait_for_line(os.path.join(work, "gated.out"),
                                   r"^port ").split()[1]
        gw = start("gw", [
            os.path.join(build, "server/gateway-tunnel"), "--insecure",
            "--admin-addr",
            "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--http-addr",
            "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--credentials",
            "creds.txtpb", "--drain-timeout", "30s"
        ])
        grpc_addr = wait_for_line(os.path.join(work, "gw.out"),
                                  r"^grpc ").split()[1]
        http_addr = wait_for_line(os.path.join(work, "gw.out"),
                                  r"^http ").split()[1]
        admin_addr = wait_for_line(os.path.join(work, "gw.out"),
                                   r"^admin ").split()[1]
        start("agent", [
            os.path.join(build, "agent/agent-tunnel"), "connect", "--gateway",
            grpc_addr, "--id", "cam-01", "--token", token, "--insecure",
            "--to", "http://127.0.0.1:" + gated_port
        ], env={"TUNNEL_SECRET": secret})
        check("agent connected",
              wait_for_line(os.path.join(work, "agent.out"), r"/t/cam-01/$"))

        channel = grpc.insecure_channel(grpc_addr)
        c = Clients(channel)
        check_reflection(c)
        admin = Clients(grpc.insecure_channel(admin_addr))
        check_admin_reflection(admin)
        check('admin port: Health.Check("") is SERVING',
              admin.status("") == "SERVING")
        check('Health.Check("") is SERVING', c.status("") == "SERVING")
        check("Health.Check(tunnel.v1.TunnelService) is SERVING",
              c.status(TUNNEL_SERVICE) == "SERVING")
        try:
            c.status("no.such.Service")
            check("Health.Check of an unknown service is NOT_FOUND", False)
        except grpc.RpcError as e:
            check("Health.Check of an unknown service is NOT_FOUND",
                  e.code() == grpc.StatusCode.NOT_FOUND, e)
        try:
            list(c.connect(iter([b""]), timeout=TIMEOUT))
            check("Connect without credentials is UNAUTHENTICATED", False)
        except grpc.RpcError as e:
            check("Connect without credentials is UNAUTHENTICATED",
                  e.code() == grpc.StatusCode.UNAUTHENTICATED, e)

        # Hold a visitor request so the drain lasts until we release it.
        held = {}

        def visit():
            try:
                with urllib.request.urlopen(
                        "http://%s/t/cam-01/gated" % http_addr,
                        timeout=60) as r:
                    held["status"], held["body"] = r.status, r.read()
            except Exception as e:  # reported by the checks below
                held["error"] = repr(e)

        visitor = threading.Thread(target=visit)
        visitor.start()
        check("the service holds a request",
              wait_for_line(os.path.join(work, "gated.out"), r"^held"))

        watch = c.watch(c.health_pb2.HealthCheckRequest(service=""),
                        timeout=TIMEOUT)
        name = c.health_pb2.HealthCheckResponse.ServingStatus.Name
        check("Health.Watch starts at SERVING",
              name(next(watch).status) == "SERVING")
        gw.send_signal(signal.SIGTERM)
        try:
            check("Health.Watch reports NOT_SERVING once the drain starts",
                  name(next(watch).status) == "NOT_SERVING")
        except (grpc.RpcError, StopIteration) as e:
            check("Health.Watch reports NOT_SERVING once the drain starts",
                  False, e)
        watch.cancel()
        check('while draining, Health.Check("") is NOT_SERVING',
              c.status("") == "NOT_SERVING")
        check("while draining, Health.Check(tunnel.v1.TunnelService) is "
              "NOT_SERVING", c.status(TUNNEL_SERVICE) == "NOT_SERVING")
        check('while draining, the admin port\'s Health.Check("") is '
              "NOT_SERVING", admin.status("") == "NOT_SERVING")
        listed = admin.reflection(list_services="").list_services_response
        check("while draining, the admin port still answers",
              ADMIN_SERVICE in {s.name for s in listed.service})
        check("the gateway was still draining (request held, process up)",
              visitor.is_alive() and gw.poll() is None)

        open(release, "w").close()
        visitor.join(TIMEOUT)
        check("the held request completed with 200 and its body",
              held.get("status") == 200 and held.get("body") == b"released",
              held)
        try:
            code = gw.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            code = "still running"
        check("the gateway exits 0 after the drain", code == 0, code)
        channel.close()
    except grpc.RpcError as e:  # e.g. UNIMPLEMENTED: the service is missing
        check("every call reaches its service", False, e)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(TIMEOUT)
        if failed:
            for f in ("gw.err", "agent.err"):
                path = os.path.join(work, f)
                if os.path.exists(path):
                    print("--- " + f, file=sys.stderr)
                    print(open(path).read()[-4000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    print("grpc_ops_e2e: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
