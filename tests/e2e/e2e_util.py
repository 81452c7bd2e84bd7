"""What the Python process-level tests share: checks that are counted, and
bounded waits (never a bare sleep as synchronisation)."""
import re
import subprocess
import sys
import time

failures = []


def check(what, ok, detail=""):
    """Counts one check; a failure is printed with `detail` and remembered."""
    if ok:
        print(f"ok: {what}")
    else:
        print(f"FAIL: {what} {detail}", file=sys.stderr)
        failures.append(what)


def wait_until(predicate, seconds, what):
    """Polls `predicate` until it returns a truthy value (returned) or the
    deadline passes (TimeoutError naming `what`)."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.02)


def read_line(path, pattern, seconds):
    """The first line of `path` matching `pattern`, waiting (bounded) for it."""
    def find():
        try:
            with open(path) as f:
                for line in f:
                    if re.search(pattern, line):
                        return line.strip()
        except FileNotFoundError:
            pass
        return None

    return wait_until(find, seconds, f"/{pattern}/ in {path}")


def stop(procs):
    """Terminates every process still running (killed after 20 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
