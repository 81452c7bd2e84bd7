#!/usr/bin/env python3
"""Writes tests/relay/vectors.json: the relay's wire format (docs/RELAY.md)
pinned down as bytes, for both ends to test against (relay.js in
tests/relay/relay_js_test.mjs, the agent and the gateway in C++).

Everything is fixed (key, session id, nonces, IVs, seq, ts), so the file is
the same on every run and a diff of it is a change of the format. The IVs
are fixed here only because a test vector has to be reproducible; a real
sender draws a fresh random IV for every frame.

The frames are two conversations on two connections of one share:
  A. HELLO, HELLO_ACK, PAIR, PAIR_OK, a POST with a body in two DATA frames,
     WINDOW both ways, a RESPONSE with a binary body, a GET cancelled by the
     browser, a GET the agent closes (local service unreachable);
  B. a wrong code (bad_code), then the share locked, and a REQUEST before
     pairing (not_paired).
so a receiver can also replay them in order.

Sections:
  frames        seal(plaintext, iv) == frame_hex and open(frame) == plaintext
  bad_frames    open() must refuse them (authentication or length)
  bad_messages  open() accepts them, but the message rules drop them

Uses the AESGCM of python3-cryptography (Debian's package is enough).
Usage: make_vectors.py [OUTPUT]  (default: vectors.json next to this file)
"""
import base64
import hashlib
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HELLO, HELLO_ACK, PAIR, PAIR_OK, REQUEST, RESPONSE, DATA, CLOSE, ERROR, \
    WINDOW = range(1, 11)
TYPE_NAMES = {1: "HELLO", 2: "HELLO_ACK", 3: "PAIR", 4: "PAIR_OK",
              5: "REQUEST", 6: "RESPONSE", 7: "DATA", 8: "CLOSE", 9: "ERROR",
              10: "WINDOW"}
DIRS = {"c2h": 1, "h2c": 2}
HEADER = struct.Struct(">BBBBQQ16s")  # v, type, dir, 0, seq, ts, conn
MIN_FRAME = 12 + 16 + HEADER.size      # 64


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def fixed(label, n):
    """n bytes that look random but are a function of `label` only."""
    return hashlib.sha256(b"tunnel-relay test vector|" + label.encode()).digest()[:n]


KEY = fixed("key", 32)
SESSION = b64url(fixed("session", 16))
OTHER_KEY = fixed("another key", 32)
OTHER_SESSION = b64url(fixed("another session", 16))
C_A, H_A = fixed("C of connection A", 16), fixed("H of connection A", 16)
C_B, H_B = fixed("C of connection B", 16), fixed("H of connection B", 16)
TS0 = 1733390000000
assert len(SESSION) == 22 and len(b64url(KEY)) == 43


def aad(session, direction):
    return f"tunnel-relay|v=1|session={session}|dir={direction}".encode()


def message(mtype, direction, seq, ts, conn, payload, v=1, dir_byte=None,
            reserved=0):
    d = DIRS[direction] if dir_byte is None else dir_byte
    return HEADER.pack(v, mtype, d, reserved, seq, ts, conn) + payload


def seal(key, session, direction, plaintext, iv):
    # AESGCM.encrypt returns ciphertext | tag; the frame puts the tag first.
    out = AESGCM(key).encrypt(iv, plaintext, aad(session, direction))
    return iv + out[-16:] + out[:-16]


def open_frame(key, session, direction, frame):
    if len(frame) < MIN_FRAME:
        raise ValueError("short")
    iv, tag, ct = frame[:12], frame[12:28], frame[28:]
    return AESGCM(key).decrypt(iv, ct + tag, aad(session, direction))


def js(obj):
    """JSON as both ends write it: compact, keys in the order given, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def data(stream, flags, body):
    return struct.pack(">IB", stream, flags) + body


frames = []
_seq = {}  # (conn, direction) -> next seq
_ts = [TS0]


def add(name, direction, conn, mtype, payload, seq=None):
    """Appends one frame of a conversation, numbering it as RELAY.md says
    (HELLO and HELLO_ACK are seq 0, the rest count from 1 per direction)."""
    key = (conn, direction)
    if seq is None:
        seq = _seq.get(key, 1)
        _seq[key] = seq + 1
    ts = _ts[0]
    _ts[0] += 7
    plaintext = message(mtype, direction, seq, ts, conn, payload)
    iv = fixed("iv|" + name, 12)
    frame = seal(KEY, SESSION, direction, plaintext, iv)
    assert open_frame(KEY, SESSION, direction, frame) == plaintext
    frames.append({
        "name": name,
        "dir": direction,
        "iv": iv.hex(),
        "aad": aad(SESSION, direction).decode(),
        "message": {"v": 1, "type": mtype, "type_name": TYPE_NAMES[mtype],
                    "dir": DIRS[direction], "seq": seq, "ts": ts,
                    "conn": conn.hex(), "payload_hex": payload.hex()},
        "plaintext_hex": plaintext.hex(),
        "frame_hex": frame.hex(),
    })
    return plaintext, frame


WINDOW_BYTES, MAX_CHUNK = 65536, 16384

# --- connection A: pairs, a POST, a binary response, a cancel, a CLOSE ---
add("A HELLO", "c2h", C_A, HELLO, js({"client": "relay.js/1"}), seq=0)
add("A HELLO_ACK", "h2c", C_A, HELLO_ACK, js({
    "host": b64url(H_A), "window": WINDOW_BYTES, "maxChunk": MAX_CHUNK,
    "paired": False, "attemptsLeft": 5, "locked": False}), seq=0)
add("A PAIR", "c2h", H_A, PAIR, js({"code": "481207"}))
add("A PAIR_OK", "h2c", H_A, PAIR_OK, js({}))
add("A REQUEST POST with body", "c2h", H_A, REQUEST, js({
    "stream": 1, "method": "POST", "path": "/upload?name=caf%C3%A9",
    "headers": [{"name": "Content-Type", "value": "text/plain;charset=UTF-8"},
                {"name": "Content-Length", "value": "12"},
                {"name": "Accept", "value": "*/*"}],
    "end": False}))
add("A DATA request body", "c2h", H_A, DATA, data(1, 0, "hello, ".encode()))
add("A DATA request body end", "c2h", H_A, DATA, data(1, 1, b"world"))
add("A WINDOW for the request body", "h2c", H_A, WINDOW,
    js({"stream": 1, "increment": 12}))
add("A RESPONSE", "h2c", H_A, RESPONSE, js({
    "stream": 1, "status": 200,
    "headers": [{"name": "Content-Type", "value": "application/octet-stream"},
                {"name": "Set-Cookie", "value": "sid=abc; Path=/; HttpOnly"},
                {"name": "X-Note", "value": "déjà vu"}],
    "end": False}))
add("A DATA binary response body", "h2c", H_A, DATA, data(1, 0, bytes(range(256))))
add("A WINDOW for the response body", "c2h", H_A, WINDOW,
    js({"stream": 1, "increment": 256}))
add("A DATA response end (empty)", "h2c", H_A, DATA, data(1, 1, b""))
add("A REQUEST GET", "c2h", H_A, REQUEST, js({
    "stream": 2, "method": "GET", "path": "/",
    "headers": [{"name": "Accept", "value": "text/html"}], "end": True}))
add("A CLOSE cancelled", "c2h", H_A, CLOSE, js({"stream": 2, "reason": "cancelled"}))
add("A REQUEST GET unreachable", "c2h", H_A, REQUEST, js({
    "stream": 3, "method": "GET", "path": "/down", "headers": [], "end": True}))
add("A CLOSE local_unreachable", "h2c", H_A, CLOSE, js({
    "stream": 3, "reason": "local_unreachable",
    "message": "connect 127.0.0.1:8080: connection refused"}))

# --- connection B: a wrong code, then locked; a REQUEST before PAIR_OK ---
add("B HELLO", "c2h", C_B, HELLO, js({"client": "relay.js/1"}), seq=0)
add("B HELLO_ACK", "h2c", C_B, HELLO_ACK, js({
    "host": b64url(H_B), "window": WINDOW_BYTES, "maxChunk": MAX_CHUNK,
    "paired": False, "attemptsLeft": 1, "locked": False}), seq=0)
add("B PAIR wrong code", "c2h", H_B, PAIR, js({"code": "000000"}))
add("B ERROR bad_code", "h2c", H_B, ERROR, js({
    "code": "bad_code", "message": "wrong pairing code", "attemptsLeft": 0}))
add("B PAIR after lock", "c2h", H_B, PAIR, js({"code": "481207"}))
add("B ERROR locked", "h2c", H_B, ERROR, js({
    "code": "locked",
    "message": "too many wrong codes; restart the share on the device"}))
add("B REQUEST unpaired", "c2h", H_B, REQUEST, js({
    "stream": 1, "method": "GET", "path": "/", "headers": [], "end": True}))
add("B ERROR not_paired", "h2c", H_B, ERROR, js({
    "code": "not_paired", "message": "pair with the code first"}))

# --- frames open() must refuse ---
by_name = {f["name"]: f for f in frames}
good = bytes.fromhex(by_name["A PAIR_OK"]["frame_hex"])
good_pt = bytes.fromhex(by_name["A PAIR_OK"]["plaintext_hex"])
good_c2h = bytes.fromhex(by_name["A PAIR"]["frame_hex"])
good_c2h_pt = bytes.fromhex(by_name["A PAIR"]["plaintext_hex"])


def flip(frame, i):
    b = bytearray(frame)
    b[i] ^= 0x01
    return bytes(b)


bad_frames = []


def bad(name, direction, frame, why):
    try:
        open_frame(KEY, SESSION, direction, frame)
    except Exception:  # noqa: BLE001 - any refusal is the point
        bad_frames.append({"name": name, "dir": direction,
                           "frame_hex": frame.hex(), "why": why})
        return
    raise AssertionError(f"bad frame {name!r} opens")


bad("tampered tag", "h2c", flip(good, 12 + 5), "a bit of the tag flipped")
bad("tampered ciphertext", "h2c", flip(good, 28 + 3),
    "a bit of the ciphertext (the seq) flipped")
bad("tampered iv", "h2c", flip(good, 0), "a bit of the IV flipped")
bad("wrong session in aad", "h2c",
    seal(KEY, OTHER_SESSION, "h2c", good_pt, fixed("iv|bad session", 12)),
    "sealed for another session id (a frame moved between sessions)")
bad("wrong dir", "h2c",
    seal(KEY, SESSION, "c2h", good_pt, fixed("iv|bad dir", 12)),
    "sealed with the c2h AAD, received as h2c (a frame reflected back)")
bad("wrong dir (c2h receiver)", "c2h",
    seal(KEY, SESSION, "h2c", good_c2h_pt, fixed("iv|bad dir 2", 12)),
    "sealed with the h2c AAD, received by the host as c2h")
bad("wrong key", "h2c",
    seal(OTHER_KEY, SESSION, "h2c", good_pt, fixed("iv|bad key", 12)),
    "sealed with another share's key")
bad("truncated", "h2c", good[:63], "a good frame cut to 63 bytes")
bad("short but authentic", "h2c",
    seal(KEY, SESSION, "h2c", good_pt[:35], fixed("iv|short", 12)),
    "authenticates, but 63 bytes < 12 + 16 + 36: no whole message header")
bad("tag only", "h2c", good[:28], "IV and tag, no ciphertext")
bad("empty", "h2c", b"", "zero bytes")
bad("ciphertext appended", "c2h", good_c2h + b"\x00", "one byte appended")

# --- frames that authenticate, but whose message a receiver drops ---
bad_messages = []


def bad_message(name, direction, plaintext, why):
    frame = seal(KEY, SESSION, direction, plaintext, fixed("iv|" + name, 12))
    assert open_frame(KEY, SESSION, direction, frame) == plaintext
    bad_messages.append({"name": name, "dir": direction,
                         "plaintext_hex": plaintext.hex(),
                         "frame_hex": frame.hex(), "why": why})


bad_message("version 2", "h2c",
            message(PAIR_OK, "h2c", 1, TS0, H_A, js({}), v=2), "v must be 1")
bad_message("unknown type 11", "h2c",
            message(11, "h2c", 1, TS0, H_A, js({})), "types are 1..10")
bad_message("unknown type 0", "c2h",
            message(0, "c2h", 1, TS0, H_A, js({})), "types are 1..10")
bad_message("dir byte c2h in an h2c frame", "h2c",
            message(PAIR_OK, "h2c", 1, TS0, H_A, js({}), dir_byte=1),
            "the dir byte must match the AAD's dir")
bad_message("reserved byte 1", "h2c",
            message(PAIR_OK, "h2c", 1, TS0, H_A, js({}), reserved=1),
            "the reserved byte must be 0")
bad_message("dir byte 3", "c2h",
            message(PAIR, "c2h", 1, TS0, H_A, js({"code": "481207"}), dir_byte=3),
            "the dir byte must match the AAD's dir")

out = {
    "comment": "docs/RELAY.md test vectors; written by tests/relay/make_vectors.py, do not edit",
    "key": b64url(KEY),
    "session": SESSION,
    "window": WINDOW_BYTES,
    "maxChunk": MAX_CHUNK,
    "frames": frames,
    "bad_frames": bad_frames,
    "bad_messages": bad_messages,
}
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "vectors.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"{path}: {len(frames)} frames, {len(bad_frames)} bad frames, "
      f"{len(bad_messages)} bad messages")
