// HTTP ⇄ Envelope: how a visitor's request becomes a TunnelRequest on the
// agent's stream, and how the agent's TunnelResponse and body chunks become
// the visitor's response — the proxy's header rules in one place.
//
// Threads: pure functions, except the response body pump, which runs on the
// request's fiber (inside httplib's response writing).
#ifndef TUNNEL_HTTPFRONT_TRANSLATE_H_
#define TUNNEL_HTTPFRONT_TRANSLATE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "httpfront/request_record.h"
#include "httpfront/routing.h"
#include "httplib.h"
#include "server/tunnel_router.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::httpfront {

// The header API clients present a tunnel's access code in.
inline constexpr char kAccessCodeHeader[] = "X-Tunnel-Access-Code";

// The setup hook's part, before httplib routes the request: parks the
// fields httplib would act on under names that cannot come off the wire
// (it would gzip our pass-through responses for Accept-Encoding, gunzip
// uploads for Content-Encoding, and parse multipart/form-data uploads
// itself). The connection layer parked Range already ("(Range)").
void ParkRequestHeaders(httplib::Request& req);

// The visitor's name of a header field as httplib holds it: parked names
// give the original back; nullopt for names httplib added itself
// (REMOTE_ADDR, …), which are never forwarded.
std::optional<absl::string_view> VisitorHeaderName(absl::string_view name);

// False if a field holds CR, LF or NUL (httplib percent-decodes values, so
// a visitor's "%0D%0A" arrives as CR LF) or a name is not a token.
bool HeadersAreSafe(const httplib::Request& req);

// An HTTP/1.1 upgrade request: "Connection: upgrade" (a token of it) and an
// Upgrade header.
bool IsUpgradeRequest(const httplib::Request& req);

// A body httplib leaves on the connection for a content-reader route to
// read: chunked, or a non-zero Content-Length.
bool HasStreamedBody(const httplib::Request& req);

struct RequestHeadOptions {
  std::string scheme;      // X-Forwarded-Proto
  std::string request_id;  // X-Request-Id
  // A gated tunnel: our Cookie and X-Tunnel-Access-Code are not forwarded;
  // `cookie` (the rest of the visitor's cookies) is.
  bool gated = false;
  std::string cookie;
  // A tunnel with basic auth: the visitor's Authorization was for us.
  bool strip_authorization = false;
  bool upgrade = false;
  // No body follows the head (end_stream).
  bool end_stream = true;
};

// The TunnelRequest for `req` routed to `route` (its `target`, which the
// access gate may have changed): hop-by-hop fields stripped (an upgrade's
// Connection/Upgrade pair kept), X-Forwarded-For/-Proto/-Host/-Prefix,
// Forwarded and X-Request-Id set by us, the visitor's claims of those
// dropped.
tunnel::v1::TunnelRequest BuildRequestHead(const httplib::Request& req,
                                           const Route& route,
                                           const std::string& target,
                                           const RequestHeadOptions& o);

// Copies the service's response head into `res`: status, and the fields
// (HeaderFields and header block alike) that are safe (never one that
// could inject or smuggle a header line, no hop-by-hop field, no X-RateLimit-*
// when `drop_rate_limit`; Content-Length only for HEAD, httplib writes its
// own). Returns the Content-Length the service announced, or -1.
// `*has_content_type` says whether it sent one.
int64_t CopyResponseHead(const tunnel::v1::TunnelResponse& resp,
                         const httplib::Request& req, bool drop_rate_limit,
                         httplib::Response& res, bool* has_content_type);

// Waits for the response head while listening for the visitor (a visitor
// who leaves cancels the wait): DEADLINE_EXCEEDED naming `timeout` when it
// did not come in time, CANCELLED when the visitor went away.
absl::StatusOr<tunnel::v1::TunnelResponse> AwaitResponseHead(
    server::TunnelStream& stream, absl::Duration timeout);

// Streams the response body to the visitor chunk by chunk as it arrives:
// with `content_length` >= 0 as a fixed-length body, else chunked. A body
// that breaks off, runs over its length or over `max` bytes (counted in
// `too_large`) ends the visitor's connection without a clean end.
void StreamResponseBody(httplib::Response& res,
                        std::shared_ptr<server::TunnelStream> stream,
                        RequestRecord* record, int64_t content_length,
                        absl::Duration idle, uint64_t max,
                        common::Counter* too_large);

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_TRANSLATE_H_
