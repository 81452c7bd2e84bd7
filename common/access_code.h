// Visitor access codes: the salted slow hash an agent (or the admin API)
// turns a code into, and the constant-time check of a presented code against
// it. The gateway only ever keeps the hash. Thread-safe (pure functions).
#ifndef TUNNEL_COMMON_ACCESS_CODE_H_
#define TUNNEL_COMMON_ACCESS_CODE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::common {

inline constexpr uint32_t kAccessCodeIterations = 100000;
// Bounds the gateway accepts: below is too weak to bother, above would let a
// bad hash make every visitor attempt a denial of service.
inline constexpr uint32_t kMinAccessCodeIterations = 10000;
inline constexpr uint32_t kMaxAccessCodeIterations = 2000000;
inline constexpr size_t kAccessCodeSaltBytes = 16;
inline constexpr size_t kAccessCodeHashBytes = 32;
inline constexpr size_t kMaxAccessCodeBytes = 256;

// INVALID_ARGUMENT unless `code` is 1 to 256 bytes without control
// characters.
absl::Status CheckAccessCode(absl::string_view code);

// PBKDF2-HMAC-SHA256 of `code` with a fresh random 16-byte salt.
absl::StatusOr<tunnel::v1::AccessCodeHash> HashAccessCode(
    absl::string_view code, uint32_t iterations = kAccessCodeIterations);

// INVALID_ARGUMENT naming what is wrong with a hash received from a peer
// (salt and hash sizes, iteration bounds).
absl::Status CheckAccessCodeHash(const tunnel::v1::AccessCodeHash& h);

// Derives `code` with h's salt and iterations and compares in constant time
// (CRYPTO_memcmp). Slow by design (one PBKDF2 run).
bool AccessCodeMatches(const tunnel::v1::AccessCodeHash& h,
                       absl::string_view code);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ACCESS_CODE_H_
