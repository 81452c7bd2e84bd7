// Basic auth in front of a tunnel (agent-tunnel --basic-auth USER:HASH): the
// password hashes the gateway accepts, their bounds, the constant-time check
// of a presented password, and hashing for `tunnelctl hash-password`.
//
// Two formats, both common outside this project:
//   $pbkdf2-sha256$ROUNDS$SALT$HASH  passlib's: PBKDF2-HMAC-SHA256, ROUNDS
//                                    10000 to 2000000, SALT 8 to 64 bytes,
//                                    HASH 32 bytes, both in passlib's base64
//                                    ('.' for '+', no padding)
//   $2b$CC$<53 chars>                bcrypt (also $2a$, $2y$ as `htpasswd
//                                    -B` writes), cost CC 4 to 14
// Bounds keep a hostile hash from making every visitor's attempt a denial of
// service. Thread-safe (pure functions; bcrypt through libcrypt's crypt_rn).
#ifndef TUNNEL_COMMON_PASSWORD_HASH_H_
#define TUNNEL_COMMON_PASSWORD_HASH_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnel::common {

enum class PasswordScheme { kPbkdf2Sha256, kBcrypt };

inline constexpr uint32_t kDefaultPbkdf2Rounds = 100000;
inline constexpr uint32_t kMinPbkdf2Rounds = 10000;
inline constexpr uint32_t kMaxPbkdf2Rounds = 2000000;
inline constexpr uint32_t kDefaultBcryptCost = 10;
inline constexpr uint32_t kMinBcryptCost = 4;
inline constexpr uint32_t kMaxBcryptCost = 14;
// bcrypt reads no further; longer passwords are refused when hashing.
inline constexpr size_t kMaxBcryptPasswordBytes = 72;
inline constexpr size_t kMaxPasswordBytes = 1024;
inline constexpr size_t kMaxBasicAuthUserBytes = 128;
inline constexpr size_t kMaxBasicAuthUsers = 100;

struct PasswordHash {
  PasswordScheme scheme = PasswordScheme::kPbkdf2Sha256;
  std::string text;     // the whole hash as written
  uint32_t rounds = 0;  // PBKDF2 iterations, or the bcrypt cost
  std::string salt;     // PBKDF2 only: decoded
  std::string digest;   // PBKDF2 only: decoded, 32 bytes
};

// INVALID_ARGUMENT naming what is wrong (unknown format, bounds, encoding).
absl::StatusOr<PasswordHash> ParsePasswordHash(absl::string_view text);

// Derives `password` with h's parameters and compares in constant time.
// Slow by design (tens to hundreds of milliseconds).
bool PasswordMatches(const PasswordHash& h, absl::string_view password);

// A new hash of `password` with a fresh random salt; `rounds` 0: the
// scheme's default. INVALID_ARGUMENT for an empty or too long password or
// rounds out of bounds.
absl::StatusOr<std::string> HashPassword(absl::string_view password,
                                         PasswordScheme scheme,
                                         uint32_t rounds = 0);

struct BasicAuthUser {
  std::string user;
  PasswordHash hash;
};

// "USER:HASH" entries (flags, config file, htpasswd lines): USER 1 to 128
// bytes without ':' or control characters, each user once, at most 100.
// `what` names the source in errors ("--basic-auth").
absl::StatusOr<std::vector<BasicAuthUser>> ParseBasicAuthUsers(
    const std::vector<std::string>& entries, absl::string_view what);

// The entries of an htpasswd-style file: one USER:HASH per line; blank
// lines and lines starting with '#' are skipped.
absl::StatusOr<std::vector<std::string>> ReadBasicAuthFile(
    const std::string& path);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_PASSWORD_HASH_H_
