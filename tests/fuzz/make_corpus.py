#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Deterministic: running it again rewrites the same files. Protobuf messages
are encoded by hand (tunnel.v1 field numbers) so the script needs nothing
beyond Python. Usage: python3 tests/fuzz/make_corpus.py
"""
import base64
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields if v is not None)


def header(name, value):
    return msg((1, name), (2, value))


def response(sid, status, body=b"", end=False, headers=()):
    inner = msg((1, sid), (2, status)) + b"".join(
        field(3, header(n, v)) for n, v in headers)
    inner += msg((4, body or None), (5, 1 if end else None))
    return field(3, inner)


def data(sid, payload, end=False):
    return field(5, msg((1, sid), (2, payload or None), (3, 1 if end else None)))


def close(sid, reason=3):
    return field(6, msg((1, sid), (2, reason), (3, "service failed")))


def window(sid, inc):
    return field(4, field(3, msg((1, sid), (2, inc))))


def ping(nonce):
    return field(4, field(1, msg((1, nonce))))


def goaway():
    return field(4, field(4, msg((1, "agent stopping"), (2, 1000))))


def connect():
    return field(1, msg((1, 1), (2, "cam-01"), (4, msg((2, "cam-01")))))


def batch(*envelopes):
    # Envelope.batch (9) = EnvelopeBatch { repeated Envelope envelopes = 1 }.
    return field(9, b"".join(field(1, e) for e in envelopes))


def rec(op, payload=b""):
    return op.encode() + struct.pack("<H", len(payload)) + payload


ENVELOPE_SEEDS = {
    "small_response": [rec("O"), rec("E", response(1, 200, b"hi", True,
                                                   [("Content-Type", "text/plain")])),
                       rec("H"), rec("B"), rec("W"), rec("R")],
    "streamed_body": [rec("O"), rec("E", response(1, 200)), rec("H"),
                      rec("E", data(1, b"a" * 1000)), rec("B"),
                      rec("E", data(1, b"b" * 1000)), rec("B"),
                      rec("E", data(1, b"", True)), rec("B"), rec("R")],
    "upload_and_credit": [rec("O"), rec("W"), rec("S", b"u" * 3000),
                          rec("E", window(1, 2048)), rec("S", b"v" * 500),
                          rec("W"), rec("W"), rec("R")],
    "two_streams_cancel": [rec("O"), rec("O"), rec("C"),
                           rec("E", response(2, 200, b"late", True)),
                           rec("E", close(1)), rec("R"), rec("R"),
                           rec("E", data(1, b"after close"))],
    "bad_status": [rec("O"), rec("E", response(1, 600, b"", True))],
    "oversized_chunk": [rec("O"), rec("E", response(1, 200)),
                        rec("E", data(1, b"x" * 1025))],
    "beyond_window": [rec("O"), rec("E", response(1, 200))] +
                     [rec("E", data(1, b"y" * 1024)) for _ in range(5)],
    "data_after_end": [rec("O"), rec("E", response(1, 200, b"", True)),
                       rec("E", data(1, b"z"))],
    "window_overflow": [rec("O"), rec("E", window(1, 0x7FFFFFFF)),
                        rec("E", window(1, 0x7FFFFFFF))],
    "duplicate_head": [rec("O"), rec("E", response(1, 200)),
                       rec("E", response(1, 201))],
    "unsafe_headers": [rec("O"), rec("E", response(
        1, 200, b"ok", True, [("X-A", "a\r\nSet-Cookie: x=1"),
                              ("Bad Name", "v"), ("X-Nul", "a\0b")])),
                       rec("H")],
    "unknown_stream": [rec("O"), rec("E", data(9, b"who?"))],
    "second_connect": [rec("E", ping(7)), rec("W"), rec("E", connect())],
    "goaway_then_open": [rec("E", goaway()), rec("O"), rec("X")],
    "batch": [rec("O"), rec("O"),
              rec("E", batch(response(1, 200, b"a"), ping(3),
                             response(2, 200, b"", True), data(1, b"b", True))),
              rec("H"), rec("B"), rec("W")],
    "bad_batches": [rec("O"), rec("E", batch()), rec("E", batch(batch(ping(1)))),
                    rec("E", batch(connect(), ping(2)))],
    "write_failure": [rec("O"), rec("F"), rec("E", response(1, 200, b"", True)),
                      rec("H")],
}

HEADERS_SEEDS = {
    "get": b"GET /t/cam-01/x?a=1 HTTP/1.1\r\nHost: localhost\r\n"
           b"Accept: */*\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
    "post_chunked": b"POST /upload HTTP/1.1\r\nHost: a.localhost\r\n"
                    b"Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
                    b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "http10": b"HEAD / HTTP/1.0\r\n\r\n",
    "http2": b"GET / HTTP/2.0\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "no_colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nX-A: a\r\n  b\r\n\r\n",
    "nul": b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
    # 501: a method the front door does not route (found by this fuzzer
    # when the 501 was new and its invariants did not know it yet).
    "unrouted_method": b"PRI / HTTP/1.1\r\nContent-Length: 8000000000\r\n\r\n",
    "header_list": b"Connection: close, X-Drop\nX-Drop: 1\nKeep-Alive: 5\n"
                   b"Set-Cookie: a=1\nSet-Cookie: b=2\nX-Evil: a\rb\n: empty",
}

AGENT = "cam-01"
TOKEN = "tok-fuzz"
SECRET = base64.urlsafe_b64encode(b"secret-secret-secret-secret-32b!").rstrip(b"=").decode()
NOW = 1700000000
NONCE = "0123456789abcdef0123456789abcdef"


def signed(agent=AGENT, token=TOKEN, ts=NOW, nonce=NONCE, secret=SECRET):
    key = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    canon = "tunnel-auth-v1\n%s\n%s\n%d\n%s" % (agent, token, ts, nonce)
    sig = hmac.new(key, canon.encode(), hashlib.sha256).hexdigest()
    return {"x-tunnel-agent-id": agent, "x-tunnel-token-id": token,
            "x-tunnel-timestamp": str(ts), "x-tunnel-nonce": nonce,
            "x-tunnel-signature": sig}


def lines(md):
    return "".join("%s=%s\n" % kv for kv in md.items()).encode()


def without(md, key):
    md = dict(md)
    del md[key]
    return md


AUTH_SEEDS = {
    "valid": lines(signed()),
    "valid_skew_edge": lines(signed(ts=NOW - 299)),
    "skewed": lines(signed(ts=NOW + 3600)),
    "missing_nonce": lines(without(signed(), "x-tunnel-nonce")),
    "bad_nonce": lines(dict(signed(), **{"x-tunnel-nonce": "xyz"})),
    "bad_signature": lines(dict(signed(), **{"x-tunnel-signature": "00" * 32})),
    "unknown_token": lines(signed(token="tok-none")),
    "revoked": lines(signed(agent="old-01", token="tok-revoked")),
    "agent_mismatch": lines(signed(agent="cam-02")),
    "bad_timestamp": lines(dict(signed(), **{"x-tunnel-timestamp": "17e8"})),
    # Regression: a refusal quotes the agent's own timestamp, which may hold
    # the secret's text; the harness once mistook that for a leak.
    "secret_in_timestamp": lines(dict(signed(), **{
        "x-tunnel-timestamp": "1699" + SECRET + "999700"})),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, content in seeds.items():
        if isinstance(content, list):
            content = b"".join(content)
        with open(os.path.join(d, name), "wb") as f:
            f.write(content)


write("envelope_fuzz", ENVELOPE_SEEDS)
write("headers_fuzz", HEADERS_SEEDS)
write("auth_fuzz", AUTH_SEEDS)
