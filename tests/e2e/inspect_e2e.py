"""The request inspector through the real binaries: gateway-tunnel,
agent-tunnel --inspect 127.0.0.1:0 and a local service of mixed kinds
(inspect_setup.py), all on 127.0.0.1.

50 requests go through the tunnel (JSON posts, form posts, binary uploads,
gzip responses, plain GETs, a download the visitor abandons); the JSON API
must list each with the right fields; a replay must reach the service with
the identical method, path, fields and body, an edited one with the edits;
an upgraded connection appears with its handshake and byte counts; the
ring keeps --inspect-max-requests; the API refuses what it must.

Usage: inspect_e2e.py BUILD_DIR
"""
import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import check, wait_until  # noqa: E402
from inspect_setup import Handler, run, start_tunnel  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
MAX_REQUESTS = 60


def api(base, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def visit(http_addr, method, path, body=None, headers=None):
    """A request through the tunnel: (status, response headers, body)."""
    host, port = http_addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request(method, "/t/cam-01" + path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def test(procs, svc_port):
    http_addr, base = start_tunnel(
        BUILD, svc_port, procs, ["--inspect-max-requests", str(MAX_REQUESTS)])

    status = subprocess.run(
        [os.path.join(BUILD, "agent", "agent-tunnel"), "status",
         "--state-file", "state.json"], capture_output=True, text=True,
        timeout=30).stdout
    check("agent-tunnel status shows the inspector's address",
          f"  inspector   {base}/\n" in status, status)

    # An address named with --inspect that is taken: exit 1, saying so.
    port = base.rsplit(":", 1)[1]
    taken = subprocess.run(
        [os.path.join(BUILD, "agent", "agent-tunnel"), "connect", "--gateway",
         "127.0.0.1:1", "--id", "cam-x", "--token", "t", "--secret", "c2VjcmV0",
         "--insecure", "--to", "http://127.0.0.1:9", "--state-file", "",
         "--inspect", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30)
    check("a taken --inspect address: exit 1 naming it",
          taken.returncode == 1 and
          f"cannot listen for --inspect on 127.0.0.1:{port}" in taken.stderr,
          f"{taken.returncode} {taken.stderr}")

    # --- 50 requests of mixed kinds ---
    sent = []  # (kind, method, path, request body, X-Request-Id)
    uploads = {}
    for i in range(10):
        doc = json.dumps({"event": "payment", "n": i}).encode()
        st, h, _ = visit(http_addr, "POST", f"/api/hook/{i}", doc,
                         {"Content-Type": "application/json",
                          "Authorization": f"Bearer secret-token-{i}"})
        sent.append(("json", "POST", f"/api/hook/{i}", doc, h.get("X-Request-Id")))
    for i in range(10):
        form = f"name=n{i}&msg=hello+world".encode()
        st, h, _ = visit(http_addr, "POST", "/form", form,
                         {"Content-Type": "application/x-www-form-urlencoded"})
        sent.append(("form", "POST", "/form", form, h.get("X-Request-Id")))
    for i in range(10):
        blob = os.urandom(100_000 + i)
        st, h, digest = visit(http_addr, "POST", "/upload", blob,
                              {"Content-Type": "application/octet-stream"})
        uploads[h.get("X-Request-Id")] = blob
        check(f"upload {i} arrived whole",
              digest.decode() == hashlib.sha256(blob).hexdigest())
        sent.append(("binary", "POST", "/upload", blob, h.get("X-Request-Id")))
    for i in range(10):
        st, h, _ = visit(http_addr, "GET", "/gz")
        sent.append(("gzip", "GET", "/gz", b"", h.get("X-Request-Id")))
    for i in range(9):
        st, h, _ = visit(http_addr, "GET", f"/page/{i}?q={i}")
        sent.append(("plain", "GET", f"/page/{i}?q={i}", b"", h.get("X-Request-Id")))
    # A download the visitor abandons after its first bytes.
    host, port = http_addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"GET /t/cam-01/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while len(got) < 200_000:
        got += s.recv(65536)
    s.close()
    sent.append(("cancelled", "GET", "/slow", b"", None))

    def listed():
        code, body = api(base, "/api/requests")
        done = [r for r in body["requests"] if r["outcome"] != "in_flight"]
        return body if len(done) == 50 else None
    listing = wait_until(listed, 30, "50 finished requests in the inspector")
    reqs = {r["request_id"]: r for r in listing["requests"]}
    check("50 requests listed", len(listing["requests"]) == 50,
          len(listing["requests"]))
    ids = [int(r["id"]) for r in listing["requests"]]
    check("newest first", ids == sorted(ids, reverse=True))

    for kind, method, path, body, rid in sent:
        if rid is None:
            continue
        r = reqs.get(rid)
        if r is None:
            check(f"{kind} {path} listed by its X-Request-Id", False, rid)
            continue
        check(f"{kind} {path}: method, path, status, tunnel, client",
              r["method"] == method and r["path"] == path and
              r["status"] == 200 and r["tunnel"] == "cam-01" and
              r["client_ip"] == "127.0.0.1" and r["outcome"] == "complete",
              repr(r))
        check(f"{kind} {path}: bytes in", int(r["bytes_in"]) == len(body),
              r["bytes_in"])

    # Details of one of each kind.
    def detail(rid):
        code, d = api(base, f"/api/requests/{reqs[rid]['id']}")
        return d
    by_kind = {}
    for kind, method, path, body, rid in sent:
        by_kind.setdefault(kind, (path, body, rid))
    path, body, rid = by_kind["json"]
    d = detail(rid)
    check("JSON request body kept and classified",
          d["request_body"]["kind"] == "json" and
          json.loads(d["request_body"]["text"]) == json.loads(body))
    check("JSON response body as the service sent it",
          d["response_body"]["kind"] == "json" and
          d["response_body"]["text"] == body.decode())
    auth = [h["value"] for h in d["request_headers"] if h["name"] == "Authorization"]
    check("Authorization masked", auth == ["Bearer <masked: 14 bytes>"], repr(auth))
    rtype = [h["value"] for h in d["response_headers"] if h["name"] == "Content-Type"]
    check("response fields kept", rtype == ["application/json"], repr(rtype))
    check("time is RFC 3339", d["time"].endswith("Z") and "T" in d["time"])
    path, body, rid = by_kind["form"]
    d = detail(rid)
    check("form body classified", d["request_body"]["kind"] == "form" and
          d["request_body"]["text"] == body.decode())
    for blob_rid in [v[4] for v in sent if v[0] == "binary"][:3]:
        d = detail(blob_rid)
        check("binary upload kept byte for byte",
              d["request_body"]["kind"] == "binary" and
              base64.b64decode(d["request_body"]["data"]) == uploads[blob_rid] and
              not d["request_body"]["truncated"])
    path, body, rid = by_kind["gzip"]
    d = detail(rid)
    check("gzip response shown decompressed",
          d["response_body"]["decompressed"] and
          d["response_body"]["content_encoding"] == "gzip" and
          json.loads(d["response_body"]["text"]) ==
          {"compressed": True, "items": [0, 1, 2, 3, 4]}, repr(d["response_body"]))
    check("gzip bytes counted as sent (compressed)",
          int(d["bytes_out"]) == len(base64.b64decode(d["response_body"]["data"])))
    slow = [r for r in listing["requests"] if r["path"] == "/slow"]
    check("the abandoned download is recorded as cancelled",
          len(slow) == 1 and slow[0]["outcome"] == "cancelled" and
          slow[0]["status"] == 200 and int(slow[0]["bytes_out"]) >= 200_000,
          repr(slow))
    d = api(base, f"/api/requests/{slow[0]['id']}")[1]
    check("its body is marked cut", d["response_body"]["truncated"])

    # Filters.
    code, f = api(base, "/api/requests?method=POST&path=/api/hook")
    check("filter by method and path", len(f["requests"]) == 10)
    code, f = api(base, "/api/requests?status=2xx&limit=5")
    check("filter by status with a limit", len(f["requests"]) == 5)

    # --- replay as it was ---
    path, body, rid = by_kind["json"]
    original_id = reqs[rid]["id"]
    with Handler.lock:
        before = len(Handler.seen)
        first = [s for s in Handler.seen if s[1] == path][0]
    code, replay = api(base, f"/api/requests/{original_id}/replay", b"",
                       {"Content-Type": "application/json"})
    check("replay answered 200 with its record", code == 200 and
          replay["replay_of"] == original_id and replay["status"] == 200 and
          replay["outcome"] == "complete", repr(replay))
    with Handler.lock:
        again = Handler.seen[before] if len(Handler.seen) > before else None
    check("replay reached the service", again is not None)
    if again:
        check("replay: identical method and path",
              again[0] == first[0] and again[1] == first[1],
              f"{again[:2]} vs {first[:2]}")
        check("replay: identical fields (names, values, order)",
              again[2] == first[2], f"{again[2]}\nvs\n{first[2]}")
        check("replay: identical body", again[3] == first[3])
    code, listing = api(base, "/api/requests?limit=1")
    check("the replay is listed, marked as a replay",
          listing["requests"][0]["replay_of"] == original_id)

    # --- an edited replay ---
    edits = {"method": "PUT", "path": "/api/edited?x=1",
             "replace_headers": True,
             "headers": [{"name": "Content-Type", "value": "application/json"},
                         {"name": "Authorization", "value": "Bearer <masked: 14 bytes>"},
                         {"name": "X-Edited", "value": "yes"}],
             "body_text": "{\"edited\": true}"}
    with Handler.lock:
        before = len(Handler.seen)
    code, replay = api(base, f"/api/requests/{original_id}/replay",
                       json.dumps(edits).encode(),
                       {"Content-Type": "application/json"})
    check("edited replay answered", code == 200 and replay["method"] == "PUT",
          repr(replay))
    with Handler.lock:
        edited = Handler.seen[before] if len(Handler.seen) > before else None
    check("edited replay reached the service", edited is not None)
    if edited:
        h = dict(edited[2])
        check("edited: method, path, body",
              edited[0] == "PUT" and edited[1] == "/api/edited?x=1" and
              edited[3] == b"{\"edited\": true}", repr(edited))
        check("edited: a masked field left as shown keeps the captured value",
              h.get("Authorization") == "Bearer secret-token-0", repr(h))
        check("edited: new field sent, dropped ones gone",
              h.get("X-Edited") == "yes" and "X-Forwarded-For" not in h, repr(h))

    # --- refusals ---
    code, e = api(base, f"/api/requests/{original_id}/replay",
                  b'{"method": "GE T"}', {"Content-Type": "application/json"})
    check("bad method refused with 400", code == 400 and "HTTP token" in e["message"],
          repr(e))
    code, e = api(base, f"/api/requests/{original_id}/replay", b'{"nope": 1}',
                  {"Content-Type": "application/json"})
    check("unknown JSON field refused with 400", code == 400 and
          e["error"] == "bad_replay", repr(e))
    code, e = api(base, "/api/requests/999999")
    check("unknown id: 404 naming the limit", code == 404 and
          "--inspect-max-requests" in e["message"], repr(e))
    code, e = api(base, f"/api/requests/{original_id}/replay", b"",
                  {"Origin": "http://evil.example", "Content-Type": "application/json"})
    check("a POST from another site's page is refused", code == 403 and
          e["error"] == "cross_origin", repr(e))
    port = base.rsplit(":", 1)[1]
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    c.request("GET", "/api/requests", headers={"Host": f"rebind.example:{port}"})
    r = c.getresponse()
    r.read()
    check("a foreign Host (DNS rebinding) is refused", r.status == 403)
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    c.request("GET", "/api/requests", headers={"Sec-Fetch-Site": "cross-site"})
    r = c.getresponse()
    r.read()
    check("a request a browser marks cross-site is refused", r.status == 403)

    # --- an upgraded connection ---
    s = socket.create_connection((host, int(http_addr.rsplit(":", 1)[1])),
                                 timeout=30)
    s.sendall(b"GET /t/cam-01/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n"
              b"Connection: Upgrade\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    payload = b"x" * 5000
    s.sendall(payload)
    echoed = b""
    while len(echoed) < len(payload):
        echoed += s.recv(65536)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    check("upgrade echoed through the tunnel", echoed == payload and
          b" 101 " in head.split(b"\r\n")[0])

    def upgraded():
        code, body = api(base, "/api/requests?path=/ws")
        done = [r for r in body["requests"] if r["outcome"] != "in_flight"]
        return done[0] if done else None
    u = wait_until(upgraded, 20, "the upgraded connection's record to end")
    check("upgrade recorded with its handshake and byte counts",
          u["upgrade"] and u["status"] == 101 and
          int(u["bytes_in"]) == 5000 and int(u["bytes_out"]) == 5000 and
          u["outcome"] == "complete", repr(u))
    d = api(base, f"/api/requests/{u['id']}")[1]
    check("its handshake fields", any(h["name"] == "Upgrade" and h["value"] == "echo"
                                      for h in d["response_headers"]), repr(d))
    code, e = api(base, f"/api/requests/{u['id']}/replay", b"")
    check("an upgrade cannot be replayed (409)", code == 409, repr(e))

    # --- the ring's bound and memory report ---
    for i in range(MAX_REQUESTS):
        visit(http_addr, "GET", f"/fill/{i}")
    code, status = api(base, "/api/status")
    check("the ring keeps --inspect-max-requests",
          int(status["requests"]) == MAX_REQUESTS and int(status["evicted"]) > 0,
          repr(status))
    check("memory reported and within its bound",
          0 <= int(status["body_bytes"]) <= int(status["max_memory"]))
    code, e = api(base, f"/api/requests/{original_id}")
    check("an evicted request is gone (404)", code == 404)


if __name__ == "__main__":
    sys.exit(run("inspect_e2e", test))
