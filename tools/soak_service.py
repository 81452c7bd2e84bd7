"""Local service for tools/soak.sh: deterministic bodies by seed.

GET /blob?size=N&seed=S   N bytes (Content-Length), random.Random(S).randbytes
GET /stream?size=N&seed=S the same bytes, chunked, in 64 KiB pieces
POST /sha256              the hex SHA-256 of the request body (Content-Length
                          or chunked), read in pieces, never whole
Prints "port N" once listening.
"""
import hashlib
import http.server
import random
import sys
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        size = int(q.get("size", ["0"])[0])
        seed = int(q.get("seed", ["0"])[0])
        body = random.Random(seed).randbytes(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if url.path == "/stream":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self):
        digest = hashlib.sha256()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                self._hash(digest, size)
                self.rfile.readline()
        else:
            self._hash(digest, int(self.headers.get("Content-Length", "0")))
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hash(self, digest, size):
        while size > 0:
            piece = self.rfile.read(min(size, 65536))
            if not piece:
                raise ConnectionError("body cut short")
            digest.update(piece)
            size -= len(piece)

    def log_message(self, *unused):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("port", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
