// The gateway's admin token: a bearer secret shared by `gateway-tunnel
// --admin-token-file` and `tunnelctl --admin-token-file`. The file holds the
// token on one line and must not be accessible to group or others.
//
// Thread-safe (no shared state).
#ifndef TUNNEL_COMMON_ADMIN_TOKEN_H_
#define TUNNEL_COMMON_ADMIN_TOKEN_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnel::common {

// Shorter tokens are refused when loaded.
inline constexpr size_t kMinAdminTokenLength = 16;

// "adm_" + 32 random bytes (OpenSSL RAND_bytes) in unpadded base64url.
std::string GenerateAdminToken();

// Reads the token (surrounding whitespace trimmed). Fails NOT_FOUND if the
// file is missing, PERMISSION_DENIED naming the mode if group or others have
// any permission on it (`chmod 600` fixes it), INVALID_ARGUMENT if the token
// is empty, shorter than kMinAdminTokenLength or has whitespace or control
// characters inside.
absl::StatusOr<std::string> LoadAdminToken(const std::string& path);
// The same rules for another secret file (`what` names it in errors, e.g.
// "cluster secret file").
absl::StatusOr<std::string> LoadSecretFile(const std::string& path,
                                           absl::string_view what);

// Writes `token` and a newline atomically with mode 0600.
absl::Status SaveAdminToken(const std::string& path, absl::string_view token);

// Constant-time comparison: both sides are hashed (SHA-256) and the digests
// compared with CRYPTO_memcmp, so neither content nor length leaks through
// timing.
bool AdminTokenMatches(absl::string_view expected, absl::string_view presented);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ADMIN_TOKEN_H_
