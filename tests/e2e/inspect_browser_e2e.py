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
import http.client
import json
import os
import sys

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chromium import launch, new_page, skip_without_chromium  # noqa: E402
from e2e_util import check  # noqa: E402
from inspect_setup import Handler, run, start_tunnel  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
ARTIFACTS = os.path.join(BUILD, "test-artifacts")


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
        page = await new_page(ws)
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
    skip = skip_without_chromium()
    if skip is not None:
        return skip
    return run("inspect_browser_e2e", test)


def test(procs, svc_port):
    http_addr, inspector = start_tunnel(BUILD, svc_port, procs)
    browser_ws = launch(procs, os.path.join(os.getcwd(), "profile"))
    asyncio.run(asyncio.wait_for(drive(browser_ws, inspector, http_addr), 120))


if __name__ == "__main__":
    sys.exit(main())
