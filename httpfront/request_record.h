// One visitor request as the metrics and the access log see it.
//
// Each visitor connection owns one (a connection serves one request at a
// time): the setup hook starts it, the handler fills it in, httplib's logger
// adds the status it wrote, and the request-done hook finishes it (even when
// httplib answered on its own, e.g. 400 for a malformed request).
//
// Threads: the connection's loop thread and its fibers (which never run at
// once); `in` and `out` are atomics only for readers elsewhere.
#ifndef TUNNEL_HTTPFRONT_REQUEST_RECORD_H_
#define TUNNEL_HTTPFRONT_REQUEST_RECORD_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "common/metrics.h"
#include "httpfront/rate_limits.h"

namespace tunnel::httpfront {

struct RequestRecord {
  bool started = false;  // setup hook ran (the head parsed)
  bool logged = false;   // httplib wrote a response
  absl::Time start;
  std::string request_id;
  std::string method;
  std::string remote;  // visitor IP
  std::string path;    // raw target without the query (it may carry secrets)
  std::string slug;    // the tunnel asked for (the access log only)
  std::string tunnel;  // metrics label (a known tunnel's slug, or "")
  std::string error;
  // The visitor's own X-Request-Id when we replaced it (the access log).
  std::string incoming_request_id;
  int status = 0;          // set by the handler for upgrades (101)
  int handled_status = 0;  // res.status when the handler returned
  int logged_status = 0;   // what httplib wrote
  bool cut = false;        // the response body broke off
  // The handler read the request body to its end (see the with_body route).
  bool body_read = false;
  // The service's response had no Content-Type (httplib must not add one).
  bool no_content_type = false;
  // The tunnel limiter's admission, held until the request is over.
  RateLimiter::Slot* slot = nullptr;
  // Per-tunnel byte counters, set once the stream is open; an upgrade's
  // second fiber adds to them too.
  common::Counter* bytes_in = nullptr;
  common::Counter* bytes_out = nullptr;
  std::atomic<uint64_t> in{0};
  std::atomic<uint64_t> out{0};

  void AddIn(size_t n) {
    in.fetch_add(n, std::memory_order_relaxed);
    if (bytes_in != nullptr) bytes_in->Increment(n);
  }
  void AddOut(size_t n) {
    out.fetch_add(n, std::memory_order_relaxed);
    if (bytes_out != nullptr) bytes_out->Increment(n);
  }
  void Reset() {
    started = logged = cut = body_read = no_content_type = false;
    request_id.clear();
    method.clear();
    remote.clear();
    path.clear();
    slug.clear();
    tunnel.clear();
    error.clear();
    incoming_request_id.clear();
    status = handled_status = logged_status = 0;
    bytes_in = bytes_out = nullptr;
    slot = nullptr;
    in = 0;
    out = 0;
  }
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_REQUEST_RECORD_H_
