"""WebSocket echo service for the upgrade tests (Debian's python3-websockets;
run it with /usr/bin/python3).

  /echo       echoes every message, text or binary
  /close-me   closes at once with code 4002 "server-bye"
  /refuse     refuses the upgrade with HTTP 400
  /http       a plain HTTP 200 (no upgrade), for traffic beside the sockets
Prints "port N" once listening.
"""
import asyncio
import http
import sys

import websockets


async def handler(ws, path):
    if path.startswith("/close-me"):
        await ws.close(code=4002, reason="server-bye")
        return
    async for message in ws:
        await ws.send(message)


async def process_request(path, headers):
    if path.startswith("/refuse"):
        return http.HTTPStatus.BAD_REQUEST, [("X-Refused", "yes")], b"no upgrade here\n"
    if path.startswith("/http"):
        return http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"plain http\n"
    return None


async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None,
                                process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        print("port", port, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
