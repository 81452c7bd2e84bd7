#!/usr/bin/env python3
"""A gateway cluster end to end: a real redis-server on a free port of
127.0.0.1, three real gateway-tunnel replicas sharing it, real agents and
local services, visitors over HTTP and WebSocket.

Checks: a visitor at each replica reaches each tunnel (the agent's own
replica or through a forwarding hop) with the same answer and an
X-Request-Id; 64 MiB down and up through a forwarding replica, by SHA-256; a
WebSocket through a forwarding replica; a slug owned by an agent on one
replica is refused to another agent on another; an access code set through
one replica's admin API holds on the others; an unknown slug is 404 and an
offline one 502 everywhere; the cluster's state in /healthz and /metrics;
Redis stopped: every replica keeps serving (its own agents, and the last
directory) and says so; Redis restarted empty: the directory and the admin
settings come back; a replica killed with -9 under load: the download in
flight through it is cut (never a short body taken as whole), its agent
(given every replica's address) is back through another replica within the
reconnect bound, and every tunnel is reachable from the survivors.

Usage: cluster_e2e.py BUILD_DIR. Needs /usr/sbin/redis-server (skips with 77
when it is missing, unless TUNNEL_REQUIRE_REDIS=1).
"""
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import ssl
import socket
import subprocess
import sys
import tempfile
import threading
import time

from e2e_util import check, failures, read_line, wait_until

BUILD = os.path.abspath(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
BLOCK = random.Random(7).randbytes(1 << 20)  # what /blob repeats
MIB = 1 << 20


def blob_sha(mib):
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(BLOCK)
    return h.hexdigest()


class Service(http.server.BaseHTTPRequestHandler):
    """GET /who: the service's name; GET /blob/N: N MiB; GET /slow: 64 KiB
    every 20 ms, 400 times; POST /sha: the body's SHA-256."""
    protocol_version = "HTTP/1.1"
    name = "?"

    def log_message(self, *args):
        pass

    def _send(self, body, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/who":
            self._send(self.name.encode())
        elif self.path.startswith("/blob/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n * MIB))
            self.end_headers()
            try:
                for _ in range(n):
                    self.wfile.write(BLOCK)
            except OSError:
                pass
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(400 * 65536))
            self.end_headers()
            try:
                for _ in range(400):
                    self.wfile.write(b"s" * 65536)
                    self.wfile.flush()
                    time.sleep(0.02)
            except OSError:
                pass
        else:
            self._send(("hello " + self.path).encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        while n > 0:
            chunk = self.rfile.read(min(n, MIB))
            if not chunk:
                break
            h.update(chunk)
            n -= len(chunk)
        self._send(h.hexdigest().encode())


def start_service(name):
    handler = type("Svc_" + name, (Service,), {"name": name})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port, *args):
    """One command over RESP; the raw reply bytes (None when unreachable)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            out = f"*{len(args)}\r\n".encode()
            for a in args:
                a = a.encode() if isinstance(a, str) else a
                out += f"${len(a)}\r\n".encode() + a + b"\r\n"
            s.sendall(out)
            return s.recv(65536)
    except OSError:
        return None


class Cluster:
    def __init__(self):
        self.procs = {}
        self.redis_port = None
        self.gw = {}  # name -> {"grpc","http","ops","admin"}
        self.ctl = os.path.join(BUILD, "tools", "tunnelctl")
        self.creds = {}

    def start_redis(self, port=None):
        for _ in range(5):  # a free port may be taken again before we bind
            self.redis_port = port or free_port()
            p = subprocess.Popen(
                [REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"],
                stdout=open("redis.out", "a"), stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: p.poll() is not None or
                           redis_cmd(self.redis_port, "PING") == b"+PONG\r\n",
                           10, "redis-server to answer PING")
            except TimeoutError:
                p.kill()
                continue
            if p.poll() is None:
                self.procs["redis"] = p
                return
        raise RuntimeError("redis-server did not start")

    def issue(self, agent_id):
        out = subprocess.run(
            [self.ctl, "token", "issue", "--id", agent_id, "--credentials",
             "creds.txtpb"], capture_output=True, text=True, timeout=30,
            check=True).stdout
        self.creds[agent_id] = (
            re.search(r"^token: (\S+)", out, re.M).group(1),
            re.search(r"^secret: (\S+)", out, re.M).group(1))

    def start_gateway(self, name, extra=(), secret="cluster.secret",
                      tls=("--insecure",)):
        out = f"gw-{name}.out"
        p = subprocess.Popen(
            [os.path.join(BUILD, "server", "gateway-tunnel"), *tls,
             "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
             "--ops-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
             "--admin-token-file", "admin.token", "--credentials",
             "creds.txtpb", "--cluster-redis",
             f"redis://127.0.0.1:{self.redis_port}", "--cluster-secret-file",
             secret, "--cluster-id", f"gw-{name}",
             "--cluster-heartbeat", "200ms", "--cluster-lease", "1s",
             "--cluster-redis-timeout", "300ms", *extra],
            stdout=open(out, "w"), stderr=open(f"gw-{name}.err", "w"))
        self.procs[f"gw-{name}"] = p
        read_line(out, r"^admin ", 15)
        addrs = dict(line.split(" ", 1) for line in
                     open(out).read().strip().split("\n"))
        self.gw[name] = addrs

    def start_agent(self, agent_id, target, gateways, extra=(),
                    tls=("--insecure",)):
        token, secret = self.creds[agent_id]
        env = dict(os.environ, TUNNEL_SECRET=secret)
        out = f"agent-{agent_id}.out"
        p = subprocess.Popen(
            [os.path.join(BUILD, "agent", "agent-tunnel"), "connect",
             "--gateway", ",".join(self.gw[g]["grpc"] for g in gateways),
             "--id", agent_id, "--token", token, *tls, "--to", target,
             "--inspect", "", "--state-file", f"state-{agent_id}.json",
             "--max-backoff", "1s", *extra],
            env=env, stdout=open(out, "w"), stderr=open(f"agent-{agent_id}.err",
                                                        "w"))
        self.procs[f"agent-{agent_id}"] = p
        return p

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def eventually(predicate, seconds, what):
    """True once `predicate` holds within `seconds` (wait_until), else False."""
    try:
        wait_until(predicate, seconds, what)
        return True
    except TimeoutError:
        return False


def get(addr, path, headers=None, timeout=30):
    """(status, headers dict (lowercase), body) of one GET; (0, {}, b"") when
    the connection fails."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except (OSError, http.client.HTTPException):
        return 0, {}, b""
    finally:
        c.close()


def get_tls(addr, path, ca):
    """(status, body) of one GET over HTTPS checked against `ca`; (0, b"")
    when the connection fails."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        c.close()


def make_certs():
    """ca.crt and gateway.crt/.key for localhost and 127.0.0.1; and
    other-ca.crt, a CA that signed nothing here."""
    def run(*args):
        subprocess.run(args, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{ca}.key",
            "-out", f"{ca}.crt", "-days", "1", "-subj", f"/CN={ca}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:P-256", "-nodes", "-keyout", "gateway.key", "-out",
        "gateway.csr", "-subj", "/CN=gateway")
    with open("gateway.ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    run("openssl", "x509", "-req", "-in", "gateway.csr", "-CA", "ca.crt",
        "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile",
        "gateway.ext", "-out", "gateway.crt")


def health(cluster, name):
    s, _, body = get(cluster.gw[name]["ops"], "/healthz")
    return json.loads(body) if s == 200 else {}


def metric(cluster, name, metric_name):
    _, _, body = get(cluster.gw[name]["ops"], "/metrics")
    m = re.search(rf"^{re.escape(metric_name)} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else None


def reaches(cluster, gw, slug, who):
    s, h, body = get(cluster.gw[gw]["http"], f"/t/{slug}/who", timeout=10)
    return s == 200 and body == who.encode() and "x-request-id" in h


def sha_download(addr, path):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = r.read(MIB)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    c.close()
    return r.status, n, h.hexdigest()


def sha_upload(addr, path, mib):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("POST", path, body=(BLOCK for _ in range(mib)),
              headers={"Content-Length": str(mib * MIB)})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body.decode()


def main(cluster):
    subprocess.run([cluster.ctl, "admin-token", "issue", "--file",
                    "admin.token"], check=True, capture_output=True)
    subprocess.run([cluster.ctl, "admin-token", "issue", "--file",
                    "cluster.secret"], check=True, capture_output=True)
    for a in ("cam-a", "cam-b", "cam-c", "ws-01", "thief", "cam-d", "cam-r",
              "cam-x", "cam-k", "cam-t"):
        cluster.issue(a)
    cluster.start_redis()
    for name in "abc":
        cluster.start_gateway(name)
    services = {n: start_service(n) for n in ("cam-a", "cam-b", "cam-c")}
    ws = subprocess.Popen(["/usr/bin/python3", "-u",
                           os.path.join(HERE, "ws_echo.py")],
                          stdout=open("ws.out", "w"), stderr=subprocess.STDOUT)
    cluster.procs["ws"] = ws
    ws_port = re.search(r"port (\d+)", read_line("ws.out", r"port \d+",
                                                 10)).group(1)
    home = {"cam-a": "a", "cam-b": "b", "cam-c": "c"}
    for agent_id, g in home.items():
        port = services[agent_id].server_address[1]
        # Every replica's address, its own first: two connections at once
        # (its own replica and the next), the third address in reserve.
        # cam-c keeps one connection (--connections 1), so that a
        # revocation below reaches it only through the cluster.
        order = [g] + [x for x in "abcabc"[("abc".index(g) + 1):][:2]]
        extra = ["--connections", "1"] if agent_id == "cam-c" else []
        cluster.start_agent(agent_id, f"http://127.0.0.1:{port}", order, extra)
    cluster.start_agent("ws-01", f"http://127.0.0.1:{ws_port}", ["a"])
    for agent_id in list(home) + ["ws-01"]:
        read_line(f"agent-{agent_id}.out", rf"/t/{agent_id}/$", 20)

    # --- every replica reaches every tunnel ---
    for gw in "abc":
        for slug in home:
            ok = eventually(lambda: reaches(cluster, gw, slug, slug), 10,
                            f"{slug} through gw-{gw}")
            where = "its own replica" if home[slug] == gw else "a forward"
            check(f"gw-{gw} reaches {slug} ({where})", ok)
    for gw in "abc":
        h = health(cluster, gw)
        c = h.get("cluster", {})
        check(f"gw-{gw} /healthz: redis up, 3 replicas",
              c.get("redis") == "up" and c.get("replicas") == 3, str(h))
    fwd = metric(cluster, "c", 'tunnel_cluster_forwarded_out_total{outcome="opened"}')
    # (cam-a is the one tunnel gw-c forwards: cam-b and cam-c are on it.)
    check("gw-c counted its forwarded requests", fwd is not None and fwd >= 1,
          str(fwd))

    # --- tunnelctl list / status against any replica show the cluster ---
    admin_c = ["--admin", cluster.gw["c"]["admin"], "--admin-token-file",
               "admin.token"]
    want = {"cam-a": {"gw-a", "gw-b"}, "cam-b": {"gw-b", "gw-c"},
            "cam-c": {"gw-c"}, "ws-01": {"gw-a"}}
    listed = {}

    def list_c():
        # The agents' second connections and the other replicas' next
        # heartbeats may still be on their way: asked again until then.
        r = subprocess.run([cluster.ctl, "list", "--json", *admin_c],
                           capture_output=True, text=True, timeout=30)
        listed.clear()
        for a in json.loads(r.stdout or "{}").get("agents", []):
            listed.setdefault(a["agent_id"], set()).add(a["replica"])
        return all(listed.get(k) == v for k, v in want.items())
    check("tunnelctl list on gw-c shows every replica's agents (two "
          "connections each where given several replicas)",
          eventually(list_c, 10, "the cluster's list"), str(listed))
    r = subprocess.run([cluster.ctl, "list", *admin_c], capture_output=True,
                       text=True, timeout=30)
    check("tunnelctl list's table has a REPLICA column",
          "REPLICA" in r.stdout and "gw-b" in r.stdout, r.stdout)
    r = subprocess.run([cluster.ctl, "status", "cam-a", "--json", *admin_c],
                       capture_output=True, text=True, timeout=30)
    st = json.loads(r.stdout or "{}")
    check("tunnelctl status cam-a on gw-c: online on gw-a or gw-b",
          st.get("status") == "online" and
          st.get("replica") in ("gw-a", "gw-b") and
          st.get("agent_id") == "cam-a", r.stdout + r.stderr)

    # --- 64 MiB both ways through a forwarding replica ---
    status, n, digest = sha_download(cluster.gw["c"]["http"], "/t/cam-a/blob/64")
    check("64 MiB download of cam-a (on gw-a) through gw-c: SHA-256 matches",
          status == 200 and n == 64 * MIB and digest == blob_sha(64),
          f"status {status}, {n} bytes")
    status, body = sha_upload(cluster.gw["b"]["http"], "/t/cam-c/sha", 64)
    check("64 MiB upload to cam-c (on gw-c) through gw-b: SHA-256 matches",
          status == 200 and body == blob_sha(64), f"status {status} {body}")

    # --- a WebSocket through a forwarding replica ---
    r = subprocess.run(["/usr/bin/python3", "-u",
                        os.path.join(HERE, "ws_client_check.py"),
                        f"ws://{cluster.gw['c']['http']}/t/ws-01"],
                       capture_output=True, text=True, timeout=120)
    check("WebSocket traffic to ws-01 (on gw-a) through gw-c",
          r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:])

    # --- slug ownership is cluster-wide ---
    thief = cluster.start_agent("thief", "http://127.0.0.1:9", ["c"],
                                ["--slug", "cam-a"])
    try:
        thief.wait(timeout=20)
    except subprocess.TimeoutExpired:
        thief.kill()
    err = open("agent-thief.err").read()
    check("slug cam-a (agent on gw-a) refused to another agent on gw-c",
          thief.returncode not in (0, None) and
          "belongs to another agent in the gateway cluster" in err,
          f"exit {thief.returncode}: {err[-500:]}")
    check("cam-a still served after the refused claim",
          reaches(cluster, "c", "cam-a", "cam-a"))

    # --- unknown and offline slugs ---
    for gw in "abc":
        s, _, _ = get(cluster.gw[gw]["http"], "/t/nobody-here/")
        check(f"gw-{gw}: unknown slug 404", s == 404, str(s))

    # --- an access code set through gw-b holds on gw-a and gw-c ---
    admin = ["--admin", cluster.gw["b"]["admin"], "--admin-token-file",
             "admin.token"]
    r = subprocess.run([cluster.ctl, "set-code", "cam-a", "7431-9090", *admin],
                       capture_output=True, text=True, timeout=30)
    check("set-code cam-a through gw-b", r.returncode == 0, r.stderr)
    for gw in "ac":
        gated = eventually(lambda: get(cluster.gw[gw]["http"], "/t/cam-a/who")[0]
                           == 401, 5, f"401 on gw-{gw}")
        check(f"gw-{gw}: cam-a now asks for the code (401)", gated)
        s, _, body = get(cluster.gw[gw]["http"], "/t/cam-a/who",
                         {"X-Tunnel-Access-Code": "7431-9090"})
        check(f"gw-{gw}: the right code passes", s == 200 and body == b"cam-a",
              str(s))
    # A visitor who typed the code at one replica is not asked again at
    # another (behind one name, any replica may take the next request).
    s_code, h_code, _ = get(cluster.gw["a"]["http"],
                            "/t/cam-a/who?code=7431-9090")
    cookie = (h_code.get("set-cookie") or "").split(";")[0]
    check("?code= at gw-a earns the access cookie (303)",
          s_code == 303 and cookie.startswith("tunnel_access="),
          f"{s_code} {h_code}")
    s_c, _, body_c = get(cluster.gw["c"]["http"], "/t/cam-a/who",
                         {"Cookie": cookie})
    check("the cookie earned at gw-a opens cam-a at gw-c",
          s_c == 200 and body_c == b"cam-a", str(s_c))
    r = subprocess.run([cluster.ctl, "set-code", "cam-b", "5555-1234", *admin],
                       capture_output=True, text=True, timeout=30)
    check("set-code cam-b through gw-b", r.returncode == 0, r.stderr)
    r = subprocess.run([cluster.ctl, "set-code", "nobody-here", "5555-1234",
                        *admin], capture_output=True, text=True, timeout=30)
    check("set-code for a slug no replica knows: refused",
          r.returncode != 0 and "in the cluster" in r.stderr, r.stderr)
    r = subprocess.run([cluster.ctl, "set-code", "cam-a", "--public", "--admin",
                        cluster.gw["c"]["admin"], "--admin-token-file",
                        "admin.token"], capture_output=True, text=True,
                       timeout=30)
    check("set-code cam-a --public through gw-c", r.returncode == 0, r.stderr)
    public = eventually(lambda: get(cluster.gw["a"]["http"], "/t/cam-a/who")[0] ==
                        200, 5, "cam-a public on gw-a")
    check("gw-a: cam-a public again", public)

    # --- Redis stopped: everyone keeps serving, and says so ---
    cluster.procs["redis"].kill()
    cluster.procs["redis"].wait()
    for gw in "abc":
        down = eventually(lambda: health(cluster, gw).get("cluster", {}).get(
                   "redis") == "down", 5, f"gw-{gw} to see Redis down")
        check(f"gw-{gw} /healthz says Redis is down", down)
    check("gw-a still serves its own agent", reaches(cluster, "a", "cam-a",
                                                     "cam-a"))
    check("gw-b still forwards to cam-c (last known directory)",
          reaches(cluster, "b", "cam-c", "cam-c"))
    check("tunnel_cluster_redis_up is 0",
          metric(cluster, "b", "tunnel_cluster_redis_up") == 0)
    s, _, _ = get(cluster.gw["a"]["http"], "/t/cam-b/who")
    check("cam-b keeps its access code while Redis is down", s == 401, str(s))

    # --- Redis back, empty: the directory is rebuilt ---
    cluster.start_redis(cluster.redis_port)
    for gw in "abc":
        synced = eventually(lambda: health(cluster, gw).get("cluster", {}) .get(
                     "replicas") == 3 and health(cluster, gw)["cluster"]["redis"]
                     == "up", 10, f"gw-{gw} back in sync")
        check(f"gw-{gw} back in sync with the restarted Redis (3 replicas)",
              synced)
    restored = eventually(lambda: (redis_cmd(cluster.redis_port, "HEXISTS",
                                             "admin:access", "cam-b") or b"")
                          .startswith(b":1"), 5, "cam-b's access code back in Redis")
    check("the replicas wrote cam-b's access code back into Redis", restored)
    owners = redis_cmd(cluster.redis_port, "HGETALL", "owners") or b""
    check("the slug owners are back in Redis",
          all(s.encode() in owners for s in ("cam-a", "cam-b", "cam-c")),
          str(owners))
    cluster.start_agent("cam-d", f"http://127.0.0.1:{services['cam-a'].server_address[1]}", ["b"])
    read_line("agent-cam-d.out", r"/t/cam-d/$", 20)
    new_ok = eventually(lambda: reaches(cluster, "a", "cam-d", "cam-a"), 5,
                        "cam-d through gw-a")
    check("a tunnel that connected after the restart is reachable everywhere",
          new_ok)

    r = subprocess.run([cluster.ctl, "set-code", "cam-b", "--public",
                        "--admin", cluster.gw["a"]["admin"],
                        "--admin-token-file", "admin.token"],
                       capture_output=True, text=True, timeout=30)
    check("set-code cam-b --public through gw-a (after the restart)",
          r.returncode == 0, r.stderr)
    public = eventually(lambda: reaches(cluster, "c", "cam-b", "cam-b"), 5,
                        "cam-b public on gw-c")
    check("gw-c: cam-b public again", public)

    # --- offline: 502 everywhere ---
    cluster.procs["agent-cam-d"].terminate()
    cluster.procs["agent-cam-d"].wait(timeout=20)
    for gw in "ac":
        offline = eventually(lambda: get(cluster.gw[gw]["http"], "/t/cam-d/")[0] ==
                             502, 5, f"502 for cam-d on gw-{gw}")
        check(f"gw-{gw}: cam-d (agent gone from gw-b) is 502, not 404",
              offline)

    def status_d():
        r = subprocess.run([cluster.ctl, "status", "cam-d", "--json",
                            "--admin", cluster.gw["a"]["admin"],
                            "--admin-token-file", "admin.token"],
                           capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout or "{}")

    # gw-a's directory drops cam-d at gw-b's next heartbeat.
    try:
        st = wait_until(lambda: (lambda d: d if d.get("status") == "offline"
                                 else None)(status_d()), 5,
                        "cam-d offline in gw-a's status")
    except TimeoutError:
        st = status_d()
    check("tunnelctl status cam-d on gw-a (never connected there): offline, "
          "owned by cam-d", st.get("status") == "offline" and
          st.get("agent_id") == "cam-d", str(st))

    # --- a per-tunnel rate limit counted across replicas ---
    # Windows are wall-clock minutes: keep the phase inside one.
    if int(time.time()) % 60 > 40:
        wait_until(lambda: int(time.time()) % 60 < 5, 25, "a fresh minute")
    limit = ["--tunnel-requests-per-minute", "20"]
    cluster.start_gateway("d", limit)
    cluster.start_gateway("e", limit)
    cluster.start_agent("cam-r", f"http://127.0.0.1:{services['cam-a'].server_address[1]}", ["d"])
    read_line("agent-cam-r.out", r"/t/cam-r/$", 20)
    wait_until(lambda: reaches(cluster, "e", "cam-r", "cam-a"), 10,
               "cam-r through gw-e")
    wait_until(lambda: reaches(cluster, "d", "cam-r", "cam-a"), 10,
               "cam-r through gw-d")

    def counted():
        minute = int(time.time()) // 60
        reply = redis_cmd(cluster.redis_port, "GET", f"rate:{minute}:cam-r")
        m = re.search(rb"\r\n(\d+)\r\n", reply or b"")
        return int(m.group(1)) if m else 0

    # The requests that found the tunnel above count too, each replica's
    # published at its next heartbeat (a loaded machine may have retried a
    # few): the base is the count once it has not moved for two heartbeats.
    wait_until(lambda: counted() > 0, 5, "the first counts in Redis")
    last = {"count": counted(), "since": time.monotonic()}

    def settled():
        now_count = counted()
        if now_count != last["count"]:
            last.update(count=now_count, since=time.monotonic())
        return time.monotonic() - last["since"] > 2.5
    wait_until(settled, 20, "the warm-up requests' counts to settle")
    base = last["count"]
    admitted = {"d": 0, "e": 0}
    refused = None
    for i in range(40):
        gw = "d" if i % 2 == 0 else "e"
        before = counted()
        s, h, _ = get(cluster.gw[gw]["http"], "/t/cam-r/who")
        if s == 429:
            refused = (gw, h)
            break
        admitted[gw] += 1
        # The next request is decided on what this one's replica told Redis.
        wait_until(lambda: counted() > before, 5, "the count to reach Redis")
        wait_until(lambda: health(cluster, "d") and health(cluster, "e"), 5,
                   "both replicas to answer")
    total = base + admitted["d"] + admitted["e"]
    print(f"rate limit 20/min: {base} before, then admitted {admitted}, "
          f"then refused on gw-{refused and refused[0]}")
    # One either way: the count before may miss a warm-up request a
    # replica had not sent yet, and two replicas may both admit the 20th.
    check("a limit of 20 per minute holds across two replicas (19 to 21 "
          "admitted in all, both replicas admitting)",
          refused is not None and 19 <= total <= 21 and
          min(admitted.values()) >= 1, f"{base} + {admitted}")
    check("the refusal is a 429 with Retry-After",
          refused is not None and "retry-after" in refused[1])
    cluster.procs["agent-cam-r"].terminate()
    for name in "de":
        cluster.procs[f"gw-{name}"].terminate()

    # --- a replica with another cluster secret is refused by the others ---
    subprocess.run([cluster.ctl, "admin-token", "issue", "--file",
                    "other.secret"], check=True, capture_output=True)
    cluster.start_gateway("x", secret="other.secret")
    cluster.start_agent("cam-x", f"http://127.0.0.1:{services['cam-a'].server_address[1]}", ["x"])
    read_line("agent-cam-x.out", r"/t/cam-x/$", 20)

    def refused_by_x():
        return (metric(cluster, "x",
                       'tunnel_cluster_forwarded_in_total{outcome="refused"}')
                or 0) >= 1

    # Until gw-a's directory has cam-x's route it answers 502 offline by
    # itself; then it forwards, and gw-x refuses.
    try:
        wait_until(lambda: get(cluster.gw["a"]["http"], "/t/cam-x/who")[0] ==
                   502 and refused_by_x(), 5, "gw-x to refuse gw-a's forward")
        refused_fwd = get(cluster.gw["a"]["http"], "/t/cam-x/who")[0] == 502
    except TimeoutError:
        refused_fwd = False
    check("a request forwarded to a replica with another secret: refused "
          "there (counted), 502 to the visitor", refused_fwd)
    check("... and that replica logged why",
          "bad signature" in open("gw-x.err").read())
    check("... while its own agent is served through it",
          reaches(cluster, "x", "cam-x", "cam-a"))
    cluster.procs["agent-cam-x"].terminate()
    cluster.procs["gw-x"].terminate()

    # --- kill -9 of a replica under load ---
    # cam-k has gw-b only; cam-b is on gw-b and gw-c at once.
    cluster.start_agent("cam-k", f"http://127.0.0.1:{services['cam-b'].server_address[1]}", ["b"])
    read_line("agent-cam-k.out", r"/t/cam-k/$", 20)
    wait_until(lambda: reaches(cluster, "a", "cam-k", "cam-b"), 10,
               "cam-k through gw-a")
    result = {}

    def slow_download():
        host, port = cluster.gw["a"]["http"].rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("GET", "/t/cam-k/slow")
        r = c.getresponse()
        result["status"] = r.status
        n = 0
        try:
            while True:
                chunk = r.read(65536)
                if not chunk:
                    break
                n += len(chunk)
                result["started"] = True
            # http.client ends a read early at EOF without complaint.
            result["outcome"] = ("complete" if n == 400 * 65536 else
                                 "cut: the connection closed early")
        except (OSError, http.client.HTTPException) as e:
            result["outcome"] = f"cut: {type(e).__name__}"
        result["bytes"] = n

    # Visitors of cam-b at both survivors, one request after another,
    # through the kill: each remembers when it started and what it got.
    load = {"stop": False, "results": []}

    def hammer(gw):
        while not load["stop"]:
            started = time.monotonic()
            ok = reaches(cluster, gw, "cam-b", "cam-b")
            load["results"].append((gw, started, ok))

    t = threading.Thread(target=slow_download)
    t.start()
    hammers = [threading.Thread(target=hammer, args=(gw,)) for gw in "ac"]
    for h in hammers:
        h.start()
    wait_until(lambda: result.get("started"), 10, "the slow download to start")
    cluster.procs["gw-b"].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    t.join(timeout=60)
    # Past the dead replica's lease (1 s), by 200 requests.
    wait_until(lambda: sum(1 for _, st, _ in load["results"]
                           if st > killed_at) >= 200 and
               time.monotonic() > killed_at + 1.5, 30,
               "200 requests after the kill")
    load["stop"] = True
    for h in hammers:
        h.join(timeout=30)
    after = [(gw, ok) for gw, st, ok in load["results"] if st > killed_at]
    failed = [gw for gw, ok in after if not ok]
    print(f"cam-b after kill -9 of gw-b: {len(after)} requests started, "
          f"{len(failed)} failed")
    check("the download in flight through the killed replica is cut, not "
          "taken as complete",
          result.get("outcome", "").startswith("cut") and
          result.get("bytes", 0) < 400 * 65536, str(result))
    check("cam-b (connected to gw-b and gw-c) loses no request started after "
          "gw-b's kill -9, through either survivor",
          len(after) >= 200 and not failed, f"{len(failed)} of {len(after)}")
    k_offline = eventually(lambda: get(cluster.gw["a"]["http"], "/t/cam-k/who")[0] ==
                           502, 5, "cam-k offline")
    check("cam-k (on gw-b only) is 502 once gw-b's lease expired", k_offline)
    for gw in "ac":
        for slug in ("cam-a", "cam-c"):
            check(f"gw-{gw} still reaches {slug}",
                  reaches(cluster, gw, slug, slug))
    status, n, digest = sha_download(cluster.gw["a"]["http"], "/t/cam-b/blob/8")
    check("8 MiB of cam-b through gw-a after the kill: SHA-256 matches",
          status == 200 and digest == blob_sha(8), f"{status} {n}")
    # cam-a's second connection (gw-b) moves on to gw-c: two again.
    moved = eventually(lambda: (lambda r: {a["replica"] for a in json.loads(
                r.stdout or "{}").get("agents", []) if a["agent_id"] == "cam-a"})(
                    subprocess.run([cluster.ctl, "list", "--json", *admin_c],
                                   capture_output=True, text=True, timeout=30))
                       == {"gw-a", "gw-c"}, 10, "cam-a on gw-a and gw-c")
    check("cam-a's connection to the dead replica moved on to the third "
          "address", moved)

    # --- a revocation on one replica holds on all ---
    token_c = cluster.creds["cam-c"][0]
    subprocess.run([cluster.ctl, "token", "revoke", token_c, "--credentials",
                    "creds.txtpb"], check=True, capture_output=True)
    # Only gw-a reads the file again; cam-c's agent is on gw-c.
    r = subprocess.run([cluster.ctl, "reload", "--admin",
                        cluster.gw["a"]["admin"], "--admin-token-file",
                        "admin.token"], capture_output=True, text=True,
                       timeout=30)
    check("tunnelctl reload on gw-a", r.returncode == 0, r.stderr)
    agent_c = cluster.procs["agent-cam-c"]
    try:
        agent_c.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    err = open("agent-cam-c.err").read()
    check("cam-c's session on gw-c is closed for the token gw-a revoked, and "
          "the agent stops", agent_c.returncode not in (None, 0) and
          "revoked" in err, f"exit {agent_c.returncode}: {err[-600:]}")
    gone = eventually(lambda: get(cluster.gw["a"]["http"], "/t/cam-c/who")[0] ==
                      502, 5, "cam-c offline on gw-a")
    check("cam-c is offline (502) everywhere after the revocation", gone)
    out = subprocess.run(
        [os.path.join(BUILD, "agent", "agent-tunnel"), "connect", "--gateway",
         cluster.gw["c"]["grpc"], "--id", "cam-c", "--token", token_c,
         "--insecure", "--to", "http://127.0.0.1:9", "--inspect", "",
         "--state-file", "state-again.json"],
        env=dict(os.environ, TUNNEL_SECRET=cluster.creds["cam-c"][1]),
        capture_output=True, text=True, timeout=30)
    check("the revoked token is refused by gw-c too (whose file was not "
          "reloaded)", out.returncode != 0 and "revoked" in out.stderr,
          out.stderr[-500:])

    # --- two addresses of one gateway: the agent keeps one connection ---
    # (The same address twice: what two names of one gateway come to, without
    # needing a resolver that knows "localhost".)
    addr_a = cluster.gw["a"]["grpc"]
    twice = cluster.start_agent(
        "cam-r", f"http://127.0.0.1:{services['cam-a'].server_address[1]}",
        ["a"], ["--gateway", f"{addr_a},{addr_a}"])
    try:
        read_line("agent-cam-r.err", r"keeping one", 20)
        kept = True
    except TimeoutError:
        kept = False
    r = subprocess.run([cluster.ctl, "list", "--json", "--admin",
                        cluster.gw["a"]["admin"], "--admin-token-file",
                        "admin.token"], capture_output=True, text=True,
                       timeout=30)
    sessions = [a for a in json.loads(r.stdout or "{}").get("agents", [])
                if a["agent_id"] == "cam-r"]
    check("an agent whose two --gateway addresses reach one gateway keeps "
          "one connection and stays up", kept and twice.poll() is None and
          len(sessions) == 1 and reaches(cluster, "a", "cam-r", "cam-a"),
          f"{sessions} {open('agent-cam-r.err').read()[-800:]}")

    # --- TLS between replicas ---
    make_certs()
    tls = ("--tls-cert", "gateway.crt", "--tls-key", "gateway.key")
    cluster.start_gateway("t1", ["--cluster-ca", "ca.crt"], tls=tls)
    cluster.start_gateway("t2", ["--cluster-ca", "ca.crt"], tls=tls)
    # t3 checks the others against a CA that signed none of them.
    cluster.start_gateway("t3", ["--cluster-ca", "other-ca.crt"], tls=tls)
    cluster.start_agent(
        "cam-t", f"http://127.0.0.1:{services['cam-a'].server_address[1]}",
        ["t1"], tls=("--ca", "ca.crt"))
    read_line("agent-cam-t.out", r"/t/cam-t/$", 20)
    tls_ok = eventually(lambda: get_tls(cluster.gw["t2"]["http"], "/t/cam-t/who",
                                        "ca.crt") == (200, b"cam-a"), 10,
                        "cam-t through gw-t2 over TLS")
    check("TLS replicas: a visitor at gw-t2 reaches cam-t on gw-t1 (the "
          "forward over TLS, the certificate checked against --cluster-ca)",
          tls_ok)
    untrusted = eventually(lambda: get_tls(cluster.gw["t3"]["http"], "/t/cam-t/who",
                                           "ca.crt")[0] == 502 and
                           "cannot be reached" in open("gw-t3.err").read(), 10,
                           "gw-t3 to fail the forward")
    check("a replica that does not trust the others' certificate: 502, and "
          "it says it cannot reach the owner", untrusted,
          open("gw-t3.err").read()[-600:])


if __name__ == "__main__":
    if not os.path.exists(REDIS):
        if os.environ.get("TUNNEL_REQUIRE_REDIS") == "1":
            print("FAIL: redis-server not installed", file=sys.stderr)
            sys.exit(1)
        print("SKIP: redis-server not installed")
        sys.exit(77)
    work = tempfile.mkdtemp(prefix="cluster_e2e.")
    os.chdir(work)
    cluster = Cluster()
    try:
        main(cluster)
    except Exception as e:  # a timeout or a crash is a failure with logs
        check("no unexpected error", False, repr(e))
    finally:
        cluster.stop()
    if failures:
        print(f"logs and outputs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cluster_e2e: {len(failures)} failed")
    sys.exit(1 if failures else 0)
