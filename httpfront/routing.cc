#include "httpfront/routing.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunnel::httpfront {

std::string HostWithoutPort(absl::string_view host) {
  host = absl::StripAsciiWhitespace(host);
  if (absl::StartsWith(host, "[")) {
    size_t end = host.find(']');
    if (end != absl::string_view::npos) host = host.substr(0, end + 1);
  } else if (size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    host = host.substr(0, colon);
  }
  std::string out = absl::AsciiStrToLower(host);
  if (!out.empty() && out.back() == '.') out.pop_back();  // FQDN form
  return out;
}

std::optional<Route> ResolveRoute(absl::string_view host,
                                  absl::string_view target,
                                  absl::string_view domain) {
  std::string h = HostWithoutPort(host);
  std::string suffix = absl::StrCat(".", absl::AsciiStrToLower(domain));
  if (!domain.empty() && h.size() > suffix.size() &&
      absl::EndsWith(h, suffix)) {
    std::string label = h.substr(0, h.size() - suffix.size());
    if (label.find('.') == std::string::npos) {
      return Route{label, std::string(target), "", false};
    }
  }
  if (!absl::StartsWith(target, "/t/")) return std::nullopt;
  absl::string_view rest = target.substr(3);
  size_t end = rest.find_first_of("/?");
  absl::string_view slug = rest.substr(0, end);
  if (slug.empty()) return std::nullopt;
  std::string upstream;
  const bool missing_slash = end == absl::string_view::npos || rest[end] == '?';
  if (end == absl::string_view::npos) {
    upstream = "/";
  } else if (rest[end] == '?') {
    upstream = absl::StrCat("/", rest.substr(end));
  } else {
    upstream = std::string(rest.substr(end));
  }
  return Route{std::string(slug), std::move(upstream),
               absl::StrCat("/t/", slug), missing_slash};
}

}  // namespace tunnel::httpfront
