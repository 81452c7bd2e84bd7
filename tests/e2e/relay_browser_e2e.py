#!/usr/bin/env python3
"""An encrypted share in real Chromium (Debian's `chromium`, headless, over
the DevTools protocol): the real gateway and `agent-tunnel share` in front
of a real multi-page site (pages, a stylesheet, images, a form, a 20 MiB
file) on 127.0.0.1.

The browser opens the printed link and the page removes its fragment from
the address bar; the code is typed in and the page pairs; the site renders
in the page's viewer through its Service Worker (the stylesheet applied,
the image decoded), an absolute link and a relative one are followed, the
form is posted and its answer shown, and a 20 MiB download through
relay.fetch() and one through the Service Worker match the file's SHA-256.
The gateway restarts: the page reconnects and pairs again by itself. A
second share's link points at a copy of the page on another origin
(--relay-client-url): it pairs and renders the site as well.

Meanwhile a tap records every byte between the browser and the gateway and
between the agent and the gateway (byte-recording proxies on both links),
and the gateway logs at debug level: none of them holds the marker the site
puts in every page, image and answer, the key (raw, base64url or hex), the
pairing code, or a path of the site. A screenshot is kept:
BUILD_DIR/test-artifacts/relay.png.

Skipped (exit 77) when chromium is not installed, unless
TUNNEL_REQUIRE_BROWSER=1. Usage: relay_browser_e2e.py BUILD_DIR
"""
import asyncio
import functools
import hashlib
import http.server
import os
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib

import websockets

from chromium import launch, new_page, skip_without_chromium
from e2e_util import check, failures, read_line, stop
from relay_client import parse_link
from relay_setup import Gateway, Tap, free_port, issue, share, share_link

BUILD = os.path.abspath(sys.argv[1])
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ARTIFACTS = os.path.join(BUILD, "test-artifacts")
MARKER = "MARKER" + "".join(random.choice("QXZJKVW") for _ in range(20))
BIG = random.Random(20).randbytes(20 << 20)
BIG_SHA = hashlib.sha256(BIG).hexdigest()
SITE_PATHS = ["/about.html", "/gallery.html", "/img/logo.png",
              "/css/site.css", "/submit", "/big.bin"]


def png(width, height, rgb, text):
    """A real PNG (decodable by the browser) with `text` in a tEXt chunk."""
    def chunk(kind, data):
        body = kind + data
        return (struct.pack(">I", len(data)) + body +
                struct.pack(">I", zlib.crc32(body) & 0xffffffff))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"tEXt", b"Comment\x00" + text.encode()) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


LOGO = png(40, 30, (200, 30, 30), MARKER)
PAGES = {
    "/": f"""<!doctype html><html><head><title>Site {MARKER}</title>
<link rel="stylesheet" href="/css/site.css"></head><body>
<h1 id="title">Home {MARKER}</h1>
<img id="logo" src="/img/logo.png" alt="logo">
<a id="about" href="/about.html">About (absolute link)</a>
<a id="gallery" href="gallery.html">Gallery (relative link)</a>
<form id="f" method="post" action="/submit">
<input id="name" name="name"><button id="send" type="submit">Send</button>
</form></body></html>""",
    "/about.html": f"""<!doctype html><html><body>
<h1 id="title">About {MARKER}</h1><a id="home" href="/">Home</a></body></html>""",
    "/gallery.html": f"""<!doctype html><html><body>
<h1 id="title">Gallery {MARKER}</h1><img id="pic" src="img/logo.png">
</body></html>""",
}


class Site(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    posts = []
    seen = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Site-Marker", MARKER)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with Site.lock:
            Site.seen.append(self.path)
        if self.path in PAGES:
            self.reply(200, "text/html; charset=utf-8", PAGES[self.path].encode())
        elif self.path == "/css/site.css":
            self.reply(200, "text/css",
                       f"/* {MARKER} */ body {{ background: rgb(1, 2, 3); }}".encode())
        elif self.path.endswith("logo.png"):
            self.reply(200, "image/png", LOGO)
        elif self.path == "/big.bin":
            self.reply(200, "application/octet-stream", BIG)
        else:
            self.reply(404, "text/plain", f"not here {MARKER}".encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        form = urllib.parse.parse_qs(body.decode())
        with Site.lock:
            Site.posts.append(form)
        name = form.get("name", ["?"])[0]
        self.reply(200, "text/html; charset=utf-8",
                   f"<html><body><h1 id='title'>Thanks, {name} {MARKER}</h1>"
                   "</body></html>".encode())


# The viewer's page title, once its document has loaded (as a person would
# see it before clicking).
def click(page, element_id):
    """Clicks an element of the viewer's document."""
    return page.eval("document.getElementById('frame').contentDocument"
                     f".getElementById('{element_id}').click()")


FRAME_TEXT = ("(() => { const d = document.getElementById('frame')"
              ".contentDocument; return d && d.readyState === 'complete' && "
              "d.getElementById('title') && "
              "d.getElementById('title').textContent; })()")


async def drive(browser_ws, link, code, gw):
    async with websockets.connect(browser_ws, max_size=256 << 20) as ws:
        page = await new_page(ws)
        await page.call("Page.navigate", {"url": link})
        state = ("(document.getElementById('relay-app') || "
                 "{dataset: {}}).dataset.state")
        await page.wait_for(f"{state} === 'connected' || {state} === 'paired'",
                            30, "the page to reach the device")
        href = await page.eval("location.href")
        check("the page removed the key from the address bar",
              "#" not in href and "key=" not in href and
              href.endswith("/relay/"), href)
        check("the pairing form is shown",
              await page.eval("!document.getElementById('pair-form').hidden"))
        await page.eval(f"document.getElementById('code').value = '{code}';"
                        "document.getElementById('pair-button').click()")
        await page.wait_for(f"{state} === 'paired'", 20, "pairing")
        check("the code pairs the page", True)

        # The site renders in the viewer through the Service Worker.
        title = await page.wait_for(FRAME_TEXT, 30, "the site's home page")
        check("the home page renders through the encrypted channel",
              title == f"Home {MARKER}", title)
        check("its absolute-path stylesheet is applied", await page.wait_for(
            "getComputedStyle(document.getElementById('frame').contentDocument"
            ".body).backgroundColor === 'rgb(1, 2, 3)'", 20, "the stylesheet"))
        check("its image is decoded", await page.wait_for(
            "(i => i && i.complete && i.naturalWidth === 40)(document"
            ".getElementById('frame').contentDocument.getElementById('logo'))",
            20, "the image"))
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = await page.screenshot(os.path.join(ARTIFACTS, "relay.png"))
        check("screenshot kept", shot > 5000, shot)
        check("the viewer's document is controlled by the Service Worker",
              await page.eval("!!document.getElementById('frame')"
                              ".contentWindow.navigator.serviceWorker.controller"))
        await click(page, "about")
        title = await page.wait_for(
            f"(t => t && t.startsWith('About') && t)({FRAME_TEXT})", 20,
            "the about page")
        check("an absolute link is followed inside the share",
              title == f"About {MARKER}" and (await page.eval(
                  "document.getElementById('frame').contentWindow.location"
                  ".pathname")) == "/relay/app/about.html", title)
        await click(page, "home")
        await page.wait_for(f"(t => t && t.startsWith('Home'))({FRAME_TEXT})",
                            20, "home again")
        await click(page, "gallery")
        title = await page.wait_for(
            f"(t => t && t.startsWith('Gallery') && t)({FRAME_TEXT})", 20,
            "the gallery")
        check("a relative link is followed, its image too",
              title == f"Gallery {MARKER}" and await page.wait_for(
                  "(i => i && i.complete && i.naturalWidth === 40)(document"
                  ".getElementById('frame').contentDocument"
                  ".getElementById('pic'))", 20, "the gallery's image"))
        await page.eval("history.back !== undefined && document"
                        ".getElementById('frame').contentWindow.history.back()")
        await page.wait_for(f"(t => t && t.startsWith('Home'))({FRAME_TEXT})",
                            20, "home after going back")
        await page.eval("(d => { d.getElementById('name').value = 'Ada Lovelace';"
                        " d.getElementById('send').click(); })(document"
                        ".getElementById('frame').contentDocument)")
        title = await page.wait_for(
            f"(t => t && t.startsWith('Thanks') && t)({FRAME_TEXT})", 20,
            "the form's answer")
        with Site.lock:
            posts = list(Site.posts)
        check("the form is posted and its answer shown",
              title == f"Thanks, Ada Lovelace {MARKER}" and
              posts == [{"name": ["Ada Lovelace"]}], (title, posts))

        for how, fetch in [
                ("relay.fetch()", "relay.fetch('/big.bin')"),
                ("the Service Worker",
                 "document.getElementById('frame').contentWindow"
                 ".fetch('/relay/app/big.bin')")]:
            t0 = time.monotonic()
            digest = await page.eval(
                f"{fetch}.then(r => r.arrayBuffer())"
                ".then(b => crypto.subtle.digest('SHA-256', b))"
                ".then(h => [...new Uint8Array(h)].map(x => x.toString(16)"
                ".padStart(2, '0')).join(''))")
            secs = time.monotonic() - t0
            check(f"20 MiB through {how} match their SHA-256 "
                  f"({20 / secs:.0f} MiB/s)", digest == BIG_SHA, digest)

        # The gateway restarts: the page reconnects and pairs again by
        # itself (the code is not asked for again).
        await page.eval(
            "window.__states = []; new MutationObserver(() => "
            "window.__states.push(document.getElementById('relay-app')"
            ".dataset.state)).observe(document.getElementById('relay-app'), "
            "{attributes: true, attributeFilter: ['data-state']})")
        gw.stop()
        gw.start("gw")
        states = await page.wait_for(
            "(s => s.length > 1 && s[s.length - 1] === 'paired' && s)"
            "(window.__states)", 60, "the page to pair again")
        check("after a gateway restart the page pairs again by itself",
              states[0] != "paired" and
              await page.eval("document.getElementById('pair-form').hidden"),
              states)
        status = await page.eval("relay.fetch('/about.html').then(r => r.status)")
        check("and the share answers", status == 200, status)


async def self_hosted(browser_ws, link, code):
    """The share's link pointing at a copy of the page on another origin."""
    async with websockets.connect(browser_ws, max_size=64 << 20) as ws:
        page = await new_page(ws)
        await page.call("Page.navigate", {"url": link})
        state = ("(document.getElementById('relay-app') || "
                 "{dataset: {}}).dataset.state")
        await page.wait_for(f"{state} === 'connected'", 30,
                            "the self-hosted page to reach the device")
        await page.eval(f"document.getElementById('code').value = '{code}';"
                        "document.getElementById('pair-button').click()")
        await page.wait_for(f"{state} === 'paired'", 20, "pairing")
        title = await page.wait_for(FRAME_TEXT, 30, "the site's home page")
        check("a self-hosted copy of the page (--relay-client-url) works: "
              "paired, the site renders", title == f"Home {MARKER}", title)


def main():
    skip = skip_without_chromium()
    if skip is not None:
        return skip
    work = tempfile.mkdtemp(prefix="relay_browser_e2e.")
    os.chdir(work)
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    creds = issue(BUILD, "cam")
    creds_self = issue(BUILD, "cam-self")
    grpc, http_port = free_port(), free_port()
    web_tap = Tap(http_port)
    # The link names the tap's port: the browser goes through it.
    gw = Gateway(BUILD, grpc, http_port, free_port(),
                 ["--public-port", str(web_tap.port)])
    gw.start("gw")
    grpc_tap = Tap(grpc)
    procs = [share(BUILD, "cam", grpc_tap.port, site.server_address[1], creds)]
    try:
        link, code = share_link("cam")
        _, _, key, _ = parse_link(link)
        check("the link leads through the tap",
              f"127.0.0.1:{web_tap.port}/relay/#" in link, link)
        browser_ws = launch(procs, os.path.join(work, "profile"))
        asyncio.run(asyncio.wait_for(drive(browser_ws, link, code, gw), 240))
        # A copy of the page on another origin, as README "Encrypted
        # shares" says to host it.
        pages = os.path.join(work, "pages", "relay")
        os.makedirs(pages)
        static = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(
                http.server.SimpleHTTPRequestHandler,
                directory=os.path.join(work, "pages")))
        threading.Thread(target=static.serve_forever, daemon=True).start()
        procs.append(share(
            BUILD, "cam-self", grpc_tap.port, site.server_address[1],
            creds_self, ["--relay-client-url",
            f"http://127.0.0.1:{static.server_address[1]}/relay/"]))
        self_link, self_code = share_link("cam-self")
        integrity = read_line("cam-self.out", r"^Client script:", 5).split()[-1]
        client = os.path.join(SOURCE, "httpfront", "relay_client")
        for name in ("relay.js", "sw.js", "relay.css"):
            shutil.copy(os.path.join(client, name), pages)
        with open(os.path.join(client, "index.html")) as f:
            html = f.read().replace("{{RELAY_JS_INTEGRITY}}", integrity)
        with open(os.path.join(pages, "index.html"), "w") as f:
            f.write(html)
        asyncio.run(asyncio.wait_for(
            self_hosted(browser_ws, self_link, self_code), 120))
        static.shutdown()
        with Site.lock:
            seen = set(Site.seen)
        check("the site served its pages to the share",
              {"/", "/about.html", "/gallery.html", "/css/site.css",
               "/big.bin"} <= seen, seen)
    finally:
        stop(procs)
        gw.stop()
        site.shutdown()
    secrets = {"the marker": MARKER.encode(), "the key": key,
               "the key (hex)": key.hex().encode(),
               "the key (base64url)": link.split("key=")[1].encode(),
               "the code": code.encode()}
    logs = b"".join(open(f, "rb").read() for f in ("gw.out", "gw.err"))
    with web_tap.lock, grpc_tap.lock:
        taps = {"the browser's link": bytes(web_tap.data),
                "the agent's link": bytes(grpc_tap.data),
                "the gateway's debug log": logs}
    check("the taps saw the 40 MiB of downloads go by",
          len(taps["the browser's link"]) > 40 << 20 and
          len(taps["the agent's link"]) > 40 << 20,
          {k: len(v) for k, v in taps.items()})
    for where, data in taps.items():
        for what, secret in secrets.items():
            check(f"{where} never holds {what}", secret not in data)
        leaked = [p for p in SITE_PATHS if p.encode() in data]
        check(f"{where} holds no path of the site", not leaked, leaked)
    if failures:
        print(f"{len(failures)} check(s) failed; files kept in {work}",
              file=sys.stderr)
        return 1
    print("relay_browser_e2e: 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
