#include "agent/local_target.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/slug.h"

namespace tunnel::agent {

absl::StatusOr<LocalTarget> ParseTarget(absl::string_view spec) {
  LocalTarget t;
  absl::string_view url = spec;
  size_t eq = spec.find('=');
  size_t scheme_sep = spec.find("://");
  if (eq != absl::string_view::npos &&
      (scheme_sep == absl::string_view::npos || eq < scheme_sep)) {
    t.name = std::string(spec.substr(0, eq));
    url = spec.substr(eq + 1);
    if (t.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--to \"", spec, "\": the name before '=' is empty"));
    }
  }
  t.url = std::string(url);
  absl::string_view rest = url;
  if (size_t p = rest.find("://"); p != absl::string_view::npos) {
    t.scheme = absl::AsciiStrToLower(rest.substr(0, p));
    rest = rest.substr(p + 3);
  } else {
    t.scheme = "http";
  }
  if (t.scheme != "http" && t.scheme != "https") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--to \"", spec, "\": scheme must be http or https, not ", t.scheme));
  }
  size_t slash = rest.find('/');
  absl::string_view hostport = rest.substr(0, slash);
  if (slash != absl::string_view::npos) {
    t.base_path = std::string(rest.substr(slash));
    while (!t.base_path.empty() && t.base_path.back() == '/') {
      t.base_path.pop_back();
    }
  }
  int default_port = t.scheme == "https" ? 443 : 80;
  int port_num;
  if (absl::SimpleAtoi(hostport, &port_num)) {
    // Just a port: the service on this device.
    t.host = "127.0.0.1";
    t.port = port_num;
  } else if (absl::StartsWith(hostport, "[")) {
    size_t close = hostport.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--to \"", spec, "\": unterminated IPv6 address"));
    }
    t.host = std::string(hostport.substr(1, close - 1));
    absl::string_view after = hostport.substr(close + 1);
    t.port = default_port;
    if (absl::StartsWith(after, ":") &&
        !absl::SimpleAtoi(after.substr(1), &t.port)) {
      t.port = -1;
    }
  } else if (size_t colon = hostport.rfind(':');
             colon != absl::string_view::npos) {
    t.host = std::string(hostport.substr(0, colon));
    if (!absl::SimpleAtoi(hostport.substr(colon + 1), &t.port)) t.port = -1;
  } else {
    t.host = std::string(hostport);
    t.port = default_port;
  }
  if (t.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--to \"", spec, "\": no host"));
  }
  if (t.port <= 0 || t.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--to \"", spec, "\": invalid port"));
  }
  return t;
}

absl::StatusOr<std::vector<LocalTarget>> ParseTargets(
    const std::vector<std::string>& specs, absl::string_view base_slug) {
  if (specs.empty()) {
    return absl::InvalidArgumentError(
        "no local service: pass --to http://127.0.0.1:PORT");
  }
  std::vector<LocalTarget> out;
  absl::flat_hash_set<std::string> names;
  for (const std::string& spec : specs) {
    absl::StatusOr<LocalTarget> t = ParseTarget(spec);
    if (!t.ok()) return t.status();
    if (!names.insert(t->name).second) {
      return absl::InvalidArgumentError(
          t->name.empty()
              ? std::string("only one --to may be unnamed; name the others "
                            "(--to NAME=URL)")
              : absl::StrCat("tunnel name \"", t->name, "\" is used twice"));
    }
    t->slug = t->name.empty() ? std::string(base_slug)
                              : absl::StrCat(absl::AsciiStrToLower(t->name),
                                             "-", base_slug);
    if (absl::Status s = common::CheckSlug(t->slug); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          s.message(), t->name.empty()
                           ? " (the default slug is the agent id; set --slug)"
                           : " (from the tunnel name; pick another name)"));
    }
    out.push_back(*std::move(t));
  }
  return out;
}

}  // namespace tunnel::agent
