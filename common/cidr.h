// IP address ranges (CIDR) for the per-tunnel IP rules: IPv4 and IPv6, an
// IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket
// reports) counting as its IPv4 address.
#ifndef TUNNEL_COMMON_CIDR_H_
#define TUNNEL_COMMON_CIDR_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnel::common {

struct IpAddress {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};  // IPv4: the first 4
};

// "192.0.2.7", "2001:db8::1", "::ffff:192.0.2.7" (read as IPv4); else
// INVALID_ARGUMENT.
absl::StatusOr<IpAddress> ParseIpAddress(absl::string_view text);
// "192.0.2.7", "2001:db8::1".
std::string FormatIpAddress(const IpAddress& ip);

struct Cidr {
  IpAddress base;  // host bits cleared
  int prefix = 0;  // 0-32 or 0-128

  bool Contains(const IpAddress& ip) const;
  std::string ToString() const;
};

// "10.0.0.0/8", "2001:db8::/32", or a bare address (/32, /128). Host bits
// set below the prefix are an error (a typo more often than not), saying
// which network was probably meant.
absl::StatusOr<Cidr> ParseCidr(absl::string_view text);

// Allow and deny lists: an address is refused when a deny range holds it,
// or when there are allow ranges and none holds it.
struct IpRules {
  std::vector<Cidr> allow;
  std::vector<Cidr> deny;

  bool empty() const { return allow.empty() && deny.empty(); }
  bool Allows(const IpAddress& ip) const;
};

// Parses both lists; the error names the bad entry and its list (`what`:
// e.g. "--allow-cidr").
absl::StatusOr<IpRules> ParseIpRules(const std::vector<std::string>& allow,
                                     const std::vector<std::string>& deny,
                                     absl::string_view allow_name,
                                     absl::string_view deny_name);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_CIDR_H_
