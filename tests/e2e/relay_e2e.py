#!/usr/bin/env python3
"""Encrypted shares end to end without a browser: the real gateway, real
`agent-tunnel share` processes and a real local service, with the browser's
role played by relay_client.py (a third implementation of docs/RELAY.md).

Checks: the share prints a link and a code; a wrong code is refused with
the attempts left, the right one pairs; pages, a 20 MiB download and an
8 MiB upload by SHA-256; the gateway's refusals, each with its ERROR and
close code and counted in /metrics (unknown session 4404, a frame over
--relay-max-frame-bytes 1009, browsers per share 4429, connections per IP
4429, new connections per IP and minute 4429) and the per-connection frame
rate throttling (counted, nothing lost); /healthz counts shares and
browsers; the agent gone: HOST_DISCONNECTED and 4404; a gateway restart:
the share comes back with the same link and code, and the browser pairs
again; the share's flag errors and a gateway without a relay. A tap on the
agent's gRPC link (a byte-recording proxy) and the gateway's debug logs
never hold the service's marker, the key or the code.

Usage: relay_e2e.py BUILD_DIR
"""
import asyncio
import hashlib
import http.server
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from e2e_util import check, failures, read_line, stop, wait_until
from relay_client import Closed, RelayClient, parse_link
from relay_setup import (Gateway, Tap, free_port, healthz, issue, metric,
                         share, share_link)

BUILD = os.path.abspath(sys.argv[1])
MARKER = "MARKER-" + "".join(random.choice("QXZJKV") for _ in range(24))
BLOCK = random.Random(16).randbytes(1 << 20)
MIB = 1 << 20


class Service(http.server.BaseHTTPRequestHandler):
    """GET /page: HTML with the marker; GET /blob/N: N MiB; POST /sha: the
    body's SHA-256."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/blob/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n * MIB))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(BLOCK)
            return
        body = f"<html><body>{MARKER} {self.path}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("X-Marker", MARKER)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                h.update(self.rfile.read(size))
                self.rfile.readline()
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            h.update(chunk)
            left -= len(chunk)
        body = h.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def refused(ws_url, session, key, headers=None):
    """Connects and waits for the gateway to close: (code, error code)."""
    c = RelayClient(ws_url, session, key)
    try:
        await c.connect(headers)
        await c.wait_status("never", timeout=20)
    except Closed as e:
        return e.code, (e.error or {}).get("code")
    return None, None


async def paired_client(ws_url, session, key, code):
    c = await RelayClient(ws_url, session, key).connect()
    await c.wait_status("HOST_CONNECTED")
    await c.hello()
    ok, _ = await c.pair(code)
    assert ok, "pairing failed"
    return c


async def scenario(gw, svc_port, agent_tap):
    ws_url = f"ws://127.0.0.1:{gw.http}/relay/ws"
    ops = f"127.0.0.1:{gw.ops}"
    link, code = share_link("cam")
    page, session, key, gw_param = parse_link(link)
    check("the link points at the gateway's page, secrets in the fragment",
          page == f"http://127.0.0.1:{gw.http}/relay/" and gw_param is None and
          len(session) == 22 and len(key) == 32, link)
    check("the code has six digits", re.fullmatch(r"\d{6}", code), code)
    integrity = read_line("cam.out", r"^Client script:", 5).split()[-1]
    with urllib.request.urlopen(page, timeout=10) as r:
        html = r.read().decode()
        csp = r.headers.get("Content-Security-Policy", "")
    check("the page's script carries the integrity the agent printed",
          f'integrity="{integrity}"' in html, integrity)
    check("the page is served with a strict CSP",
          "default-src 'none'" in csp and "script-src 'self'" in csp, csp)

    # Unknown share.
    other = "A" * 22
    closed, err = await refused(ws_url, other, key)
    check("an unknown session is refused (4404, unknown_session)",
          closed == 4404 and err == "unknown_session", (closed, err))

    c = await RelayClient(ws_url, session, key).connect()
    await c.wait_status("HOST_CONNECTED")
    check("the gateway says the host is connected", True)
    ack = await c.hello()
    check("HELLO_ACK: not paired, five attempts",
          ack["paired"] is False and ack["attemptsLeft"] == 5, ack)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    ok, err = await c.pair(wrong)
    check("a wrong code is refused with the attempts left",
          not ok and err.get("code") == "bad_code" and err.get("attemptsLeft") == 4,
          err)
    ok, err = await c.pair(code)
    check("the right code pairs", ok, err)
    status, headers, body = await c.fetch("GET", "/page?x=1")
    check("a page through the encrypted channel",
          status == 200 and MARKER.encode() in body and
          headers.get("x-marker") == MARKER, (status, body[:80]))
    t0 = time.monotonic()
    status, _, digest = await c.fetch("GET", "/blob/20", sink="sha")
    secs = time.monotonic() - t0
    want = hashlib.sha256(BLOCK * 20).hexdigest()
    check(f"a 20 MiB download by SHA-256 ({20 / secs:.1f} MiB/s)",
          status == 200 and digest == want, digest)
    upload = random.Random(8).randbytes(8 * MIB)
    status, _, digest = await c.fetch(
        "POST", "/sha", body=upload,
        headers={"Content-Length": str(len(upload))})
    check("an 8 MiB upload by SHA-256",
          status == 200 and digest.decode() == hashlib.sha256(upload).hexdigest(),
          digest)

    h = healthz(ops)
    check("/healthz counts the two shares and the browser",
          h.get("relay") == {"sessions": 2, "clients": 1}, h)

    # A frame over --relay-max-frame-bytes (128 KiB here).
    big = await RelayClient(ws_url, session, key).connect()
    await big.wait_status("HOST_CONNECTED")
    await big.send_raw(os.urandom(200 << 10))
    try:
        await big.next_message(timeout=20)
        closed = None
    except Closed as e:
        closed = e.code
    check("a frame over the limit closes the connection (1009)",
          closed == 1009, closed)
    check("and is counted",
          metric(ops, "tunnel_relay_refusals_total",
                 '{reason="frame_too_big"}') == 1)

    # Throttling: 600 frames at 200 frames/s take about 2 s, none lost.
    before = metric(ops, "tunnel_relay_frames_total", '{direction="to_agent"}')
    t0 = time.monotonic()
    for _ in range(600):
        await c.send_raw(os.urandom(80))  # not authentic: the agent drops them
    # A request after them: answered once all 600 went through.
    status, _, _ = await c.fetch("GET", "/page")
    secs = time.monotonic() - t0
    after = metric(ops, "tunnel_relay_frames_total", '{direction="to_agent"}')
    check(f"over the frame rate, reading pauses ({secs:.1f}s for 600 frames "
          "at 200/s)", status == 200 and secs > 1.5, secs)
    check("no frame was lost", after - before >= 601, after - before)
    check("the throttling is counted",
          metric(ops, "tunnel_relay_throttled_total",
                 '{limit="conn_frames"}') > 0)

    # Browsers per share (2 here): c and c2 are in, a third is refused.
    c2 = await paired_client(ws_url, session, key, code)
    closed, err = await refused(ws_url, session, key)
    check("a third browser on the share is refused (4429)",
          closed == 4429 and err == "clients_per_session", (closed, err))
    # Connections per IP (4 here): a second share's two browsers fill it.
    link_b, code_b = share_link("cam-b")
    page_b, session_b, key_b, gw_b = parse_link(link_b)
    check("--relay-client-url: the link points at that page and names the "
          "gateway's WebSocket",
          page_b == "https://pages.example/relay/" and
          gw_b == f"ws://127.0.0.1:{gw.http}/relay/ws", link_b)
    b1 = await paired_client(ws_url, session_b, key_b, code_b)
    b2 = await paired_client(ws_url, session_b, key_b, code_b)
    closed, err = await refused(ws_url, session_b, key_b)
    check("a fifth connection from one IP is refused (4429)",
          closed == 4429 and err == "ip_connections", (closed, err))
    # Through the trusted proxy (127.0.0.1 here), the address it names is
    # the one that counts: another visitor gets past the per-IP limit (to
    # be told the session is unknown: it names none that exists).
    closed, err = await refused(ws_url, "B" * 22, key,
                                {"X-Forwarded-For": "198.51.100.7"})
    check("behind a trusted proxy, the address it names is counted",
          closed == 4404 and err == "unknown_session", (closed, err))
    for x in (b1, b2):
        await x.close()
    await c2.close()
    wait_until(lambda: healthz(ops)["relay"]["clients"] == 1, 10,
               "the browsers to be gone")

    # New connections per IP and minute (40 here): refused once the minute's
    # count is reached (a new minute may start meanwhile: then later).
    seen = None
    for _ in range(100):
        closed, err = await refused(ws_url, other, key)
        if closed == 4429:
            seen = err
            break
    check("too many new connections in a minute are refused (4429)",
          seen == "ip_rate", seen)
    for reason in ("unknown_session", "clients_per_session", "ip_connections",
                   "ip_rate"):
        check(f"refusal {reason} counted",
              metric(ops, "tunnel_relay_refusals_total",
                     f'{{reason="{reason}"}}') >= 1)
    return c, link, code, session, key


async def after_restart(gw, link, code, session, key, old):
    """The gateway restarted: the old connection ended; the share is back
    with the same link and code; a new connection pairs again."""
    ws_url = f"ws://127.0.0.1:{gw.http}/relay/ws"
    try:
        await old.next_message(timeout=20)
        ended = False
    except Closed:
        ended = True
    check("the browser's connection ended with the gateway", ended)

    async def connect_when_back():
        while True:
            c = RelayClient(ws_url, session, key)
            try:
                await c.connect()
                await c.wait_status("HOST_CONNECTED", timeout=5)
                return c
            except (Closed, OSError, TimeoutError):
                await asyncio.sleep(0.2)
    c = await asyncio.wait_for(connect_when_back(), 60)
    await c.hello()
    ok, _ = await c.pair(code)
    check("after a gateway restart the same link and code pair again", ok)
    status, _, body = await c.fetch("GET", "/page")
    check("and the service answers", status == 200 and MARKER.encode() in body)
    check("the agent printed its link once",
          open("cam.out").read().count("Open on your phone") == 1)
    return c


async def host_gone(c, agent):
    agent.terminate()
    agent.wait(timeout=30)
    try:
        while True:
            await c.next_message(timeout=20)
    except Closed as e:
        closed, err = e.code, (e.error or {}).get("code")
    check("the agent gone: HOST_DISCONNECTED, then closed (4404)",
          "HOST_DISCONNECTED" in c.statuses and closed in (4404, 1006) and
          err == "host_disconnected", (c.statuses, closed, err))


def flag_errors(creds):
    token, secret = creds
    agent = os.path.join(BUILD, "agent", "agent-tunnel")
    base = [agent, "share", "--gateway", "127.0.0.1:1", "--id", "cam",
            "--token", token, "--insecure", "--to", "http://127.0.0.1:1"]
    for what, extra, words in [
            ("share --slug is refused (exit 2)", ["--slug", "x"],
             "--slug does not apply to a share"),
            ("share with two --to is refused (exit 2)",
             ["--to", "http://127.0.0.1:2"], "exactly one --to")]:
        r = subprocess.run(base + extra,
                           env=dict(os.environ, TUNNEL_SECRET=secret),
                           capture_output=True, text=True, timeout=30)
        check(what, r.returncode == 2 and words in r.stderr, r.stderr)


def main():
    work = tempfile.mkdtemp(prefix="relay_e2e.")
    os.chdir(work)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Service)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    svc_port = server.server_address[1]
    creds = issue(BUILD, "cam")
    creds_b = issue(BUILD, "cam-b")
    flag_errors(creds)
    gw = Gateway(BUILD, free_port(), free_port(), free_port(), [
        "--relay-max-frame-bytes", str(128 << 10),
        "--relay-max-clients-per-session", "2",
        "--relay-max-connections-per-ip", "4",
        "--relay-connections-per-ip-per-minute", "40",
        "--relay-frames-per-second", "200",
        "--trusted-proxy", "127.0.0.1/32"])
    gw.start("gw")
    tap = Tap(gw.grpc)
    procs = [share(BUILD, "cam", tap.port, svc_port, creds),
             share(BUILD, "cam-b", gw.grpc, svc_port, creds_b,
                   ["--relay-client-url", "https://pages.example/relay/"])]
    try:
        async def everything():
            c, link, code, session, key = await scenario(gw, svc_port, tap)
            # Restart the gateway on the same ports: the agents reconnect.
            gw.stop()
            gw.start("gw")
            c2 = await after_restart(gw, link, code, session, key, c)
            await host_gone(c2, procs[0])
            return link, code, key
        link, code, key = asyncio.run(asyncio.wait_for(everything(), 300))
        secrets = [MARKER.encode(), key, code.encode(),
                   key.hex().encode(), link.split("key=")[1].encode()]
        logs = b"".join(open(f, "rb").read() for f in
                        ("gw.out", "gw.err"))
        check("the gateway's debug logs hold no marker, key or code",
              not any(s in logs for s in secrets))
        with tap.lock:
            captured = bytes(tap.data)
        check("the agent's gRPC link was tapped", len(captured) > 28 * MIB,
              len(captured))
        check("the tap of the agent's gRPC link holds no marker, key or code",
              not any(s in captured for s in secrets))
    finally:
        stop(procs)
        if gw.proc.poll() is None:
            gw.stop()
        server.shutdown()

    # A gateway without a relay refuses a share plainly.
    gw0 = Gateway(BUILD, free_port(), free_port(), free_port(),
                  ["--relay-max-sessions", "0"])
    gw0.start("gw0")
    try:
        p = share(BUILD, "cam", gw0.grpc, svc_port, creds)
        p.wait(timeout=30)
        err = open("cam.err").read()
        check("a gateway without a relay: the share exits 1 saying why",
              p.returncode == 1 and "does not relay encrypted shares" in err,
              err[-300:])
    finally:
        gw0.stop()
    if failures:
        print(f"{len(failures)} check(s) failed; files kept in {work}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
