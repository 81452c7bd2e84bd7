// HMAC-SHA256 authentication of an agent's Connect call.
//
// The agent puts five gRPC metadata entries on the call; the gateway checks
// them before any session exists. The signature covers a versioned canonical
// string, so adding fields later cannot make an old signature verify:
//
//   "tunnel-auth-v1\n" agent_id "\n" token_id "\n" timestamp "\n" nonce
//
// timestamp is unix seconds in decimal; nonce is 32 hex chars (16 random
// bytes); the signature is lowercase hex of HMAC-SHA256(secret_bytes,
// canonical), where secret_bytes is the base64url-decoded secret.
#ifndef TUNNEL_COMMON_HMAC_AUTH_H_
#define TUNNEL_COMMON_HMAC_AUTH_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/credentials.h"

namespace tunnel::common {

// Metadata keys (gRPC metadata keys are lowercase).
inline constexpr char kAuthAgentIdKey[] = "x-tunnel-agent-id";
inline constexpr char kAuthTokenIdKey[] = "x-tunnel-token-id";
inline constexpr char kAuthTimestampKey[] = "x-tunnel-timestamp";
inline constexpr char kAuthNonceKey[] = "x-tunnel-nonce";
inline constexpr char kAuthSignatureKey[] = "x-tunnel-signature";
inline constexpr char kAuthVersionPrefix[] = "tunnel-auth-v1";
// Trailing metadata of a Connect refused RESOURCE_EXHAUSTED for too many
// failed authentications: milliseconds until the source may try again.
inline constexpr char kAuthRetryAfterKey[] = "x-tunnel-retry-after-ms";

// Raw HMAC-SHA256 (OpenSSL). Returns the 32-byte MAC.
std::string HmacSha256(absl::string_view key, absl::string_view message);

// The canonical string described above.
std::string CanonicalAuthString(absl::string_view agent_id,
                                absl::string_view token_id, int64_t timestamp,
                                absl::string_view nonce);

// What the agent attaches to its call. Fails if the secret is not valid
// base64url. `nonce` empty means: generate a random one.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
SignAuthMetadata(absl::string_view agent_id, absl::string_view token_id,
                 absl::string_view secret_b64, absl::Time now,
                 absl::string_view nonce = "");

// Whether `signature_hex` is the signature of the canonical string under
// `secret_b64` (constant-time; false for a malformed signature or secret).
bool SignatureValid(absl::string_view secret_b64, absl::string_view agent_id,
                    absl::string_view token_id, int64_t timestamp,
                    absl::string_view nonce, absl::string_view signature_hex);

// Why a call was refused; also the label of the auth-failure metric.
enum class AuthFailure {
  kMissingField,
  kMalformed,
  kUnknownToken,
  kRevokedToken,
  kExpiredToken,
  kAgentMismatch,
  kClockSkew,
  kBadSignature,
  kReplay,
};
absl::string_view AuthFailureName(AuthFailure f);

struct AuthResult {
  bool ok = false;
  AuthFailure failure = AuthFailure::kMissingField;  // when !ok
  std::string agent_id;                              // when ok
  std::string token_id;                              // when ok
  std::string message;  // human-readable, never contains a secret
};

// Checks signed metadata against a credential store. Thread-safe: called from
// gRPC reactor threads concurrently.
class AuthVerifier {
 public:
  // `store` must outlive the verifier. `skew` bounds |now - timestamp|.
  // At most `max_nonces` nonces are remembered; past that, new calls are
  // refused (kReplay) until old nonces leave the window, so the cache stays
  // bounded. Only correctly signed calls ever insert a nonce.
  AuthVerifier(const CredentialStore* store, absl::Duration skew,
               size_t max_nonces = 100000);

  // `metadata` maps lowercase keys to values (first value per key).
  AuthResult Verify(const std::map<std::string, std::string>& metadata,
                    absl::Time now);

  const CredentialStore* store() const { return store_; }

 private:
  const CredentialStore* store_;
  const absl::Duration skew_;
  const size_t max_nonces_;
  absl::Mutex mu_;
  // nonce -> time after which it may be forgotten.
  absl::flat_hash_map<std::string, absl::Time> nonces_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_HMAC_AUTH_H_
