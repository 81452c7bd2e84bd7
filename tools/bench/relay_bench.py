#!/usr/bin/env python3
"""The encrypted relay's costs (agent-tunnel share), against the plain
tunnel in the same run: all on 127.0.0.1, one gateway, one `share` agent
and one `connect` agent in front of the same local service, the browser's
role played by tests/e2e/relay_client.py (Python cryptography: the numbers
include its own cost, one core at most).

Measures: pairing (WebSocket open to PAIR_OK); 100-byte GETs one after
another (p50/p99); a 64 MiB download and a 32 MiB upload (MiB/s); the
gateway's and the agent's memory (RSS) and the agent's threads with N idle
paired browsers.

Usage: relay_bench.py BUILD_DIR OUT_DIR [--quick]
"""
import asyncio
import hashlib
import http.client
import http.server
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))
from relay_client import RelayClient, parse_link  # noqa: E402
from relay_setup import Gateway, free_port, issue, share, share_link  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
OUT = os.path.abspath(sys.argv[2])
QUICK = "--quick" in sys.argv
SMALL = 100 if QUICK else 500
BIG_MIB = 16 if QUICK else 64
IDLE = 100 if QUICK else 500
BLOCK = random.Random(1).randbytes(1 << 20)


class Service(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without this, Nagle and the
    # client's delayed ACK add 40 ms to every small answer.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/blob/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n << 20))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(BLOCK)
            return
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            left -= len(self.rfile.read(min(left, 1 << 16)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"Threads:\s+(\d+)", f.read()).group(1))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def tunnel_numbers(http_port, slug):
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
    lat = []
    for _ in range(SMALL):
        t0 = time.perf_counter()
        c.request("GET", f"/t/{slug}/small")
        c.getresponse().read()
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    c.request("GET", f"/t/{slug}/blob/{BIG_MIB}")
    r = c.getresponse()
    while r.read(1 << 20):
        pass
    down = BIG_MIB / (time.perf_counter() - t0)
    body = os.urandom(BIG_MIB // 2 << 20)
    t0 = time.perf_counter()
    c.request("POST", f"/t/{slug}/up", body=body)
    c.getresponse().read()
    up = (BIG_MIB // 2) / (time.perf_counter() - t0)
    return lat, down, up


async def relay_numbers(ws_url, session, key, code, agent_pid, gw_pid):
    t0 = time.perf_counter()
    c = await RelayClient(ws_url, session, key).connect()
    await c.wait_status("HOST_CONNECTED")
    await c.hello()
    ok, _ = await c.pair(code)
    pair_ms = (time.perf_counter() - t0) * 1000
    assert ok
    lat = []
    for _ in range(SMALL):
        t1 = time.perf_counter()
        status, _, _ = await c.fetch("GET", "/small")
        assert status == 200
        lat.append((time.perf_counter() - t1) * 1000)
    t1 = time.perf_counter()
    status, _, digest = await c.fetch("GET", f"/blob/{BIG_MIB}", sink="sha")
    down = BIG_MIB / (time.perf_counter() - t1)
    assert digest == hashlib.sha256(BLOCK * BIG_MIB).hexdigest()
    body = os.urandom(BIG_MIB // 2 << 20)
    t1 = time.perf_counter()
    status, _, _ = await c.fetch("POST", "/up", body=body,
                                 headers={"Content-Length": str(len(body))})
    up = (BIG_MIB // 2) / (time.perf_counter() - t1)
    before = (rss_kib(gw_pid), rss_kib(agent_pid), threads(agent_pid))
    idle = []
    for _ in range(IDLE):
        x = await RelayClient(ws_url, session, key).connect()
        await x.wait_status("HOST_CONNECTED")
        await x.hello()
        ok, _ = await x.pair(code)
        assert ok
        idle.append(x)
    after = (rss_kib(gw_pid), rss_kib(agent_pid), threads(agent_pid))
    for x in idle:
        await x.close()
    await c.close()
    return pair_ms, lat, down, up, before, after


def main():
    os.makedirs(OUT, exist_ok=True)
    os.chdir(OUT)
    svc = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Service)
    svc.daemon_threads = True
    threading.Thread(target=svc.serve_forever, daemon=True).start()
    port = svc.server_address[1]
    creds, creds_t = issue(BUILD, "bench-share"), issue(BUILD, "bench-tunnel")
    gw = Gateway(BUILD, free_port(), free_port(), free_port(), [
        "--log-level", "warning", "--relay-max-clients-per-session",
        str(IDLE + 1), "--relay-max-connections-per-ip", str(IDLE + 10),
        "--relay-connections-per-ip-per-minute", "0"])
    gw.start("gw")
    agent = share(BUILD, "bench-share", gw.grpc, port, creds)
    token, secret = creds_t
    tunnel = subprocess.Popen(
        [os.path.join(BUILD, "agent", "agent-tunnel"), "connect", "--gateway",
         f"127.0.0.1:{gw.grpc}", "--id", "bench-tunnel", "--token", token,
         "--insecure", "--to", f"http://127.0.0.1:{port}", "--state-file",
         "", "--inspect", ""], env=dict(os.environ, TUNNEL_SECRET=secret),
        stdout=open("tunnel.out", "w"), stderr=open("tunnel.err", "w"))
    try:
        link, code = share_link("bench-share")
        _, session, key, _ = parse_link(link)
        deadline = time.monotonic() + 20
        while "/t/bench-tunnel/" not in open("tunnel.out").read():
            if time.monotonic() > deadline:
                raise TimeoutError("the tunnel agent did not connect")
            time.sleep(0.05)
        t_lat, t_down, t_up = tunnel_numbers(gw.http, "bench-tunnel")
        pair_ms, r_lat, r_down, r_up, before, after = asyncio.run(
            relay_numbers(f"ws://127.0.0.1:{gw.http}/relay/ws", session, key,
                          code, agent.pid, gw.proc.pid))
    finally:
        for p in (agent, tunnel):
            p.terminate()
            p.wait(timeout=20)
        gw.stop()
        svc.shutdown()
    rows = [
        "| | tunnel (`connect`) | encrypted share (`share`) |",
        "|---|---|---|",
        f"| 100 B GET one after another, p50 / p99 ms ({SMALL}) | "
        f"{statistics.median(t_lat):.2f} / {pct(t_lat, 99):.2f} | "
        f"{statistics.median(r_lat):.2f} / {pct(r_lat, 99):.2f} |",
        f"| {BIG_MIB} MiB download, MiB/s | {t_down:.0f} | {r_down:.0f} |",
        f"| {BIG_MIB // 2} MiB upload, MiB/s | {t_up:.0f} | {r_up:.0f} |",
        f"| pairing (WebSocket open to PAIR_OK), ms | — | {pair_ms:.1f} |",
        f"| {IDLE} idle paired browsers: gateway RSS | — | "
        f"{before[0] / 1024:.1f} → {after[0] / 1024:.1f} MiB "
        f"({(after[0] - before[0]) / IDLE:.0f} KiB each) |",
        f"| the same: agent RSS, threads | — | {before[1] / 1024:.1f} → "
        f"{after[1] / 1024:.1f} MiB, {before[2]} → {after[2]} threads |",
    ]
    table = "\n".join(rows) + "\n"
    with open("results.md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
