#include "httpfront/error_pages.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "httpfront/front_server.h"
#include "server/tunnel_router.h"

namespace tunnel::httpfront {

std::string HtmlEscape(absl::string_view s) {
  return absl::StrReplaceAll(
      s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

std::string JsonEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += ' ';
        } else {
          out += c;
        }
    }
  }
  return out;
}

// The gateway's own error answer: a small HTML page for browsers, JSON for
// everything else. X-Tunnel-Error names the case for scripts and logs.
void SetError(const httplib::Request& req, httplib::Response& res, int status,
              absl::string_view code, absl::string_view message) {
  if (RequestRecord* r = FrontServer::CurrentRecord()) {
    r->error = std::string(code);
  }
  res.status = status;
  res.set_header("X-Tunnel-Error", std::string(code));
  res.set_header("Cache-Control", "no-store");
  if (absl::StrContains(req.get_header_value("Accept"), "text/html")) {
    res.set_content(
        absl::StrCat("<!doctype html><html><head><meta charset=\"utf-8\">"
                     "<title>",
                     status, " ", HtmlEscape(code), "</title></head><body><h1>",
                     status, "</h1><p>", HtmlEscape(message),
                     "</p><hr><small>tunnel gateway</small></body></html>\n"),
        "text/html; charset=utf-8");
  } else {
    res.set_content(absl::StrCat("{\"error\":\"", JsonEscape(code),
                                 "\",\"status\":", status, ",\"message\":\"",
                                 JsonEscape(message), "\"}\n"),
                    "application/json");
  }
}

// Visitor status for a stream error (see server/tunnel_router.h).
void SetStreamError(const httplib::Request& req, httplib::Response& res,
                    const absl::Status& s, absl::Duration retry_after) {
  if (server::IsLocalServiceUnhealthy(s)) {
    SetError(req, res, 503, "local_service_unhealthy", s.message());
    res.set_header("Retry-After",
                   absl::StrCat(absl::ToInt64Seconds(retry_after)));
    return;
  }
  switch (s.code()) {
    case absl::StatusCode::kNotFound:
      SetError(req, res, 404, "tunnel_not_found", s.message());
      break;
    case absl::StatusCode::kUnavailable:
      SetError(req, res, 502, "agent_offline", s.message());
      res.set_header("Retry-After",
                     absl::StrCat(absl::ToInt64Seconds(retry_after)));
      break;
    case absl::StatusCode::kFailedPrecondition:
      SetError(req, res, 502, "local_service_unreachable", s.message());
      break;
    case absl::StatusCode::kDeadlineExceeded:
      SetError(req, res, 504, "agent_timeout", s.message());
      break;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kCancelled:
      SetError(req, res, 503, "gateway_busy", s.message());
      break;
    default:
      SetError(req, res, 502, "agent_error", s.message());
      break;
  }
}

// 401: a form that posts the code back to `back` for browsers, JSON
// (SetError) for everything else.
void Challenge(const httplib::Request& req, httplib::Response& res,
               const std::string& back, absl::string_view message,
               absl::string_view code) {
  SetError(req, res, 401, code, message);
  if (!absl::StrContains(req.get_header_value("Accept"), "text/html")) {
    return;
  }
  res.set_content(
      absl::StrCat("<!doctype html><html><head><meta charset=\"utf-8\">"
                   "<meta name=\"viewport\" content=\"width=device-width\">"
                   "<title>Access code required</title></head><body>"
                   "<h1>Access code required</h1><p>",
                   HtmlEscape(message), "</p><form method=\"post\" action=\"",
                   HtmlEscape(back), "\"><input type=\"password\" name=\"",
                   kAccessCodeField,
                   "\" autofocus required autocomplete=\"off\"> "
                   "<button type=\"submit\">Enter</button></form>"
                   "<hr><small>tunnel gateway</small></body></html>\n"),
      "text/html; charset=utf-8");
}

}  // namespace tunnel::httpfront
