// Pieces of the front door's access gate for tunnels with a visitor access
// code: the signed cookie a correct code earns, and the per-(client IP,
// tunnel) limit on wrong codes.
#ifndef TUNNEL_HTTPFRONT_ACCESS_GATE_H_
#define TUNNEL_HTTPFRONT_ACCESS_GATE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/attempt_limiter.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::httpfront {

// Name of the cookie that admits a visitor to a gated tunnel.
inline constexpr char kAccessCookieName[] = "tunnel_access";

// Issues and checks access cookies: "<expiry unix s>.<base64url HMAC>", the
// HMAC-SHA256 (with a random key made at construction, so a gateway restart
// invalidates every cookie) over the expiry, the tunnel slug and the code's
// hash, so a cookie opens one tunnel only and dies when its code changes.
// Thread-safe (immutable after construction).
class AccessCookieSigner {
 public:
  AccessCookieSigner();
  std::string Issue(absl::string_view slug,
                    const tunnel::v1::AccessCodeHash& code,
                    absl::Time expires) const;
  // Cheap: one HMAC, compared in constant time.
  bool Valid(absl::string_view cookie, absl::string_view slug,
             const tunnel::v1::AccessCodeHash& code, absl::Time now) const;

 private:
  std::string Mac(int64_t expires, absl::string_view slug,
                  const tunnel::v1::AccessCodeHash& code) const;
  const std::string key_;
};

// Wrong codes per (client IP, slug) key: the shared limiter in common.
using common::AttemptLimiter;

// Removes every `name` parameter from the query of `target`; `*value` gets
// the last one's value (percent-decoded, '+' as space). False if there was
// none.
bool TakeQueryParam(std::string* target, absl::string_view name,
                    std::string* value);
// Decodes application/x-www-form-urlencoded `body` and returns field `name`.
bool FormField(absl::string_view body, absl::string_view name,
               std::string* value);
// The Cookie header without the cookies called `name` ("" if nothing else
// is left); `*values` gets their values in order.
std::string TakeCookie(absl::string_view cookie_header, absl::string_view name,
                       std::vector<std::string>* values);

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_ACCESS_GATE_H_
