"""The browser's role of the encrypted relay (docs/RELAY.md) in Python, for
the process-level tests: a third implementation beside relay.js and the
agent's C++ (with Debian's python3-cryptography and python3-websockets).

A RelayClient holds one WebSocket to the gateway: statuses and errors the
gateway sends in text, and the agent's sealed frames, opened and checked
(direction, connection nonce, sequence) exactly as the page does.
"""
import asyncio
import base64
import hashlib
import json
import os
import struct
import time

import websockets
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER = struct.Struct(">BBBBQQ16s")  # v, type, dir, 0, seq, ts, conn
HELLO, HELLO_ACK, PAIR, PAIR_OK, REQUEST, RESPONSE, DATA, CLOSE, ERROR, \
    WINDOW = range(1, 11)
C2H, H2C = 1, 2


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_link(link):
    """(page URL, session, key bytes, gw or None) from a share link."""
    page, fragment = link.split("#", 1)
    fields = dict(p.split("=", 1) for p in fragment.split("&"))
    return page, fields["session"], b64url_decode(fields["key"]), fields.get("gw")


def aad(session, direction):
    d = "c2h" if direction == C2H else "h2c"
    return f"tunnel-relay|v=1|session={session}|dir={d}".encode()


class Closed(Exception):
    """The gateway closed the WebSocket: .code, .reason, .error (its ERROR
    message, if it sent one first)."""

    def __init__(self, code, reason, error):
        super().__init__(f"closed {code} {reason} {error}")
        self.code, self.reason, self.error = code, reason, error


class RelayClient:
    def __init__(self, ws_url, session, key):
        self.url = f"{ws_url}?role=client&session={session}"
        self.session = session
        self.aead = AESGCM(key)
        self.ws = None
        self.statuses = []
        self.error = None
        self.window = 0
        self.max_chunk = 0

    async def connect(self, headers=None):
        self.ws = await websockets.connect(self.url, max_size=None,
                                           open_timeout=10,
                                           extra_headers=headers or {})
        return self

    async def close(self):
        if self.ws is not None:
            await self.ws.close()

    # --- sending ---
    def seal(self, mtype, payload, seq=None, conn=None, direction=C2H):
        if seq is None:
            seq, self.tx_seq = self.tx_seq, self.tx_seq + 1
        plain = HEADER.pack(1, mtype, direction, 0, seq, int(time.time() * 1000),
                            conn if conn is not None else self.conn) + payload
        iv = os.urandom(12)
        sealed = self.aead.encrypt(iv, plain, aad(self.session, direction))
        return iv + sealed[-16:] + sealed[:-16]

    async def send(self, mtype, payload=b"", **kw):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
        await self.ws.send(self.seal(mtype, payload, **kw))

    async def send_raw(self, data):
        await self.ws.send(data)

    # --- receiving ---
    async def next_message(self, timeout=20):
        """The next message from the agent (type, payload), after checking
        it; gateway statuses are collected on the way. Raises Closed."""
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), timeout)
            except websockets.ConnectionClosed as e:
                raise Closed(e.code, e.reason, self.error) from None
            if isinstance(raw, str):
                self._gateway_says(raw)
                continue
            iv, tag, ct = raw[:12], raw[12:28], raw[28:]
            plain = self.aead.decrypt(iv, ct + tag, aad(self.session, H2C))
            v, mtype, direction, _, seq, _, conn = HEADER.unpack_from(plain)
            assert v == 1 and direction == H2C, (v, direction)
            assert seq == self.rx_seq, f"seq {seq}, expected {self.rx_seq}"
            assert conn == self.rx_conn, "another connection's frame"
            self.rx_seq += 1
            return mtype, plain[HEADER.size:]

    async def expect(self, mtype, timeout=20):
        t, payload = await self.next_message(timeout)
        if t != mtype:
            raise AssertionError(f"expected type {mtype}, got {t}: {payload!r}")
        return payload

    async def wait_status(self, status, timeout=20):
        deadline = time.monotonic() + timeout
        while status not in self.statuses:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {status} (got {self.statuses})")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), left)
            except websockets.ConnectionClosed as e:
                raise Closed(e.code, e.reason, self.error) from None
            if isinstance(raw, str):
                self._gateway_says(raw)

    def _gateway_says(self, text):
        """A text message from the gateway: a status or an error."""
        msg = json.loads(text)
        if msg.get("type") == "STATUS":
            self.statuses.append(msg["status"])
        elif msg.get("type") == "ERROR":
            self.error = msg

    # --- the protocol ---
    async def hello(self):
        """HELLO → HELLO_ACK (returned, parsed)."""
        self.client_nonce = os.urandom(16)
        self.conn, self.tx_seq = self.client_nonce, 0
        self.rx_conn, self.rx_seq = self.client_nonce, 0
        await self.send(HELLO, {"client": "relay_client.py"})
        ack = json.loads(await self.expect(HELLO_ACK))
        host = b64url_decode(ack["host"])
        self.conn, self.rx_conn = host, host
        self.window, self.max_chunk = ack["window"], ack["maxChunk"]
        self.next_stream = 1
        return ack

    async def pair(self, code):
        """PAIR → (True, {}) or (False, the ERROR)."""
        await self.send(PAIR, {"code": code})
        t, payload = await self.next_message()
        return t == PAIR_OK, json.loads(payload)

    async def fetch(self, method, path, body=b"", headers=None, sink=None):
        """One request; returns (status, headers, body or its SHA-256 when
        `sink` == "sha"). Honours the credit both ways."""
        stream = self.next_stream
        self.next_stream += 1
        hdrs = [{"name": k, "value": v} for k, v in (headers or {}).items()]
        await self.send(REQUEST, {"stream": stream, "method": method,
                                  "path": path, "headers": hdrs,
                                  "end": not body})
        credit = self.window
        sent = 0
        head = None
        got = hashlib.sha256() if sink == "sha" else bytearray()
        unacked = 0
        done = False
        while not done:
            # Upload within the credit the agent gave.
            while sent < len(body) and credit > 0:
                n = min(credit, self.max_chunk, len(body) - sent)
                end = sent + n == len(body)
                await self.send(DATA, struct.pack(">IB", stream, 1 if end else 0)
                                + body[sent:sent + n])
                sent += n
                credit -= n
            t, payload = await self.next_message()
            if t == WINDOW:
                w = json.loads(payload)
                if w["stream"] == stream:
                    credit += w["increment"]
            elif t == RESPONSE:
                head = json.loads(payload)
                done = head.get("end", False)
            elif t == DATA:
                s, flags = struct.unpack_from(">IB", payload)
                chunk = payload[5:]
                if sink == "sha":
                    got.update(chunk)
                else:
                    got += chunk
                unacked += len(chunk)
                if unacked >= self.window // 2:
                    await self.send(WINDOW, {"stream": stream,
                                             "increment": unacked})
                    unacked = 0
                done = bool(flags & 1)
            elif t == CLOSE:
                raise RuntimeError(f"stream closed: {payload!r}")
            elif t == ERROR:
                raise RuntimeError(f"error: {payload!r}")
        status = head["status"] if head else 0
        out = got.hexdigest() if sink == "sha" else bytes(got)
        return status, {h["name"].lower(): h["value"]
                        for h in (head or {}).get("headers", [])}, out
