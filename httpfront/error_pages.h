// The gateway's own answers to visitors: a small HTML page for browsers,
// JSON for everything else, with X-Tunnel-Error naming the case for scripts
// and logs (docs/DESIGN.md, "Errors a visitor can get").
//
// Threads: pure functions, except that SetError notes the code in the
// calling fiber's request record (FrontServer::CurrentRecord).
#ifndef TUNNEL_HTTPFRONT_ERROR_PAGES_H_
#define TUNNEL_HTTPFRONT_ERROR_PAGES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "httplib.h"

namespace tunnel::httpfront {

// The form field a visitor types a tunnel's access code into.
inline constexpr char kAccessCodeField[] = "tunnel_access_code";

std::string HtmlEscape(absl::string_view s);
std::string JsonEscape(absl::string_view s);

// `status` with X-Tunnel-Error: `code`, Cache-Control: no-store, and the
// page or JSON saying `message`.
void SetError(const httplib::Request& req, httplib::Response& res, int status,
              absl::string_view code, absl::string_view message);

// The visitor's status for a stream error (server/tunnel_router.h): 404
// tunnel_not_found, 502 agent_offline (+ Retry-After), 502
// local_service_unreachable, 504 agent_timeout, 503 gateway_busy, 502
// agent_error.
void SetStreamError(const httplib::Request& req, httplib::Response& res,
                    const absl::Status& s, absl::Duration retry_after);

// 401 for a tunnel with an access code: for browsers a form that posts the
// code back to `back`, JSON (SetError) for everything else.
void Challenge(const httplib::Request& req, httplib::Response& res,
               const std::string& back, absl::string_view message,
               absl::string_view code = "access_code_required");

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_ERROR_PAGES_H_
