#include "agent/replay.h"

#include <curl/curl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/headers.h"

namespace tunnel::agent {
namespace {

bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && !absl::StrContains("!#$%&'*+-.^_`|~", c)) {
      return false;
    }
  }
  return true;
}

struct Received {
  Inspector::Capture* capture = nullptr;
  int status = 0;
  common::HeaderList headers;
  bool head_recorded = false;
};

size_t OnHeader(char* data, size_t size, size_t n, void* ud) {
  auto* r = static_cast<Received*>(ud);
  const size_t len = size * n;
  if (common::ParseResponseHeadLine(absl::string_view(data, len), &r->status,
                                    &r->headers) ==
          common::ResponseHeadLine::kEnd &&
      r->status >= 200 && !r->head_recorded) {
    r->capture->ResponseHead(r->status, r->headers);
    r->head_recorded = true;
  }
  return len;
}

size_t OnBody(char* data, size_t size, size_t n, void* ud) {
  auto* r = static_cast<Received*>(ud);
  r->capture->ResponseBody(absl::string_view(data, size * n));
  return size * n;
}

}  // namespace

absl::Status ApplyReplayEdits(const tunnel::v1::ReplayRequest& edits,
                              Inspector::Original* o) {
  if (o->upgrade) {
    return absl::FailedPreconditionError(
        "an upgraded connection (WebSocket, ...) cannot be replayed");
  }
  if (edits.has_method()) {
    if (!IsToken(edits.method())) {
      return absl::InvalidArgumentError(
          absl::StrCat("method \"", edits.method(), "\" is not an HTTP token"));
    }
    o->method = edits.method();
  }
  if (edits.has_path()) {
    if (edits.path().empty() || edits.path()[0] != '/') {
      return absl::InvalidArgumentError("path must start with '/'");
    }
    for (char c : edits.path()) {
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError(
            "path must not hold spaces or control characters (encode them)");
      }
    }
    o->path = edits.path();
  }
  if (edits.headers_size() > 0 || edits.replace_headers()) {
    for (const tunnel::v1::Header& h : edits.headers()) {
      if (!common::IsValidHeaderName(h.name()) ||
          !common::IsValidHeaderValue(h.value())) {
        return absl::InvalidArgumentError(
            absl::StrCat("header \"", absl::CEscape(h.name()),
                         "\" is not a valid HTTP field"));
      }
    }
    common::HeaderList headers;
    for (const tunnel::v1::Header& h : edits.headers()) {
      tunnel::v1::HeaderField* f = headers.Add();
      f->set_name(h.name());
      f->set_value(h.value());
    }
    // A secret shown masked and left as it was: the captured value goes.
    for (tunnel::v1::HeaderField& h : headers) {
      if (!IsSecretHeader(h.name())) continue;
      for (const tunnel::v1::HeaderField& was : o->headers) {
        if (absl::EqualsIgnoreCase(was.name(), h.name()) &&
            MaskHeaderValue(was.name(), was.value()) == h.value()) {
          h.set_value(was.value());
          break;
        }
      }
    }
    o->headers = std::move(headers);
  }
  if (edits.has_body_text()) {
    o->body = edits.body_text();
    o->body_complete = true;
  } else if (edits.has_body()) {
    o->body = edits.body();
    o->body_complete = true;
  }
  if (!o->body_complete) {
    return absl::FailedPreconditionError(
        "only the first bytes of this request's body were kept "
        "(--inspect-max-body); send a body with the replay");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Replay(Inspector& inspector, const LocalTarget& target,
                                const Inspector::Original& request,
                                uint64_t replay_of,
                                const ReplayTimeouts& timeouts) {
  CURL* e = curl_easy_init();
  if (e == nullptr) return absl::InternalError("libcurl could not start");
  // Sent as recorded, but the body's framing is ours: its length is known.
  common::HeaderList headers = request.headers;
  common::RemoveHeader(&headers, "Content-Length");
  common::RemoveHeader(&headers, "Transfer-Encoding");
  common::RemoveHeader(&headers, "Expect");
  std::unique_ptr<Inspector::Capture> capture =
      // The slug as recorded: with --slug random the target has none.
      inspector.BeginReplay(request.slug.empty() ? target.slug : request.slug,
                            target.name, request.method, request.path, headers,
                            replay_of);
  const uint64_t id = capture->id();
  capture->RequestBody(request.body);
  capture->RequestEnd();

  std::string request_target = target.base_path + request.path;
  const std::string url =
      absl::StrCat(target.scheme, "://", target.host, ":", target.port, "/");
  curl_slist* list = nullptr;
  bool has_accept = false;
  bool has_type = false;
  for (const tunnel::v1::HeaderField& h : headers) {
    if (absl::EqualsIgnoreCase(h.name(), "Accept")) has_accept = true;
    if (absl::EqualsIgnoreCase(h.name(), "Content-Type")) has_type = true;
    const std::string line = h.value().empty()
                                 ? absl::StrCat(h.name(), ";")
                                 : absl::StrCat(h.name(), ": ", h.value());
    list = curl_slist_append(list, line.c_str());
  }
  // No fields of curl's own (a body would get a form Content-Type).
  if (!has_accept) list = curl_slist_append(list, "Accept:");
  if (!has_type) list = curl_slist_append(list, "Content-Type:");
  list = curl_slist_append(list, "Expect:");
  Received received;
  received.capture = capture.get();
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, request_target.c_str());
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &received);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &received);
  curl_easy_setopt(
      e, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(timeouts.connect)));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Seconds(absl::Ceil(timeouts.silence,
                                                          absl::Seconds(1))))));
  if (target.scheme == "https") {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  // A body (perhaps empty) where the request had one.
  const bool with_body =
      !request.body.empty() ||
      common::FindHeader(request.headers, "Content-Length") != nullptr ||
      common::FindHeader(request.headers, "Transfer-Encoding") != nullptr;
  if (request.method == "HEAD" && !with_body) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (request.method != "GET" || with_body) {
    // The method as recorded, whatever a body would make curl send.
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  if (with_body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
  }
  const CURLcode code = curl_easy_perform(e);
  if (code == CURLE_OK) {
    if (!received.head_recorded) {
      long status = 0;
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
      capture->ResponseHead(static_cast<int>(status), received.headers);
    }
    capture->Finish(Inspector::Outcome::kComplete);
  } else {
    capture->Finish(
        Inspector::Outcome::kLocalError,
        absl::StrCat("the local service at ", target.url,
                     " failed the replay (", curl_easy_strerror(code), ")"));
  }
  curl_slist_free_all(list);
  curl_easy_cleanup(e);
  return id;
}

}  // namespace tunnel::agent
