"""Load for tools/soak.sh: many visitors checking every body they get.

Each request asks for a random size and seed; a 200 counts as correct only if
the body is complete and equals random.Random(seed).randbytes(size). Outcomes
are counted by kind; "wrong_body" and "silent_truncation" must stay zero.
One extra visitor downloads slowly (about --slow-rate bytes/s) the whole time.
Writes a JSON line of counters to --stats every second; runs --seconds.
"""
import argparse
import collections
import http.client
import json
import random
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slug", default="soak")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--max-size", type=int, default=2 * 1024 * 1024)
    p.add_argument("--slow-rate", type=int, default=1024 * 1024)
    p.add_argument("--stats", required=True)
    a = p.parse_args()

    counts = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + a.seconds

    def count(kind):
        with lock:
            counts[kind] += 1

    def one(rng, slow=False):
        size = a.max_size * 8 if slow else rng.randint(0, a.max_size)
        seed = rng.randint(0, 2**40)
        path = rng.choice(["blob", "stream"])
        conn = http.client.HTTPConnection(a.host, a.port, timeout=60)
        try:
            conn.request("GET", f"/t/{a.slug}/{path}?size={size}&seed={seed}")
            resp = conn.getresponse()
            if resp.status != 200:
                resp.read()
                count(f"http_{resp.status}")
                return
            chunks = []
            while True:
                piece = resp.read(65536 if not slow else 16384)
                if not piece:
                    break
                chunks.append(piece)
                if slow:
                    time.sleep(len(piece) / a.slow_rate)
            body = b"".join(chunks)
            declared = resp.getheader("Content-Length")
            if declared is not None and len(body) != int(declared):
                # http.client returns a short Content-Length body without
                # raising; the length header lets every client see the cut.
                count("truncated_detected")
            elif len(body) != size:
                count("silent_truncation")  # looked complete, was not
            elif body != random.Random(seed).randbytes(size):
                count("wrong_body")
            else:
                count("slow_ok" if slow else "ok")
        except http.client.IncompleteRead:
            count("truncated_detected")  # the visitor saw the cut
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            count("conn_" + type(e).__name__)
        finally:
            conn.close()

    def worker(i, slow=False):
        rng = random.Random(i * 7919 + int(time.time()))
        while time.monotonic() < stop:
            one(rng, slow)

    threads = [threading.Thread(target=worker, args=(i,))
               for i in range(a.threads)]
    threads.append(threading.Thread(target=worker, args=(-1, True)))
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        with lock:
            snapshot = dict(counts)
        with open(a.stats, "w") as f:
            json.dump(snapshot, f)
        time.sleep(1)
    with open(a.stats, "w") as f:
        json.dump(dict(counts), f)


if __name__ == "__main__":
    main()
