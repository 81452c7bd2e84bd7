#include "common/hmac_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdint>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace tunnel::common {
namespace {

constexpr size_t kMacBytes = 32;
constexpr size_t kNonceHexChars = 32;
constexpr size_t kSignatureHexChars = 2 * kMacBytes;
// Metadata values are attacker-controlled; only this much of one is ever
// quoted in a message, so a huge header cannot flood the logs.
constexpr size_t kMaxQuotedChars = 64;

// A metadata value made safe to put in a log line: escaped and bounded.
std::string Quote(absl::string_view value) {
  bool truncated = value.size() > kMaxQuotedChars;
  std::string out = absl::StrCat(
      "\"", absl::CHexEscape(value.substr(0, kMaxQuotedChars)), "\"");
  if (truncated) out += "...";
  return out;
}

// Strict decimal: optional '-', digits, no leading zeros, no '+' or spaces.
// Anything looser would let one signed call be presented in several textual
// forms; the canonical string is rebuilt from the parsed value, so we insist
// the text already is that canonical form.
std::optional<int64_t> ParseTimestamp(absl::string_view text) {
  int64_t value;
  if (!absl::SimpleAtoi(text, &value)) return std::nullopt;
  if (absl::StrCat(value) != text) return std::nullopt;
  return value;
}

bool IsHex(absl::string_view text, size_t want_len) {
  if (text.size() != want_len) return false;
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

AuthResult Fail(AuthFailure failure, std::string message) {
  AuthResult result;
  result.ok = false;
  result.failure = failure;
  result.message = std::move(message);
  return result;
}

}  // namespace

std::string HmacSha256(absl::string_view key, absl::string_view message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  // A default-constructed string_view has a null data pointer; OpenSSL wants
  // a valid pointer even for a zero-length key.
  static const char kEmpty = '\0';
  const void* key_data = key.data() != nullptr ? key.data() : &kEmpty;
  const unsigned char* msg_data = reinterpret_cast<const unsigned char*>(
      message.data() != nullptr ? message.data() : &kEmpty);
  if (HMAC(EVP_sha256(), key_data, static_cast<int>(key.size()), msg_data,
           message.size(), mac, &mac_len) == nullptr) {
    // Only on allocation failure. An empty MAC never equals a real one, so
    // callers comparing MACs fail closed.
    return std::string();
  }
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

std::string CanonicalAuthString(absl::string_view agent_id,
                                absl::string_view token_id, int64_t timestamp,
                                absl::string_view nonce) {
  return absl::StrCat(kAuthVersionPrefix, "\n", agent_id, "\n", token_id, "\n",
                      timestamp, "\n", nonce);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
SignAuthMetadata(absl::string_view agent_id, absl::string_view token_id,
                 absl::string_view secret_b64, absl::Time now,
                 absl::string_view nonce) {
  std::optional<std::string> key = Base64UrlDecode(secret_b64);
  if (!key.has_value()) {
    // Never echo the secret, not even a malformed one.
    return absl::InvalidArgumentError(
        "the agent secret is not valid base64url (copy it exactly as "
        "`tunnelctl token issue` printed it)");
  }
  std::string nonce_text =
      nonce.empty() ? RandomHex(kNonceHexChars / 2) : std::string(nonce);
  int64_t timestamp = absl::ToUnixSeconds(now);
  std::string signature = HexEncode(HmacSha256(
      *key, CanonicalAuthString(agent_id, token_id, timestamp, nonce_text)));
  return std::vector<std::pair<std::string, std::string>>{
      {kAuthAgentIdKey, std::string(agent_id)},
      {kAuthTokenIdKey, std::string(token_id)},
      {kAuthTimestampKey, absl::StrCat(timestamp)},
      {kAuthNonceKey, std::move(nonce_text)},
      {kAuthSignatureKey, std::move(signature)},
  };
}

absl::string_view AuthFailureName(AuthFailure f) {
  switch (f) {
    case AuthFailure::kMissingField:
      return "missing_field";
    case AuthFailure::kMalformed:
      return "malformed";
    case AuthFailure::kUnknownToken:
      return "unknown_token";
    case AuthFailure::kRevokedToken:
      return "revoked_token";
    case AuthFailure::kExpiredToken:
      return "expired_token";
    case AuthFailure::kAgentMismatch:
      return "agent_mismatch";
    case AuthFailure::kClockSkew:
      return "clock_skew";
    case AuthFailure::kBadSignature:
      return "bad_signature";
    case AuthFailure::kReplay:
      return "replay";
  }
  return "unknown";
}

AuthVerifier::AuthVerifier(const CredentialStore* store, absl::Duration skew,
                           size_t max_nonces)
    : store_(store), skew_(skew), max_nonces_(max_nonces) {}

bool SignatureValid(absl::string_view secret_b64, absl::string_view agent_id,
                    absl::string_view token_id, int64_t timestamp,
                    absl::string_view nonce, absl::string_view signature_hex) {
  if (!IsHex(signature_hex, kSignatureHexChars)) return false;
  std::optional<std::string> key = Base64UrlDecode(secret_b64);
  // The hex is decoded rather than compared as text so upper- and lowercase
  // signatures are judged alike; the length was checked above, so both sides
  // of CRYPTO_memcmp are kMacBytes long and the compare is constant-time.
  std::string presented = absl::HexStringToBytes(signature_hex);
  std::string expected =
      key.has_value() ? HmacSha256(*key, CanonicalAuthString(agent_id, token_id,
                                                             timestamp, nonce))
                      : std::string();
  return expected.size() == kMacBytes && presented.size() == kMacBytes &&
         CRYPTO_memcmp(expected.data(), presented.data(), kMacBytes) == 0;
}

AuthResult AuthVerifier::Verify(
    const std::map<std::string, std::string>& metadata, absl::Time now) {
  // The checks run cheapest and least revealing first; each failure kind is
  // a metric label, so the order is part of the contract (see the header).
  const std::string* fields[5];
  static constexpr const char* kKeys[5] = {kAuthAgentIdKey, kAuthTokenIdKey,
                                           kAuthTimestampKey, kAuthNonceKey,
                                           kAuthSignatureKey};
  for (int i = 0; i < 5; ++i) {
    // An empty value is as useless as an absent one, and reporting it as
    // missing points the operator at the right field.
    auto it = metadata.find(kKeys[i]);
    if (it == metadata.end() || it->second.empty()) {
      return Fail(AuthFailure::kMissingField,
                  absl::StrCat("missing metadata ", kKeys[i]));
    }
    fields[i] = &it->second;
  }
  const std::string& agent_id = *fields[0];
  const std::string& token_id = *fields[1];
  const std::string& timestamp_text = *fields[2];
  const std::string& nonce = *fields[3];
  const std::string& signature_hex = *fields[4];

  std::optional<int64_t> timestamp = ParseTimestamp(timestamp_text);
  if (!timestamp.has_value()) {
    return Fail(AuthFailure::kMalformed,
                absl::StrCat(kAuthTimestampKey, " ", Quote(timestamp_text),
                             " is not unix seconds in decimal"));
  }
  if (!IsHex(nonce, kNonceHexChars)) {
    return Fail(
        AuthFailure::kMalformed,
        absl::StrCat(kAuthNonceKey, " is not ", kNonceHexChars, " hex chars"));
  }
  if (!IsHex(signature_hex, kSignatureHexChars)) {
    return Fail(AuthFailure::kMalformed,
                absl::StrCat(kAuthSignatureKey, " is not ", kSignatureHexChars,
                             " hex chars"));
  }

  std::optional<tunnel::v1::Credential> cred = store_->Find(token_id);
  if (!cred.has_value()) {
    return Fail(AuthFailure::kUnknownToken,
                absl::StrCat("unknown token ", Quote(token_id)));
  }
  if (cred->revoked()) {
    return Fail(AuthFailure::kRevokedToken,
                absl::StrCat("token ", Quote(token_id), " is revoked"));
  }
  if (const absl::Time expiry = CredentialExpiry(*cred); now >= expiry) {
    return Fail(AuthFailure::kExpiredToken,
                ExpiredTokenMessage(token_id, expiry));
  }
  if (cred->agent_id() != agent_id) {
    return Fail(
        AuthFailure::kAgentMismatch,
        absl::StrCat("token ", Quote(token_id), " belongs to agent ",
                     Quote(cred->agent_id()), ", not ", Quote(agent_id)));
  }

  const absl::Time signed_at = absl::FromUnixSeconds(*timestamp);
  if (absl::AbsDuration(now - signed_at) > skew_) {
    return Fail(
        AuthFailure::kClockSkew,
        absl::StrCat(
            "timestamp ", *timestamp, " is ",
            absl::FormatDuration(absl::AbsDuration(now - signed_at)),
            now > signed_at ? " behind" : " ahead of",
            " the gateway clock (allowed: ", absl::FormatDuration(skew_),
            "); check the agent's clock (NTP)"));
  }

  if (!SignatureValid(cred->secret(), agent_id, token_id, *timestamp, nonce,
                      signature_hex)) {
    return Fail(AuthFailure::kBadSignature,
                absl::StrCat("bad signature for token ", Quote(token_id),
                             " (wrong secret, or metadata altered)"));
  }

  {
    absl::MutexLock lock(&mu_);
    auto it = nonces_.find(nonce);
    if (it != nonces_.end() && it->second >= now) {
      return Fail(AuthFailure::kReplay,
                  absl::StrCat("nonce already used by token ", Quote(token_id),
                               " (replayed call)"));
    }
    if (it == nonces_.end() && nonces_.size() >= max_nonces_) {
      // Purging only when full keeps the common path O(1); the sweep is
      // O(n) but then frees every entry whose window has closed.
      absl::erase_if(nonces_,
                     [now](const auto& entry) { return entry.second < now; });
      if (nonces_.size() >= max_nonces_) {
        return Fail(AuthFailure::kReplay,
                    "too many recent connection attempts; nonce cache full, "
                    "retry later");
      }
    }
    // An entry may be forgotten once its timestamp leaves the skew window:
    // from then on the clock-skew check refuses it anyway.
    nonces_[nonce] = signed_at + skew_;
  }

  AuthResult result;
  result.ok = true;
  result.agent_id = agent_id;
  result.token_id = token_id;
  result.message = absl::StrCat("agent ", Quote(agent_id),
                                " authenticated with token ", Quote(token_id));
  return result;
}

}  // namespace tunnel::common
