#include "httpfront/request_head.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/headers.h"

namespace tunnel::httpfront {
namespace {

HeadRejection Reject(int status, absl::string_view code,
                     absl::string_view message) {
  return HeadRejection{status, std::string(code), std::string(message)};
}

HeadRejection BadRequest(absl::string_view message) {
  return Reject(400, "bad_request", message);
}

// Bytes a request target may hold: visible ASCII and obs-text, never SP,
// control characters or DEL.
bool IsTargetByte(unsigned char c) { return c > 0x20 && c != 0x7f; }

// Field values: visible characters, SP, HTAB, obs-text.
bool IsValueByte(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

HeadRejection CheckRequestLine(absl::string_view line) {
  // `line` is without its CRLF.
  size_t sp1 = line.find(' ');
  if (sp1 == absl::string_view::npos) {
    return BadRequest("the request line must be METHOD TARGET HTTP/1.1");
  }
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == absl::string_view::npos ||
      line.find(' ', sp2 + 1) != absl::string_view::npos) {
    return BadRequest("the request line must be METHOD TARGET HTTP/1.1");
  }
  absl::string_view method = line.substr(0, sp1);
  absl::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  absl::string_view version = line.substr(sp2 + 1);
  if (!common::IsValidHeaderName(method)) {  // a method is a token too
    return BadRequest("the method is not a token");
  }
  if (target.empty()) return BadRequest("the request target is empty");
  for (unsigned char c : target) {
    if (!IsTargetByte(c)) {
      return BadRequest("the request target holds a control character");
    }
  }
  if (version == "HTTP/1.1" || version == "HTTP/1.0") {
    // The methods the front door routes. httplib reads the body of any
    // other (e.g. PRI) whole into memory before refusing it, whatever
    // --max-request-body says, so they stop here.
    static constexpr absl::string_view kRouted[] = {
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (absl::string_view m : kRouted) {
      if (method == m) return {};
    }
    return Reject(501, "method_not_implemented",
                  "the method is not one of GET, HEAD, POST, PUT, PATCH, "
                  "DELETE, OPTIONS");
  }
  if (version.size() == 8 && absl::StartsWith(version, "HTTP/") &&
      absl::ascii_isdigit(version[5]) && version[6] == '.' &&
      absl::ascii_isdigit(version[7])) {
    return Reject(505, "http_version_not_supported",
                  "this gateway speaks HTTP/1.1 and HTTP/1.0");
  }
  return BadRequest("the protocol version is not HTTP/1.x");
}

HeadRejection CheckHeaderLine(absl::string_view line) {
  // `line` is without its CRLF.
  if (line.size() + 2 > kMaxHeaderLineBytes) {
    return Reject(
        431, "request_header_too_large",
        absl::StrCat("a header line is over ", kMaxHeaderLineBytes, " bytes"));
  }
  if (line[0] == ' ' || line[0] == '\t') {
    return BadRequest("folded header lines (obs-fold) are not accepted");
  }
  size_t colon = line.find(':');
  if (colon == absl::string_view::npos) {
    return BadRequest("a header line has no colon");
  }
  if (!common::IsValidHeaderName(line.substr(0, colon))) {
    return BadRequest("a header name is empty or not a token");
  }
  for (unsigned char c : line.substr(colon + 1)) {
    if (!IsValueByte(c)) {
      return BadRequest("a header value holds a control character");
    }
  }
  return {};
}

}  // namespace

size_t FindHeadEnd(absl::string_view buf) {
  for (size_t i = buf.find('\n'); i != absl::string_view::npos;
       i = buf.find('\n', i + 1)) {
    if (i + 1 < buf.size() && buf[i + 1] == '\n') return i + 2;
    if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
      return i + 3;
    }
  }
  return absl::string_view::npos;
}

HeadRejection CheckRequestHead(absl::string_view head) {
  bool first = true;
  while (!head.empty()) {
    size_t lf = head.find('\n');
    if (lf == absl::string_view::npos || lf == 0 || head[lf - 1] != '\r') {
      return BadRequest("every line of the head must end with CRLF");
    }
    absl::string_view line = head.substr(0, lf - 1);
    head.remove_prefix(lf + 1);
    if (line.find('\r') != absl::string_view::npos) {
      return BadRequest("a line of the head holds a bare CR");
    }
    if (first) {
      if (line.size() + 2 > kMaxRequestLineBytes) {
        return Reject(414, "uri_too_long",
                      absl::StrCat("the request line is over ",
                                   kMaxRequestLineBytes, " bytes"));
      }
      if (HeadRejection r = CheckRequestLine(line); r.status != 0) return r;
      first = false;
      continue;
    }
    if (line.empty()) {
      if (!head.empty()) return BadRequest("bytes after the end of the head");
      return {};
    }
    if (HeadRejection r = CheckHeaderLine(line); r.status != 0) return r;
  }
  return BadRequest("the head has no empty line");
}

HeadRejection HeadTooLarge(absl::string_view buf, size_t limit) {
  size_t lf = buf.find('\n');
  if (lf == absl::string_view::npos ? buf.size() > kMaxRequestLineBytes
                                    : lf + 1 > kMaxRequestLineBytes) {
    return Reject(414, "uri_too_long",
                  absl::StrCat("the request line is over ",
                               kMaxRequestLineBytes, " bytes"));
  }
  return Reject(431, "request_header_too_large",
                absl::StrCat("the request head is over ", limit, " bytes"));
}

std::string RejectionResponse(const HeadRejection& r,
                              absl::string_view extra_headers) {
  absl::string_view reason;
  switch (r.status) {
    case 429:
      reason = "Too Many Requests";
      break;
    case 414:
      reason = "URI Too Long";
      break;
    case 431:
      reason = "Request Header Fields Too Large";
      break;
    case 501:
      reason = "Not Implemented";
      break;
    case 505:
      reason = "HTTP Version Not Supported";
      break;
    default:
      reason = "Bad Request";
      break;
  }
  // Codes and messages are ours (no JSON escaping needed).
  std::string body =
      absl::StrCat("{\"error\":\"", r.code, "\",\"status\":", r.status,
                   ",\"message\":\"", r.message, "\"}\n");
  return absl::StrCat("HTTP/1.1 ", r.status, " ", reason,
                      "\r\nContent-Type: application/json\r\n"
                      "Content-Length: ",
                      body.size(), "\r\nX-Tunnel-Error: ", r.code,
                      "\r\nCache-Control: no-store\r\n", extra_headers,
                      "Connection: close\r\n\r\n", body);
}

}  // namespace tunnel::httpfront
