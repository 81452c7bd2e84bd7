// A strict check of a visitor's request head (request line + header fields)
// before cpp-httplib parses it. httplib 0.11.4 is lenient where a proxy must
// not be: it skips header lines without a colon or without CRLF, keeps NUL
// bytes and odd characters in names and values, grows an unbounded buffer
// for a request line, and after answering 400 reads the rest of the bad
// head as the next request. The front server runs this first and answers
// a bad head itself, then closes the connection.
//
// Threads: pure functions.
#ifndef TUNNEL_HTTPFRONT_REQUEST_HEAD_H_
#define TUNNEL_HTTPFRONT_REQUEST_HEAD_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::httpfront {

// httplib's compile-time limits (Debian's build): longer request lines get
// 414, longer header lines 400 from the library. We answer them first.
inline constexpr size_t kMaxRequestLineBytes = 8192;
inline constexpr size_t kMaxHeaderLineBytes = 8192;

// Why a head is refused: the status, the X-Tunnel-Error code and a message
// for the visitor. status 0: the head is fine.
struct HeadRejection {
  int status = 0;
  std::string code;
  std::string message;
};

// Length of the head at the start of `buf` through its empty line (a LF
// followed by LF or CRLF), or npos while it is incomplete.
size_t FindHeadEnd(absl::string_view buf);

// Checks a complete head as FindHeadEnd delimits it: request line
// `token SP target SP HTTP/1.x CRLF` (a well-formed other version: 505),
// then `token ":" value CRLF` lines without NUL or other control characters
// (tab allowed), no obs-fold, every line within the limits above (414 for
// the request line, 431 for a header line).
HeadRejection CheckRequestHead(absl::string_view head);

// For a head that did not end within `limit` bytes (`buf` holds what came):
// 414 if the request line alone is too long, else 431.
HeadRejection HeadTooLarge(absl::string_view buf, size_t limit);

// The whole response the connection loop sends itself for `r` (a refused
// head, a connection refused at a per-IP limit): JSON body, X-Tunnel-Error,
// `extra_headers` ("Name: value\r\n" lines), Connection: close.
std::string RejectionResponse(const HeadRejection& r,
                              absl::string_view extra_headers = "");

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_REQUEST_HEAD_H_
