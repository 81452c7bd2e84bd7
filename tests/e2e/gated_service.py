"""A local HTTP service for process-level tests.

GET /gated parks the request until the file named by --release exists (so a
test can hold a request in flight across a signal); GET /not-modified
answers 304 without Content-Length, as nginx does; anything else answers
"ok" at once. Prints "port N" when listening and "held" for every parked
request.
"""
import argparse
import http.server
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", required=True)
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/not-modified"):
                # As nginx does: a 304 with no Content-Length and no body.
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
                return
            body = b"ok"
            if self.path.startswith("/gated"):
                print("held", flush=True)
                deadline = time.monotonic() + 60
                while not os.path.exists(args.release):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                body = b"released"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *unused):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("port", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
