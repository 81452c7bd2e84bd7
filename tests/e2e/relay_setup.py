"""What the encrypted relay's process-level tests share: the gateway on
fixed free ports, `agent-tunnel share` and its printed link, a tap that
records every byte through it, /metrics and /healthz."""
import json
import os
import re
import socket
import subprocess
import threading
import urllib.request

from e2e_util import read_line, wait_until


class Tap:
    """A TCP proxy on 127.0.0.1 that records every byte both ways."""

    def __init__(self, target_port):
        self.target = target_port
        self.data = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                a.close()
                continue
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self.pipe, args=(x, y),
                                 daemon=True).start()

    def pipe(self, src, dst):
        while True:
            try:
                chunk = src.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self.lock:
                self.data += chunk
            try:
                dst.sendall(chunk)
            except OSError:
                return


def free_port():
    """A port of 127.0.0.1 free now (for a process restarted on it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metric(ops, name, labels=""):
    """One sample of /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://{ops}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def healthz(ops):
    with urllib.request.urlopen(f"http://{ops}/healthz", timeout=10) as r:
        return json.loads(r.read())


class Gateway:
    """gateway-tunnel on fixed free ports (so a restart keeps them), plain
    text, debug logs, the relay on."""

    def __init__(self, build, grpc, http, ops, extra=()):
        self.build = build
        self.grpc, self.http, self.ops = grpc, http, ops
        self.extra = list(extra)
        self.proc = None

    def start(self, log):
        self.proc = subprocess.Popen(
            [os.path.join(self.build, "server", "gateway-tunnel"), "--insecure",
             "--admin-addr", "", "--ops-addr", f"127.0.0.1:{self.ops}",
             "--grpc-addr", f"127.0.0.1:{self.grpc}",
             "--http-addr", f"127.0.0.1:{self.http}", "--domain", "127.0.0.1",
             "--credentials", "creds.txtpb", "--log-level", "debug",
             *self.extra],
            stdout=open(log + ".out", "a"), stderr=open(log + ".err", "a"))
        wait_until(lambda: self.ready(), 20, "the gateway to listen")

    def ready(self):
        try:
            healthz(f"127.0.0.1:{self.ops}")
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def issue(build, agent_id):
    """A token for `agent_id` in creds.txtpb: (token, secret)."""
    out = subprocess.run(
        [os.path.join(build, "tools", "tunnelctl"), "token", "issue", "--id",
         agent_id, "--credentials", "creds.txtpb"], capture_output=True,
        text=True, timeout=30, check=True).stdout
    return (re.search(r"^token: (\S+)", out, re.M).group(1),
            re.search(r"^secret: (\S+)", out, re.M).group(1))


def share(build, name, grpc, svc_port, creds, extra=()):
    """`agent-tunnel share` as `name` (its output in NAME.out/.err)."""
    token, secret = creds
    return subprocess.Popen(
        [os.path.join(build, "agent", "agent-tunnel"), "share", "--gateway",
         f"127.0.0.1:{grpc}", "--id", name, "--token", token, "--insecure",
         "--to", f"http://127.0.0.1:{svc_port}", *extra],
        env=dict(os.environ, TUNNEL_SECRET=secret),
        stdout=open(name + ".out", "w"), stderr=open(name + ".err", "w"))


def share_link(name):
    """The link and the six digits `name` printed."""
    link = read_line(name + ".out", r"^Open on your phone:", 20).split()[-1]
    code = read_line(name + ".out", r"^Pairing code:", 5)
    code = "".join(re.search(r"Pairing code:\s+(\d{3}) (\d{3})", code).groups())
    return link, code
