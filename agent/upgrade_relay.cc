#include "agent/upgrade_relay.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/envelopes.h"
#include "common/headers.h"
#include "common/socket_io.h"

namespace tunnel::agent {

using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

std::optional<UpgradedConnection> UpgradeHandshake(
    const std::shared_ptr<AgentStream>& s, StreamSender& out,
    absl::Duration timeout) {
  const LocalTarget& t = *s->target;
  Inspector::Capture* capture = s->capture.get();
  // Tells the gateway, and the inspector, why the stream ends.
  auto fail = [&](TunnelClose::Reason reason, const std::string& why) {
    out.SendClose(s->id, reason, why);
    if (capture != nullptr) {
      capture->Finish(Inspector::Outcome::kLocalError, why);
    }
  };
  auto unreachable = [&](absl::string_view why) {
    fail(TunnelClose::LOCAL_UNREACHABLE,
         absl::StrCat("the agent cannot reach its local service at ", t.url,
                      " (", why, ")"));
  };
  if (t.scheme != "http") {
    fail(TunnelClose::LOCAL_ERROR,
         "upgrades are relayed to http:// services only");
    return std::nullopt;
  }
  absl::StatusOr<int> fd =
      common::ConnectTcp(t.host, t.port, absl::Seconds(10));
  if (!fd.ok()) {
    unreachable(fd.status().message());
    return std::nullopt;
  }
  {
    absl::MutexLock lock(&s->mu);
    if (s->cancelled) {
      ::close(*fd);
      return std::nullopt;
    }
    s->raw_fd = *fd;
  }
  auto finish = [&] {
    absl::MutexLock lock(&s->mu);
    s->raw_fd = -1;
    ::close(*fd);
  };
  const tunnel::v1::TunnelRequest& head = s->head;
  std::string request = absl::StrCat(head.method(), " ", t.base_path,
                                     head.path(), " HTTP/1.1\r\n");
  for (const auto& h : head.headers()) {
    absl::StrAppend(&request, h.name(), ": ", h.value(), "\r\n");
  }
  request += "\r\n";
  if (!common::WriteAll(*fd, request, timeout)) {
    unreachable("writing the request failed");
    finish();
    return std::nullopt;
  }
  // Response head, up to 64 KiB.
  std::string in;
  size_t head_end = std::string::npos;
  char buf[64 * 1024];
  while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = common::ReadSome(*fd, buf, sizeof(buf), timeout);
    if (n <= 0 || in.size() + n > sizeof(buf)) {
      fail(TunnelClose::LOCAL_ERROR,
           absl::StrCat("the local service at ", t.url,
                        " sent no valid response to the upgrade"));
      finish();
      return std::nullopt;
    }
    in.append(buf, static_cast<size_t>(n));
  }
  Envelope e;
  auto* r = e.mutable_response();
  r->set_stream_id(s->id);
  int64_t content_length = -1;
  std::vector<absl::string_view> lines =
      absl::StrSplit(absl::string_view(in).substr(0, head_end), "\r\n");
  std::vector<absl::string_view> status_line =
      absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  int status = 0;
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &status) ||
      status < 100 || status > 599) {
    fail(TunnelClose::LOCAL_ERROR,
         "the local service sent an invalid status line");
    finish();
    return std::nullopt;
  }
  r->set_status(static_cast<uint32_t>(status));
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view name = lines[i].substr(0, colon);
    absl::string_view value =
        absl::StripAsciiWhitespace(lines[i].substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      (void)absl::SimpleAtoi(value, &content_length);
    }
    common::AddHeader(r->mutable_headers(), name, value);
  }
  std::string rest = in.substr(head_end + 4);
  if (capture != nullptr) capture->ResponseHead(status, r->headers());
  if (status != 101) {
    // Refused: an ordinary response, its body read by length or to EOF.
    common::StripHopByHop(r->mutable_headers());
    out.SendHead(std::move(e));
    uint64_t left = content_length >= 0 ? static_cast<uint64_t>(content_length)
                                        : UINT64_MAX;
    bool ok = true;
    if (!rest.empty()) {
      rest.resize(std::min<uint64_t>(rest.size(), left));
      left -= rest.size();
      if (capture != nullptr) capture->ResponseBody(rest);
      ok = out.SendBody(*s, rest.data(), rest.size());
    }
    while (ok && left > 0) {
      ssize_t n = common::ReadSome(
          *fd, buf, std::min<uint64_t>(sizeof(buf), left), timeout);
      if (n <= 0) {
        ok = content_length < 0 && n == 0;  // EOF ends an unsized body
        break;
      }
      left -= static_cast<uint64_t>(n);
      if (capture != nullptr) {
        capture->ResponseBody(absl::string_view(buf, static_cast<size_t>(n)));
      }
      ok = out.SendBody(*s, buf, static_cast<size_t>(n));
    }
    if (ok) {
      out.SendEnd(s->id);
      if (capture != nullptr) capture->Finish(Inspector::Outcome::kComplete);
    } else {
      fail(TunnelClose::LOCAL_ERROR,
           "the local service broke off its response");
    }
    finish();
    return std::nullopt;
  }
  out.SendHead(std::move(e));
  // The connection now belongs to the caller (and s->raw_fd still lets a
  // cancel shut it down until the relay closes it).
  return UpgradedConnection{*fd, std::move(rest)};
}

}  // namespace tunnel::agent
