"""/metrics, /healthz and the logs of the real gateway binary; /metrics is
parsed with a real Prometheus parser (Debian's python3-prometheus-client).

Starts a local HTTP service (in this process), gateway-tunnel with port 0 for
every listener, and agent-tunnel; scrapes; sends requests through the tunnel
(200s, an upload, the service's own 404, a 404 for an unknown tunnel) and an
agent with a wrong secret; scrapes again and checks that each series moved by
exactly the expected amount. Checks /healthz, including while a request
holds a drain open, and the --log-format json log: every line one JSON
object, one access event per visitor request, connect and auth events, no
secret and no query string. Run with /usr/bin/python3 (Debian's packages
import only there).

Usage: ops_e2e.py BUILD_DIR
"""
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import check, failures, read_line, wait_until  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
GATEWAY = os.path.join(BUILD, "server", "gateway-tunnel")
AGENT = os.path.join(BUILD, "agent", "agent-tunnel")
TUNNELCTL = os.path.join(BUILD, "tools", "tunnelctl")


# --- the local service behind the agent ---
release = threading.Event()


class Service(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/hello":
            self._answer(200, b"hello\n")
        elif self.path == "/hold":
            release.wait(30)
            self._answer(200, b"released\n")
        else:
            self._answer(404, b"no such page\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(200, body)


def fetch(url, data=None, method=None):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def scrape(ops):
    status, headers, body = fetch(f"http://{ops}/metrics")
    assert status == 200, status
    assert "version=0.0.4" in headers["Content-Type"], headers["Content-Type"]
    families = {f.name: f for f in
                text_string_to_metric_families(body.decode("utf-8"))}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def check_agent_log():
    with open("agent.err") as f:
        lines = f.read().splitlines()
    try:
        parsed = [json.loads(l) for l in lines]
    except ValueError as e:
        parsed = None
        check("every agent log line is JSON", False, repr(e))
    if parsed is not None:
        check("every agent log line is JSON with a message",
              len(parsed) > 0 and all("msg" in p for p in parsed),
              repr(lines[:2]))


not_found_id = None


def check_logs(secret):
    with open("gw.err") as f:
        text = f.read()
    check("the gateway never logs the secret", secret not in text)
    check("nor a query string", "query-secret-1" not in text)
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            check("every log line is JSON", False, repr(line))
    check("every line has time and level",
          all("time" in e and "level" in e for e in events))
    access = [e for e in events if e.get("event") == "access"]
    check("one access line per visitor request (7)", len(access) == 7,
          repr(access))
    fields = {"request_id", "remote", "tunnel", "method", "path", "status",
              "bytes_in", "bytes_out", "duration_ms", "error"}
    check("access lines carry every field",
          all(fields <= set(e) for e in access), repr(access[:1]))
    post = [e for e in access if e["method"] == "POST"]
    check("the upload's access line", len(post) == 1 and
          post[0]["path"] == "/t/cam-01/echo" and post[0]["status"] == 200 and
          post[0]["bytes_in"] == 5000 and post[0]["bytes_out"] == 5000 and
          post[0]["tunnel"] == "cam-01" and len(post[0]["request_id"]) == 36,
          repr(post))
    unknown = [e for e in access if e["tunnel"] == "nobody"]
    check("the unknown tunnel's access line names the error",
          len(unknown) == 1 and unknown[0]["status"] == 404 and
          unknown[0]["error"] == "tunnel_not_found" and
          unknown[0]["path"] == "/t/nobody/", repr(unknown))
    check("the gateway's own 404 carries the access line's request id",
          not_found_id is not None and len(unknown) == 1 and
          unknown[0]["request_id"] == not_found_id,
          f"{not_found_id} {unknown!r}")
    connected = [e for e in events if e.get("event") == "agent_connected"]
    check("a connect event with the agent and its tunnels",
          len(connected) == 1 and connected[0]["agent_id"] == "cam-01" and
          connected[0]["tunnels"] == "cam-01", repr(connected))
    failed = [e for e in events if e.get("event") == "agent_auth_failed"]
    check("an auth-failure event with its reason",
          len(failed) == 1 and failed[0]["reason"] == "bad_signature",
          repr(failed))
    gone = [e for e in events if e.get("event") == "agent_disconnected"]
    check("a disconnect event with a reason on shutdown",
          len(gone) == 1 and gone[0]["agent_id"] == "cam-01" and
          gone[0]["reason"], repr(gone))


def main():
    work = tempfile.mkdtemp(prefix="ops_e2e.")
    os.chdir(work)
    procs = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    svc_port = server.server_address[1]
    try:
        issued = subprocess.run(
            [TUNNELCTL, "token", "issue", "--id", "cam-01", "--credentials",
             "creds.txtpb"], capture_output=True, text=True, timeout=30,
            check=True).stdout
        token = re.search(r"^token: (\S+)", issued, re.M).group(1)
        secret = re.search(r"^secret: (\S+)", issued, re.M).group(1)

        gw = subprocess.Popen(
            [GATEWAY, "--insecure", "--admin-addr", "", "--grpc-addr", "127.0.0.1:0", "--http-addr",
             "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--credentials",
             "creds.txtpb", "--drain-timeout", "20s", "--log-format", "json"],
            stdout=open("gw.out", "w"), stderr=open("gw.err", "w"))
        procs.append(gw)
        read_line("gw.out", r"^ops ", 10)
        with open("gw.out") as f:
            lines = f.read().split("\n")
        check("gateway prints grpc, http, ops lines in that order",
              [l.split(" ")[0] for l in lines[:3]] == ["grpc", "http", "ops"],
              repr(lines))
        grpc = lines[0].split(" ")[1]
        http_addr = lines[1].split(" ")[1]
        ops = lines[2].split(" ")[1]
        check("ops listener is on its own port",
              ops.rsplit(":", 1)[1] not in (http_addr.rsplit(":", 1)[1],
                                           grpc.rsplit(":", 1)[1]))

        env = dict(os.environ, TUNNEL_SECRET=secret)
        agent = subprocess.Popen(
            [AGENT, "connect", "--gateway", grpc, "--id", "cam-01", "--token",
             token, "--insecure", "--to", f"http://127.0.0.1:{svc_port}",
             "--log-format", "json"],
            env=env, stdout=open("agent.out", "w"),
            stderr=open("agent.err", "w"))
        procs.append(agent)
        read_line("agent.out", r"/t/cam-01/$", 20)

        families, before = scrape(ops)
        for name, kind in [
                ("tunnel_http_requests", "counter"),
                ("tunnel_body_bytes", "counter"),
                ("tunnel_http_request_duration_seconds", "histogram"),
                ("tunnel_agent_auth_failures", "counter"),
                ("tunnel_agent_connect_refusals", "counter"),
                ("tunnel_capacity_rejections", "counter"),
                ("tunnel_stream_closes", "counter"),
                ("tunnel_sessions", "gauge"),
                ("tunnel_streams_in_flight", "gauge"),
                ("tunnel_send_queue_bytes", "gauge"),
                ("tunnel_send_queue_messages", "gauge"),
                ("tunnel_streams_stalled", "gauge"),
                ("tunnel_build_info", "gauge")]:
            f = families.get(name)
            check(f"{name} is a {kind} with help",
                  f is not None and f.type == kind and f.documentation, name)
        check("one session before",
              value(before, "tunnel_sessions") == 1)
        check("auth failure reasons start at 0",
              value(before, "tunnel_agent_auth_failures_total",
                    reason="bad_signature") == 0)

        # --- traffic through the tunnel ---
        base = f"http://{http_addr}/t/cam-01"
        out_bytes = 0
        for _ in range(3):
            status, _, body = fetch(f"{base}/hello")
            check("GET /hello is 200", status == 200 and body == b"hello\n")
            out_bytes += len(body)
        upload = os.urandom(5000)
        status, _, body = fetch(f"{base}/echo", data=upload, method="POST")
        check("POST /echo echoes 5000 bytes", status == 200 and body == upload)
        out_bytes += len(body)
        status, headers, body = fetch(f"{base}/missing")
        check("the service's own 404 passes through",
              status == 404 and headers["X-Tunnel-Error"] is None)
        out_bytes += len(body)
        status, headers, _ = fetch(
            f"http://{http_addr}/t/nobody/?token=query-secret-1")
        check("unknown tunnel is the gateway's 404",
              status == 404 and headers["X-Tunnel-Error"] == "tunnel_not_found")
        global not_found_id
        not_found_id = headers["X-Request-Id"]

        # --- an agent with a wrong secret ---
        bad = subprocess.run(
            [AGENT, "connect", "--gateway", grpc, "--id", "cam-01", "--token",
             token, "--secret", "A" * 43, "--insecure", "--to",
             f"http://127.0.0.1:{svc_port}"],
            capture_output=True, text=True, timeout=30)
        check("agent with a wrong secret exits 1", bad.returncode == 1,
              bad.stderr)

        # The counters move after the response is written; poll until the
        # last request is counted, then compare exactly.
        requests = 6
        count0 = value(before, "tunnel_http_request_duration_seconds_count")
        after = wait_until(
            lambda: (lambda s: s if value(
                s, "tunnel_http_request_duration_seconds_count") >=
                count0 + requests else None)(scrape(ops)[1]),
            10, "the requests to be counted")

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        expected = {
            ("tunnel_http_requests_total",
             (("code", "2xx"), ("error", ""), ("tunnel", "cam-01"))): 4,
            ("tunnel_http_requests_total",
             (("code", "4xx"), ("error", ""), ("tunnel", "cam-01"))): 1,
            ("tunnel_http_requests_total",
             (("code", "4xx"), ("error", "tunnel_not_found"),
              ("tunnel", ""))): 1,
            ("tunnel_body_bytes_total",
             (("direction", "visitor_to_agent"), ("tunnel", "cam-01"))): 5000,
            ("tunnel_body_bytes_total",
             (("direction", "agent_to_visitor"), ("tunnel", "cam-01"))):
                out_bytes,
            ("tunnel_agent_auth_failures_total",
             (("reason", "bad_signature"),)): 1,
            ("tunnel_http_request_duration_seconds_count", ()): requests,
            ("tunnel_http_request_duration_seconds_bucket",
             (("le", "+Inf"),)): requests,
        }
        for key, want in expected.items():
            got = after.get(key, 0) - before.get(key, 0)
            check(f"{key[0]}{dict(key[1])} moved by {want}", got == want,
                  f"(moved by {got})")
        # Fibers woken by the agents' thread, delivered with at most one
        # eventfd write each (a request whose answer came before it waited
        # needs no wake-up, so the count itself depends on timing).
        woken = (after.get(("tunnel_http_loop_wakeups_total",
                            (("kind", "fiber"),)), 0) -
                 before.get(("tunnel_http_loop_wakeups_total",
                             (("kind", "fiber"),)), 0))
        writes = (after.get(("tunnel_http_loop_wakeups_total",
                             (("kind", "eventfd_write"),)), 0) -
                  before.get(("tunnel_http_loop_wakeups_total",
                              (("kind", "eventfd_write"),)), 0))
        check("loop wake-ups are counted, one eventfd write at most each",
              ("tunnel_http_loop_wakeups_total", (("kind", "fiber"),))
              in after and 0 <= writes <= woken, f"{woken} {writes}")
        # The agent stream's traffic, both ways: envelopes, in gRPC messages
        # that may carry several (batches), so how many depends on timing.
        for direction in ("to_agent", "from_agent"):
            label = (("direction", direction),)
            msgs = (after.get(("tunnel_agent_messages_total", label), 0) -
                    before.get(("tunnel_agent_messages_total", label), 0))
            envs = (after.get(("tunnel_agent_envelopes_total", label), 0) -
                    before.get(("tunnel_agent_envelopes_total", label), 0))
            check(f"agent stream traffic {direction} is counted",
                  0 < msgs <= envs, f"{msgs} messages, {envs} envelopes")
        # Nothing else among the counters moved.
        for key in set(before) | set(after):
            name = key[0]
            if key in expected or name.startswith(
                    "tunnel_http_request_duration_seconds") or \
                    name in ("tunnel_http_loop_wakeups_total",
                             "tunnel_agent_messages_total",
                             "tunnel_agent_envelopes_total"):
                continue
            if not (name.endswith("_total")):
                continue
            got = after.get(key, 0) - before.get(key, 0)
            check(f"{name}{dict(key[1])} did not move", got == 0,
                  f"(moved by {got})")
        check("the duration sum grew",
              delta("tunnel_http_request_duration_seconds_sum") > 0)
        buckets = sorted(
            (float(dict(k[1])["le"]), v) for k, v in after.items()
            if k[0] == "tunnel_http_request_duration_seconds_bucket")
        check("histogram buckets are cumulative",
              all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])) and
              buckets[-1][0] == float("inf"))
        check("one session, no stream in flight after",
              value(after, "tunnel_sessions") == 1 and
              value(after, "tunnel_streams_in_flight") == 0)
        check("send queues empty after",
              value(after, "tunnel_send_queue_bytes") == 0)

        # --- /healthz ---
        status, headers, body = fetch(f"http://{ops}/healthz")
        health = json.loads(body)
        check("/healthz is 200 JSON", status == 200 and
              headers["Content-Type"].startswith("application/json"))
        check("/healthz shows the session",
              health["status"] == "ok" and health["sessions"] == 1 and
              health["streams"] == 0, repr(health))
        check("/healthz has version and uptime",
              isinstance(health["version"], str) and health["version"] and
              isinstance(health["uptime_seconds"], int) and
              health["uptime_seconds"] >= 0, repr(health))

        # --- draining: a held request keeps the drain open ---
        held = {}

        def hold():
            held["answer"] = fetch(f"{base}/hold")

        client = threading.Thread(target=hold)
        client.start()
        wait_until(lambda: value(scrape(ops)[1],
                                 "tunnel_streams_in_flight") == 1,
                   10, "the held request to be in flight")
        gw.send_signal(signal.SIGTERM)

        def draining():
            status, _, body = fetch(f"http://{ops}/healthz")
            return (status, json.loads(body)) if status == 503 else None

        status, health = wait_until(draining, 10, "/healthz to say draining")
        check("/healthz is 503 draining with the stream in flight",
              health["status"] == "draining" and health["streams"] == 1,
              repr(health))
        release.set()
        client.join(30)
        check("the held request completed",
              held.get("answer", (0,))[0] == 200)
        gw.wait(20)
        check("the gateway exits 0 after the drain", gw.returncode == 0)
        check_logs(secret)
        check_agent_log()
    finally:
        release.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        server.shutdown()
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs and outputs kept in {work}", file=sys.stderr)
    print(f"ops_e2e: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
