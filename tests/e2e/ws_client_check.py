"""Drives real WebSocket traffic through the tunnel and checks what comes back.
Usage: ws_client_check.py BASE [CA_FILE]   (e.g. ws://127.0.0.1:8082/t/cam-01,
or wss://localhost:8443/t/cam-01 with the CA that signed the gateway's
certificate)
With AGENT_PID set, also checks that the agent's thread count does not grow
with the upgraded connections it holds open.
Prints ok:/FAIL: lines and "websocket: N passed, M failed"; exit 1 on failure.
"""
import asyncio
import functools
import os
import ssl
import sys
import urllib.request

import websockets

BASE = sys.argv[1]
TLS = BASE.startswith("wss://")
HTTP_BASE = BASE.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
SSL_CONTEXT = None
if TLS:
    SSL_CONTEXT = ssl.create_default_context(
        cafile=sys.argv[2] if len(sys.argv) > 2 else None)
    # Every connection below verifies the gateway's certificate.
    websockets.connect = functools.partial(websockets.connect, ssl=SSL_CONTEXT)
results = []


def check(what, cond):
    results.append(bool(cond))
    print(("ok: " if cond else "FAIL: ") + what, flush=True)


async def main():
    async with websockets.connect(BASE + "/echo", max_size=None) as ws:
        await ws.send("hello through the tunnel")
        check("text message echoed", await ws.recv() == "hello through the tunnel")
        blob = os.urandom(4096)
        await ws.send(blob)
        check("binary message echoed", await ws.recv() == blob)
        big = os.urandom(10 * 1024 * 1024)
        await ws.send(big)
        check("10 MiB message echoed intact", await ws.recv() == big)
        for i in range(1000):
            await ws.send(f"m{i}")
        got = [await ws.recv() for _ in range(1000)]
        check("1000 messages round-trip in order",
              got == [f"m{i}" for i in range(1000)])
        pong = await ws.ping(b"are-you-there")
        await asyncio.wait_for(pong, 5)
        check("ping answered with pong", True)
        await ws.close(code=4001, reason="client-bye")
        # The service echoes the close frame: it got our code.
        check("client close code reaches the service", ws.close_code == 4001)

    # A long idle period (here 3 s, with the gateway's heartbeat timeout at
    # 1 s and WebSocket pings off): heartbeats keep the agent session up
    # and the upgraded connection survives.
    async with websockets.connect(BASE + "/echo", ping_interval=None) as ws:
        await asyncio.sleep(3)
        await ws.send("after idle")
        check("upgraded connection survives an idle period",
              await asyncio.wait_for(ws.recv(), 5) == "after idle")

    async with websockets.connect(BASE + "/close-me") as ws:
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed:
            pass
        check("server close code reaches the visitor",
              ws.close_code == 4002 and ws.close_reason == "server-bye")

    try:
        async with websockets.connect(BASE + "/refuse"):
            check("refused upgrade is refused", False)
    except websockets.InvalidStatusCode as e:
        check("refused upgrade reaches the visitor as 400", e.status_code == 400)

    async def one_socket(i):
        async with websockets.connect(BASE + "/echo") as ws:
            for j in range(20):
                msg = f"s{i}-{j}"
                await ws.send(msg)
                if await ws.recv() != msg:
                    return False
        return True

    def http_get():
        with urllib.request.urlopen(HTTP_BASE + "/http", timeout=10,
                                    context=SSL_CONTEXT) as r:
            return r.status == 200 and r.read() == b"plain http\n"

    loop = asyncio.get_running_loop()
    sockets = [one_socket(i) for i in range(50)]
    plain = [loop.run_in_executor(None, http_get) for _ in range(50)]
    outcomes = await asyncio.wait_for(asyncio.gather(*sockets, *plain), 60)
    check("50 concurrent websockets echo correctly",
          all(outcomes[:50]))
    check("50 plain HTTP requests beside them succeed", all(outcomes[50:]))

    agent_pid = os.environ.get("AGENT_PID")
    if agent_pid:
        def threads():
            return len(os.listdir(f"/proc/{agent_pid}/task"))
        before = threads()
        held = []
        for i in range(100):  # one after another: one handshake at a time
            held.append(await websockets.connect(BASE + "/echo"))
        for i, ws in enumerate(held):
            await ws.send(f"held-{i}")
        echoed = [await asyncio.wait_for(ws.recv(), 10) for ws in held]
        during = threads()
        for ws in held:
            await ws.close()
        print(f"agent threads: {before} before, {during} with 100 open "
              "websockets", flush=True)
        check("100 open websockets all echo",
              echoed == [f"held-{i}" for i in range(100)])
        check("the agent holds no thread per open websocket",
              during - before < 20)


asyncio.run(main())
passed = sum(results)
failed = len(results) - passed
print(f"websocket: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
