"""What the inspector's process-level tests share: a local service of mixed
kinds that remembers what it received, and the real gateway-tunnel and
agent-tunnel (with --inspect on a free port of 127.0.0.1) in a temp dir.

The service:
  POST /api/...      echoes the JSON body back (application/json)
  POST /form         "thanks" (text/plain), for form posts
  POST /upload       the SHA-256 of the body (text/plain)
  GET  /gz           a JSON document, gzip-compressed (Content-Encoding)
  GET  /slow         a download of 64 KiB chunks that never ends by itself
  GET  /ws           an upgrade (101, "Upgrade: echo"): echoes raw bytes
  anything else      "hello <path>" (text/plain)
Every request is appended to Service.seen as (method, path, headers, body).
"""
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from e2e_util import failures, read_line, stop


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def _remember(self, body):
        with Handler.lock:
            Handler.seen.append(
                (self.command, self.path, list(self.headers.items()), body))

    def _answer(self, status, body, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _post(self):
        body = self._body()
        self._remember(body)
        if self.path.startswith("/api/"):
            self._answer(200, body, "application/json")
        elif self.path == "/form":
            self._answer(200, b"thanks")
        elif self.path == "/upload":
            self._answer(200, hashlib.sha256(body).hexdigest().encode())
        else:
            self._answer(200, b"posted " + self.path.encode())

    do_POST = _post
    do_PUT = _post
    do_PATCH = _post

    def do_GET(self):
        self._remember(b"")
        if self.path == "/gz":
            doc = json.dumps({"compressed": True, "items": list(range(5))})
            self._answer(200, gzip.compress(doc.encode()), "application/json",
                         [("Content-Encoding", "gzip")])
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                for _ in range(6000):  # bounded: 375 MiB at most
                    self.wfile.write(b"\0" * 65536)
                    self.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                pass  # the visitor went away, as the test wants
            self.close_connection = True
        elif self.path == "/ws":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            self.connection.settimeout(30)
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
        else:
            self._answer(200, ("hello " + self.path).encode())


def start_service():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_tunnel(build, svc_port, procs, extra_agent_args=()):
    """Starts gateway and agent (in the current directory); returns
    (http_addr, inspector_base_url)."""
    tunnelctl = os.path.join(build, "tools", "tunnelctl")
    issued = subprocess.run(
        [tunnelctl, "token", "issue", "--id", "cam-01", "--credentials",
         "creds.txtpb"], capture_output=True, text=True, timeout=30,
        check=True).stdout
    token = re.search(r"^token: (\S+)", issued, re.M).group(1)
    secret = re.search(r"^secret: (\S+)", issued, re.M).group(1)
    gw = subprocess.Popen(
        [os.path.join(build, "server", "gateway-tunnel"), "--insecure",
         "--admin-addr", "", "--ops-addr", "", "--grpc-addr", "127.0.0.1:0",
         "--http-addr", "127.0.0.1:0", "--credentials", "creds.txtpb"],
        stdout=open("gw.out", "w"), stderr=open("gw.err", "w"))
    procs.append(gw)
    read_line("gw.out", r"^http ", 10)
    lines = open("gw.out").read().split("\n")
    grpc = lines[0].split(" ")[1]
    http_addr = lines[1].split(" ")[1]
    env = dict(os.environ, TUNNEL_SECRET=secret)
    agent = subprocess.Popen(
        [os.path.join(build, "agent", "agent-tunnel"), "connect", "--gateway",
         grpc, "--id", "cam-01", "--token", token, "--insecure", "--to",
         f"http://127.0.0.1:{svc_port}", "--state-file", "state.json", "--inspect",
         "127.0.0.1:0", *extra_agent_args],
        env=env, stdout=open("agent.out", "w"), stderr=open("agent.err", "w"))
    procs.append(agent)
    read_line("agent.out", r"/t/cam-01/$", 20)
    line = read_line("agent.err", r"inspector: http://", 10)
    inspector = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
    return http_addr, inspector


def run(name, test):
    """Runs test(procs, service_port) in a fresh temp dir with the service
    up; stops every process in `procs` afterwards; keeps the dir only when a
    check failed. The exit status: 1 if any check failed."""
    work = tempfile.mkdtemp(prefix=name + ".")
    os.chdir(work)
    procs = []
    server = start_service()
    try:
        test(procs, server.server_address[1])
    finally:
        stop(procs)
        server.shutdown()
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs and outputs kept in {work}", file=sys.stderr)
    print(f"{name}: {len(failures)} failed")
    return 1 if failures else 0
