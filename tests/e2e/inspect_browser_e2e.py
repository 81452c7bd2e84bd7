"""The inspector's page in real Chromium (Debian's `chromium`, headless),
driven over the DevTools protocol with Debian's python3-websockets, against
the real binaries (inspect_setup.py) on 127.0.0.1.

Checks what a user sees: the list fills live while requests arrive (no
reload), the filters work, a JSON request's detail shows its body
pretty-printed, the Replay button sends the request to the service again
and the replay appears marked as one. A screenshot is kept as a test
artifact: BUILD_DIR/test-artifacts/inspector.png (and inspector-detail.png).

Skipped (exit 77) when chromium is not installed, unless
TUNNEL_REQUIRE_BROWSER=1.
Usage: inspect_browser_e2e.py BUILD_DIR
"""
import asyncio
import base64
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import check  # noqa: E402
from inspect_setup import Handler, run, start_tunnel  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
ARTIFACTS = os.path.join(BUILD, "test-artifacts")
CHROMIUM = shutil.which("chromium")


class Page:
    """One tab over the DevTools protocol (flattened target sessions)."""

    def __init__(self, ws, session):
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1)

    async def call(self, method, params=None, session=True):
        mid = next(self.ids)
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if reply.get("id") == mid:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def eval(self, expression):
        # Values only: a DOM node would come back as {} (use !! for tests).
        r = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True,
            "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression, seconds, what):
        """Polls `expression` in the page until truthy (bounded)."""
        deadline = time.monotonic() + seconds
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {seconds}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def screenshot(self, path):
        r = await self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return os.path.getsize(path)


def visit(http_addr, method, path, body=None, headers=None):
    host, port = http_addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request(method, "/t/cam-01" + path, body=body, headers=headers or {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


async def drive(browser_ws, inspector, http_addr):
    async with websockets.connect(browser_ws, max_size=64 << 20) as ws:
        page = Page(ws, None)
        target = await page.call("Target.createTarget", {"url": "about:blank"},
                                 session=False)
        attached = await page.call("Target.attachToTarget", {
            "targetId": target["targetId"], "flatten": True}, session=False)
        page.session = attached["sessionId"]
        await page.call("Page.enable")
        await page.call("Emulation.setDeviceMetricsOverride", {
            "width": 1400, "height": 900, "deviceScaleFactor": 1,
            "mobile": False})
        await page.call("Page.navigate", {"url": inspector + "/"})
        await page.wait_for("document.getElementById('live') && "
                            "document.getElementById('live').textContent === 'live'",
                            20, "the page to follow the agent live")
        check("the page loads and goes live", True)
        # A marker that a reload would wipe out.
        await page.eval("window.__noReload = 1")
        check("no requests yet", await page.eval(
            "document.querySelectorAll('tr.row').length") == 0)

        rows = "document.querySelectorAll('tr.row').length"
        for i in range(1, 4):
            visit(http_addr, "GET", f"/page/{i}")
            n = await page.wait_for(f"{rows} >= {i} && {rows}", 10,
                                    f"row {i} to appear live")
            check(f"row {i} appears while requests arrive", n == i, n)
        doc = {"event": "invoice.paid", "amount": 4200, "lines": [1, 2]}
        visit(http_addr, "POST", "/api/hook", json.dumps(doc).encode(),
              {"Content-Type": "application/json"})
        visit(http_addr, "GET", "/missing-but-200")
        await page.wait_for(f"{rows} === 5", 10, "5 rows")
        check("the list filled without a reload",
              await page.eval("window.__noReload") == 1)
        top = await page.eval(
            "[...document.querySelectorAll('tr.row')].map(r => "
            "r.querySelector('.path').textContent)")
        summary = await page.wait_for(
            "(t => t.startsWith('5 of') && t)("
            "document.getElementById('summary').textContent)", 10,
            "the header to count 5 requests")
        check("the header says what is held and the bound",
              summary.startswith("5 of 500 requests held, memory ") and
              " of 64.0 MiB (bodies " in summary, repr(summary))
        check("newest first", top[0] == "/missing-but-200" and top[-1] == "/page/1",
              repr(top))

        # Filters: method POST leaves one row; clearing it brings all back.
        await page.eval("const m = document.getElementById('f-method');"
                        "m.value = 'POST'; m.dispatchEvent(new Event('input'));")
        check("filter by method", await page.eval(rows) == 1)
        await page.eval("const p = document.getElementById('f-path');"
                        "p.value = 'page'; document.getElementById('f-method').value = '';"
                        "p.dispatchEvent(new Event('input'));")
        check("filter by path text", await page.eval(rows) == 3)
        await page.eval("const q = document.getElementById('f-path');"
                        "q.value = ''; q.dispatchEvent(new Event('input'));")
        os.makedirs(ARTIFACTS, exist_ok=True)
        size = await page.screenshot(os.path.join(ARTIFACTS, "inspector.png"))
        check("screenshot of the list kept", size > 5000, size)

        # The JSON request's detail.
        await page.eval("[...document.querySelectorAll('tr.row')].find(r => "
                        "r.querySelector('.path').textContent === '/api/hook').click()")
        pretty = await page.wait_for(
            "(document.querySelector('[data-body=request] pre.body-json') || {}).textContent",
            10, "the request body in the detail view")
        check("the detail shows the JSON pretty-printed",
              pretty == json.dumps(doc, indent=2), repr(pretty))
        check("the response body too", await page.eval(
            "document.querySelector('[data-body=response] pre.body-json').textContent")
            == json.dumps(doc, indent=2))
        size = await page.screenshot(os.path.join(ARTIFACTS, "inspector-detail.png"))
        check("screenshot of the detail kept", size > 5000, size)

        # Replay from the page.
        with Handler.lock:
            before = [s for s in Handler.seen if s[1] == "/api/hook"]
        await page.eval("document.getElementById('replay').click()")
        await page.wait_for("!!document.querySelector(\"[data-field='replay of']\")",
                            20, "the replay's detail")
        with Handler.lock:
            after = [s for s in Handler.seen if s[1] == "/api/hook"]
        check("the Replay button sent the request again",
              len(after) == len(before) + 1 and after[-1][3] == before[-1][3] and
              after[-1][0] == "POST")
        await page.wait_for("!!document.querySelector('tr.row.replay')", 10,
                            "the replay in the list")
        check("the replay is listed, marked as one", await page.eval(
            "document.querySelectorAll('tr.row.replay').length") == 1)
        # Edit and replay: a new path and body.
        await page.eval("document.getElementById('edit-replay').click()")
        await page.wait_for("!!document.getElementById('edit-path')", 10,
                            "the edit form")
        await page.eval("document.getElementById('edit-path').value = '/api/edited';"
                        "document.getElementById('edit-body').value = '{\"x\":1}';"
                        "document.getElementById('replay-send').click()")
        await page.wait_for("[...document.querySelectorAll('tr.row .path')].some("
                            "p => p.textContent === '/api/edited')", 10,
                            "the edited replay in the list")
        with Handler.lock:
            edited = [s for s in Handler.seen if s[1] == "/api/edited"]
        check("the edited replay reached the service with its edits",
              len(edited) == 1 and edited[0][3] == b'{"x":1}', repr(edited))


def main():
    if CHROMIUM is None:
        if os.environ.get("TUNNEL_REQUIRE_BROWSER") == "1":
            print("FAIL: chromium is not installed (TUNNEL_REQUIRE_BROWSER=1)",
                  file=sys.stderr)
            return 1
        print("chromium not installed: skipped (tools/install-deps.sh "
              "installs it)")
        return 77
    return run("inspect_browser_e2e", test)


def test(procs, svc_port):
    http_addr, inspector = start_tunnel(BUILD, svc_port, procs)
    profile = os.path.join(os.getcwd(), "profile")
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--no-default-browser-check",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdout=open("chromium.out", "w"), stderr=open("chromium.err", "w"))
    procs.append(browser)
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 60
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if time.monotonic() > deadline or browser.poll() is not None:
            raise TimeoutError("chromium did not start its DevTools endpoint")
        time.sleep(0.05)
    port = open(port_file).read().split("\n")[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version",
                                timeout=10) as r:
        browser_ws = json.loads(r.read())["webSocketDebuggerUrl"]
    asyncio.run(asyncio.wait_for(drive(browser_ws, inspector, http_addr), 120))


if __name__ == "__main__":
    sys.exit(main())
