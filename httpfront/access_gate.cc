#include "httpfront/access_gate.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/access_code.h"
#include "common/hmac_auth.h"
#include "common/password_hash.h"
#include "common/random.h"
#include "httpfront/error_pages.h"
#include "httpfront/translate.h"

namespace tunnel::httpfront {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string FormDecode(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

AccessCookieSigner::AccessCookieSigner(std::string key)
    : key_(key.empty() ? common::RandomBytes(32) : std::move(key)) {}

std::string AccessCookieSigner::Mac(
    int64_t expires, absl::string_view slug,
    const tunnel::v1::AccessCodeHash& code) const {
  return common::HmacSha256(
      key_, absl::StrCat("tunnel-access-v1\n", expires, "\n", slug, "\n",
                         code.iterations(), "\n",
                         common::Base64UrlEncode(code.salt()), "\n",
                         common::Base64UrlEncode(code.hash())));
}

std::string AccessCookieSigner::Issue(absl::string_view slug,
                                      const tunnel::v1::AccessCodeHash& code,
                                      absl::Time expires) const {
  int64_t e = absl::ToUnixSeconds(expires);
  return absl::StrCat(e, ".", common::Base64UrlEncode(Mac(e, slug, code)));
}

bool AccessCookieSigner::Valid(absl::string_view cookie, absl::string_view slug,
                               const tunnel::v1::AccessCodeHash& code,
                               absl::Time now) const {
  size_t dot = cookie.find('.');
  if (dot == absl::string_view::npos) return false;
  int64_t e = 0;
  if (!absl::SimpleAtoi(cookie.substr(0, dot), &e)) return false;
  if (absl::FromUnixSeconds(e) <= now) return false;
  std::optional<std::string> mac =
      common::Base64UrlDecode(cookie.substr(dot + 1));
  if (!mac.has_value()) return false;
  std::string want = Mac(e, slug, code);
  return mac->size() == want.size() &&
         CRYPTO_memcmp(mac->data(), want.data(), want.size()) == 0;
}

bool TakeQueryParam(std::string* target, absl::string_view name,
                    std::string* value) {
  size_t q = target->find('?');
  if (q == std::string::npos) return false;
  std::vector<std::string> kept;
  bool found = false;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(*target).substr(q + 1), '&')) {
    absl::string_view key = part.substr(0, part.find('='));
    if (FormDecode(key) == name) {
      found = true;
      size_t eq = part.find('=');
      *value =
          eq == absl::string_view::npos ? "" : FormDecode(part.substr(eq + 1));
    } else {
      kept.emplace_back(part);
    }
  }
  if (!found) return false;
  std::string path = target->substr(0, q);
  // Drop empty pieces left by "a=1&&b" only if everything else went.
  bool all_empty = std::all_of(kept.begin(), kept.end(),
                               [](const std::string& k) { return k.empty(); });
  *target =
      all_empty ? path : absl::StrCat(path, "?", absl::StrJoin(kept, "&"));
  return true;
}

bool FormField(absl::string_view body, absl::string_view name,
               std::string* value) {
  bool found = false;
  for (absl::string_view part : absl::StrSplit(body, '&')) {
    size_t eq = part.find('=');
    if (FormDecode(part.substr(0, eq)) != name) continue;
    found = true;
    *value =
        eq == absl::string_view::npos ? "" : FormDecode(part.substr(eq + 1));
  }
  return found;
}

std::string TakeCookie(absl::string_view cookie_header, absl::string_view name,
                       std::vector<std::string>* values) {
  std::vector<absl::string_view> kept;
  for (absl::string_view part : absl::StrSplit(cookie_header, ';')) {
    absl::string_view p = absl::StripAsciiWhitespace(part);
    if (p.empty()) continue;
    size_t eq = p.find('=');
    if (eq != absl::string_view::npos &&
        absl::StripAsciiWhitespace(p.substr(0, eq)) == name) {
      values->emplace_back(absl::StripAsciiWhitespace(p.substr(eq + 1)));
    } else {
      kept.push_back(p);
    }
  }
  return absl::StrJoin(kept, "; ");
}

VerifiedCredentials::VerifiedCredentials(absl::Duration ttl, size_t capacity)
    : ttl_(ttl), capacity_(capacity), key_(common::RandomBytes(32)) {}

std::string VerifiedCredentials::Key(absl::string_view slug, uint64_t set_id,
                                     absl::string_view authorization) const {
  return common::HmacSha256(
      key_, absl::StrCat(slug, "\n", set_id, "\n", authorization));
}

bool VerifiedCredentials::Contains(absl::string_view slug, uint64_t set_id,
                                   absl::string_view authorization,
                                   absl::Time now) {
  if (ttl_ <= absl::ZeroDuration() || capacity_ == 0) return false;
  const std::string key = Key(slug, set_id, authorization);
  absl::MutexLock lock(&mu_);
  auto it = expiry_.find(key);
  if (it == expiry_.end()) return false;
  if (it->second <= now) {
    expiry_.erase(it);
    return false;
  }
  return true;
}

void VerifiedCredentials::Add(absl::string_view slug, uint64_t set_id,
                              absl::string_view authorization, absl::Time now) {
  if (ttl_ <= absl::ZeroDuration() || capacity_ == 0) return;
  std::string key = Key(slug, set_id, authorization);
  absl::MutexLock lock(&mu_);
  if (expiry_.size() >= capacity_ && !expiry_.contains(key)) {
    absl::erase_if(expiry_, [&](const auto& e) { return e.second <= now; });
    if (expiry_.size() >= capacity_) {
      auto nearest = std::min_element(
          expiry_.begin(), expiry_.end(),
          [](const auto& a, const auto& b) { return a.second < b.second; });
      expiry_.erase(nearest);
    }
  }
  expiry_[std::move(key)] = now + ttl_;
}

size_t VerifiedCredentials::size() const {
  absl::MutexLock lock(&mu_);
  return expiry_.size();
}

bool ParseBasicAuthorization(absl::string_view value, std::string* user,
                             std::string* password) {
  value = absl::StripAsciiWhitespace(value);
  constexpr absl::string_view kBasic = "basic ";
  if (!absl::StartsWithIgnoreCase(value, kBasic)) return false;
  std::optional<std::string> decoded = common::Base64Decode(
      absl::StripLeadingAsciiWhitespace(value.substr(kBasic.size())));
  if (!decoded.has_value()) return false;
  const size_t colon = decoded->find(':');
  if (colon == std::string::npos) return false;
  *user = decoded->substr(0, colon);
  *password = decoded->substr(colon + 1);
  return true;
}

AccessGate::AccessGate(const AccessGateOptions& options, FrontMetrics* metrics)
    : options_(options),
      metrics_(metrics),
      cookie_signer_(options.cookie_key),
      attempts_(options.attempts_per_minute),
      verified_(options.basic_auth_cache_ttl, options.basic_auth_cache_entries),
      basic_auth_grants_(metrics->access_grants->WithLabels({"basic_auth"})) {}

void AccessGate::Deny(absl::string_view reason) {
  metrics_->access_denials->WithLabels({std::string(reason)})->Increment();
}

bool AccessGate::TooManyAttempts(const httplib::Request& req,
                                 httplib::Response& res, const std::string& key,
                                 absl::Time now, absl::string_view code,
                                 absl::string_view message) {
  const absl::Duration wait = attempts_.Blocked(key, now);
  if (wait <= absl::ZeroDuration()) return false;
  Deny("rate_limited");
  SetError(req, res, 429, code, message);
  res.set_header(
      "Retry-After",
      absl::StrCat(absl::ToInt64Seconds(absl::Ceil(wait, absl::Seconds(1)))));
  return true;
}

bool AccessGate::Admit(const httplib::Request& req, httplib::Response& res,
                       const Route& route,
                       const tunnel::v1::AccessCodeHash& code,
                       const httplib::ContentReader* reader,
                       std::string* target, std::string* cookie_out,
                       bool* body_read) {
  const absl::Time now = absl::Now();
  std::string cookies;
  auto range = req.headers.equal_range("Cookie");
  for (auto it = range.first; it != range.second; ++it) {
    if (!cookies.empty()) cookies += "; ";
    cookies += it->second;
  }
  std::vector<std::string> ours;
  *cookie_out = TakeCookie(cookies, kAccessCookieName, &ours);
  std::string query_code;
  const bool has_query = TakeQueryParam(target, "code", &query_code);
  for (const std::string& c : ours) {
    if (cookie_signer_.Valid(c, route.slug, code, now)) {
      metrics_->access_grants->WithLabels({"cookie"})->Increment();
      return true;
    }
  }
  // Which code did the visitor present, and how?
  // The header first: reading a form body would consume what an API
  // client meant for the service.
  std::string presented;
  absl::string_view via;
  if (req.has_header(kAccessCodeHeader)) {
    presented = req.get_header_value(kAccessCodeHeader);
    via = "header";
  } else if (req.method == "POST" &&
             absl::StartsWithIgnoreCase(req.get_header_value("Content-Type"),
                                        "application/x-www-form-urlencoded")) {
    constexpr size_t kMaxForm = 4096;
    std::string body = req.body.substr(0, kMaxForm);
    if (reader != nullptr) {
      *body_read = (*reader)([&](const char* data, size_t len) {
        body.append(data, std::min(len, kMaxForm + 1 - body.size()));
        return body.size() <= kMaxForm;
      });
    }
    if (FormField(body, kAccessCodeField, &presented)) via = "form";
  }
  if (via.empty() && has_query) {
    presented = query_code;
    via = "query";
  }
  const std::string back = absl::StrCat(route.prefix, *target);
  if (via.empty()) {
    Deny(ours.empty() ? "code_required" : "bad_cookie");
    Challenge(req, res, back,
              "this tunnel needs an access code; ask whoever shared it");
    return false;
  }
  const std::string key = absl::StrCat(req.remote_addr, " ", route.slug);
  if (TooManyAttempts(req, res, key, now, "access_code_rate_limited",
                      "too many wrong access codes; wait and try again")) {
    return false;
  }
  bool matches = false;
  slow_work_.Run([&] { matches = common::AccessCodeMatches(code, presented); });
  if (!matches) {
    attempts_.Failed(key, now);
    Deny("wrong_code");
    Challenge(req, res, back, "wrong access code; try again",
              "access_code_invalid");
    return false;
  }
  metrics_->access_grants->WithLabels({std::string(via)})->Increment();
  if (via == "header") return true;  // API clients: no cookie, no redirect
  const int64_t ttl =
      std::max<int64_t>(1, absl::ToInt64Seconds(options_.cookie_ttl));
  const absl::Time expires = now + absl::Seconds(ttl);
  std::string cookie = absl::StrCat(
      kAccessCookieName, "=", cookie_signer_.Issue(route.slug, code, expires),
      "; Path=", route.prefix.empty() ? "/" : absl::StrCat(route.prefix, "/"),
      "; Max-Age=", ttl, "; Expires=",
      absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", expires,
                       absl::UTCTimeZone()),
      "; HttpOnly; SameSite=Lax");
  if (options_.scheme == "https") cookie += "; Secure";
  res.status = 303;
  res.set_header("Location", back);
  res.set_header("Set-Cookie", cookie);
  res.set_header("Cache-Control", "no-store");
  return false;
}

bool AccessGate::AdmitBasicAuth(const httplib::Request& req,
                                httplib::Response& res, const Route& route,
                                const server::BasicAuthUsers& users) {
  const absl::Time now = absl::Now();
  auto challenge = [&](absl::string_view code, absl::string_view message) {
    SetError(req, res, 401, code, message);
    // The slug is [a-z0-9-]: safe inside the quotes.
    res.set_header(
        "WWW-Authenticate",
        absl::StrCat("Basic realm=\"", route.slug, "\", charset=\"UTF-8\""));
    return false;
  };
  const std::string authorization = req.get_header_value("Authorization");
  std::string user;
  std::string password;
  if (authorization.empty() ||
      !absl::StartsWithIgnoreCase(
          absl::StripLeadingAsciiWhitespace(authorization), "basic ")) {
    Deny("basic_auth_required");
    return challenge("basic_auth_required",
                     "this tunnel needs a user name and password (HTTP "
                     "basic auth)");
  }
  if (verified_.Contains(route.slug, users.id, authorization, now)) {
    basic_auth_grants_->Increment();
    return true;
  }
  const std::string key = absl::StrCat(req.remote_addr, " ", route.slug);
  if (TooManyAttempts(
          req, res, key, now, "basic_auth_rate_limited",
          "too many wrong user names or passwords; wait and try again")) {
    return false;
  }
  bool matches = false;
  if (ParseBasicAuthorization(authorization, &user, &password)) {
    const common::BasicAuthUser* found = nullptr;
    for (const common::BasicAuthUser& u : users.users) {
      if (u.user == user) found = &u;
    }
    // An unknown user costs the same slow hash as a known one, so timing
    // does not tell which names exist.
    const common::BasicAuthUser* timed =
        found != nullptr ? found
                         : (users.users.empty() ? nullptr : &users.users[0]);
    if (timed != nullptr) {
      metrics_->basic_auth_hashes->Increment();
      slow_work_.Run([&] {
        matches =
            common::PasswordMatches(timed->hash, password) && found != nullptr;
      });
    }
  }
  if (!matches) {
    attempts_.Failed(key, now);
    Deny("wrong_password");
    return challenge("basic_auth_invalid",
                     "wrong user name or password; try again");
  }
  verified_.Add(route.slug, users.id, authorization, now);
  basic_auth_grants_->Increment();
  return true;
}

}  // namespace tunnel::httpfront
