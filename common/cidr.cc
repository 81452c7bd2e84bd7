#include "common/cidr.h"

#include <arpa/inet.h>

#include <cstring>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tunnel::common {

absl::StatusOr<IpAddress> ParseIpAddress(absl::string_view text) {
  const std::string s(text);
  IpAddress ip;
  in_addr v4;
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    std::memcpy(ip.bytes.data(), &v4, 4);
    return ip;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0,    0,
                                            0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(v6.s6_addr, kMapped, 12) == 0) {
      std::memcpy(ip.bytes.data(), v6.s6_addr + 12, 4);
      return ip;
    }
    ip.v6 = true;
    std::memcpy(ip.bytes.data(), v6.s6_addr, 16);
    return ip;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not an IPv4 or IPv6 address"));
}

namespace {

// Whether the first `prefix` bits of a and b agree.
bool SamePrefix(const std::array<uint8_t, 16>& a,
                const std::array<uint8_t, 16>& b, int prefix) {
  const int whole = prefix / 8;
  if (std::memcmp(a.data(), b.data(), static_cast<size_t>(whole)) != 0) {
    return false;
  }
  const int rest = prefix % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

std::string FormatIpAddress(const IpAddress& ip) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(ip.v6 ? AF_INET6 : AF_INET, ip.bytes.data(), buf, sizeof(buf));
  return buf;
}

bool Cidr::Contains(const IpAddress& ip) const {
  return ip.v6 == base.v6 && SamePrefix(ip.bytes, base.bytes, prefix);
}

std::string Cidr::ToString() const {
  return absl::StrCat(FormatIpAddress(base), "/", prefix);
}

absl::StatusOr<Cidr> ParseCidr(absl::string_view text) {
  const size_t slash = text.find('/');
  absl::StatusOr<IpAddress> ip = ParseIpAddress(text.substr(0, slash));
  if (!ip.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a CIDR range (e.g. 10.0.0.0/8, ",
                     "2001:db8::/32, or one address)"));
  }
  Cidr c;
  c.base = *ip;
  const int max = ip->v6 ? 128 : 32;
  c.prefix = max;
  if (slash != absl::string_view::npos &&
      (!absl::SimpleAtoi(text.substr(slash + 1), &c.prefix) || c.prefix < 0 ||
       c.prefix > max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\": the prefix length must be 0 to ", max));
  }
  // Host bits below the prefix: clear them, and refuse what was typed.
  Cidr network = c;
  for (int bit = c.prefix; bit < max; ++bit) {
    network.base.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  }
  if (network.base.bytes != c.base.bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" has host bits set; did you mean ",
                     network.ToString(), "?"));
  }
  return c;
}

bool IpRules::Allows(const IpAddress& ip) const {
  for (const Cidr& c : deny) {
    if (c.Contains(ip)) return false;
  }
  if (allow.empty()) return true;
  for (const Cidr& c : allow) {
    if (c.Contains(ip)) return true;
  }
  return false;
}

absl::StatusOr<IpRules> ParseIpRules(const std::vector<std::string>& allow,
                                     const std::vector<std::string>& deny,
                                     absl::string_view allow_name,
                                     absl::string_view deny_name) {
  IpRules rules;
  for (const auto& [list, name, out] :
       {std::tuple{&allow, allow_name, &rules.allow},
        std::tuple{&deny, deny_name, &rules.deny}}) {
    for (const std::string& text : *list) {
      absl::StatusOr<Cidr> c = ParseCidr(text);
      if (!c.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": ", c.status().message()));
      }
      out->push_back(*c);
    }
  }
  return rules;
}

}  // namespace tunnel::common
