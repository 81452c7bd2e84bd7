// OriginLoop's own parts, shared by its two files: origin_loop.cc (the loop,
// the transfers and the libcurl client) and origin_native.cc (the native
// HTTP/1.1 client). Not for other users.
#ifndef TUNNEL_AGENT_ORIGIN_INTERNAL_H_
#define TUNNEL_AGENT_ORIGIN_INTERNAL_H_

#include <curl/curl.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/origin_loop.h"
#include "agent/response_parser.h"

namespace tunnel::agent {

// The native client's reads (one buffer for the loop) and the longest
// response head it accepts (libcurl's limit too).
inline constexpr size_t kReadBytes = 64 * 1024;
// A read for a response head while its body could not go on at once.
inline constexpr size_t kHeadReadBytes = 4 * 1024;
inline constexpr uint32_t kMaxResponseHeadBytes = 100 * 1024;

// Targets the native client serves: plain http at an address, or at
// "localhost" (always the loopback addresses, RFC 6761), so that connecting
// never waits for a name server. The rest (https, names) go to libcurl.
bool NativeTarget(const LocalTarget& t);

struct OriginLoop::Transfer {
  OriginLoop* loop = nullptr;
  std::shared_ptr<AgentStream> s;
  OriginSession session;
  CURL* easy = nullptr;
  // The request's fields for curl: their lines, NUL-terminated, in one
  // buffer, and list nodes pointing into it (curl only reads the list), so
  // a request's fields cost two allocations instead of three each.
  std::string header_lines;
  std::vector<curl_slist> header_list;
  bool launched = false;  // counted in running_
  bool in_multi = false;
  char error[CURL_ERROR_SIZE] = {};
  // Response.
  int status = 0;
  // The head as it arrives (moved into its envelope when complete).
  tunnel::v1::TunnelResponse response;
  bool head_sent = false;
  bool end_sent = false;
  bool origin_done = false;  // complete; body bytes may still wait for credit
  std::string pending;       // body bytes received, waiting for credit
  bool recv_paused = false;
  // Request body.
  std::string up;
  size_t up_off = 0;
  bool up_end = false;
  bool send_paused = false;
  // The native client's (NativeTarget): the connection it holds, the
  // request's head (kept to send again on a fresh connection if a kept one
  // turns out closed before any answer), and the response's parser.
  bool native = false;
  Conn* conn = nullptr;
  std::string request_head;
  bool chunked_up = false;    // the body goes in chunked coding
  bool body_taken = false;    // body bytes left the channel: no second try
  bool request_sent = false;  // every byte of the request is out
  bool retried = false;
  bool answered = false;  // a byte of the response arrived
  bool failing = false;   // FailSoon: ends at the loop's next round
  std::optional<ResponseParser> parser;

  // A parser for the next response head (the first, or the one after a
  // 1xx), adding to `response` and `pending`.
  void StartParser() {
    parser.emplace(response.mutable_header_block(), &pending,
                   kMaxResponseHeadBytes, s->head.method() == "HEAD");
  }
};

// A keep-alive HTTP/1.1 connection of the native client to one target:
// serving one transfer at a time, or idle in the pool (still watched, so a
// service closing it is noticed at once).
struct OriginLoop::Conn {
  int fd = -1;
  uint64_t serial = 0;
  std::string key;        // the pool it belongs to (target host:port)
  Transfer* t = nullptr;  // null while idle
  bool connecting = false;
  bool reused = false;                      // it answered a request before
  std::vector<sockaddr_storage> addresses;  // while connecting: left to try
  size_t address = 0;
  uint32_t events = 0;  // epoll interest (0: not registered)
  std::string in;       // received, not parsed yet (a head in pieces)
  std::string out;      // to send
  size_t out_off = 0;
  absl::Time deadline = absl::InfiniteFuture();
  absl::Time queued_at = absl::InfiniteFuture();  // its entry in deadlines_
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_ORIGIN_INTERNAL_H_
