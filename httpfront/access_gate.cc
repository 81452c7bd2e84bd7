#include "httpfront/access_gate.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/hmac_auth.h"
#include "common/random.h"

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

AccessCookieSigner::AccessCookieSigner() : key_(common::RandomBytes(32)) {}

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

}  // namespace tunnel::httpfront
