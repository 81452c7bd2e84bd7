"""Real Chromium (Debian's `chromium`, headless) for the browser tests,
driven over the DevTools protocol with Debian's python3-websockets: start it
(`launch`), open a tab (`new_page`) and talk to it (`Page`).

A missing chromium skips the test (exit 77) unless TUNNEL_REQUIRE_BROWSER=1
(`skip_without_chromium`).
"""
import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

CHROMIUM = shutil.which("chromium")


def skip_without_chromium():
    """None when chromium is there; else the exit status to return."""
    if CHROMIUM is not None:
        return None
    if os.environ.get("TUNNEL_REQUIRE_BROWSER") == "1":
        print("FAIL: chromium is not installed (TUNNEL_REQUIRE_BROWSER=1)",
              file=sys.stderr)
        return 1
    print("chromium not installed: skipped (tools/install-deps.sh installs it)")
    return 77


def launch(procs, profile):
    """Starts chromium with its DevTools endpoint on a free port of
    127.0.0.1 (appended to `procs`); returns the browser's WebSocket URL."""
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
        return json.loads(r.read())["webSocketDebuggerUrl"]


async def new_page(ws, width=1400, height=900):
    """A new tab on the browser connection `ws`, attached (flattened)."""
    page = Page(ws, None)
    target = await page.call("Target.createTarget", {"url": "about:blank"},
                             session=False)
    attached = await page.call("Target.attachToTarget", {
        "targetId": target["targetId"], "flatten": True}, session=False)
    page.session = attached["sessionId"]
    await page.call("Page.enable")
    await page.call("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1,
        "mobile": False})
    return page


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
