// Cryptographically strong randomness (OpenSSL RAND_bytes) and the encodings
// built on it. Thread-safe.
#ifndef TUNNEL_COMMON_RANDOM_H_
#define TUNNEL_COMMON_RANDOM_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::common {

std::string RandomBytes(size_t n);
// 2*n lowercase hex chars.
std::string RandomHex(size_t n_bytes);
uint64_t RandomU64();
// RFC 4122 version-4 UUID, lowercase, 36 chars. Unique, not secret (not
// for keys or nonces).
std::string NewUuid();
// Unpadded base64url (RFC 4648 section 5).
std::string Base64UrlEncode(absl::string_view bytes);
// Accepts padded or unpadded input; nullopt on any invalid character.
std::optional<std::string> Base64UrlDecode(absl::string_view text);
// The same for standard base64 (RFC 4648 section 4: '+' and '/').
std::optional<std::string> Base64Decode(absl::string_view text);
std::string HexEncode(absl::string_view bytes);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_RANDOM_H_
