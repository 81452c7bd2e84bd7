// Agent credentials: the file format (tunnel.v1.CredentialsFile in protobuf
// text format) and the in-memory store the gateway checks tokens against.
#ifndef TUNNEL_COMMON_CREDENTIALS_H_
#define TUNNEL_COMMON_CREDENTIALS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tunnel/v1/credentials.pb.h"

namespace tunnel::common {

// Reads and validates a credentials file. A missing file is NOT_FOUND; a
// malformed one is INVALID_ARGUMENT naming the file and the problem (line and
// column for syntax errors, token id for semantic ones: empty fields, secret
// not base64url of at least 16 bytes, duplicate token ids, invalid agent id).
absl::StatusOr<tunnel::v1::CredentialsFile> LoadCredentialsFile(
    const std::string& path);

// Writes atomically (temp file + rename) with mode 0600.
absl::Status SaveCredentialsFile(const std::string& path,
                                 const tunnel::v1::CredentialsFile& file);

// Writes `contents` to `path` atomically (temp file in the same directory,
// fsync, rename) with mode 0600, for files that hold secrets.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// A fresh credential for `agent_id`: token id "tok_" + 16 hex chars, secret
// 32 random bytes in unpadded base64url. Fails for an invalid agent id.
absl::StatusOr<tunnel::v1::Credential> IssueCredential(
    absl::string_view agent_id, absl::Time now,
    absl::Time expires = absl::InfiniteFuture());

// When `c` expires: InfiniteFuture for a token without an expiry.
absl::Time CredentialExpiry(const tunnel::v1::Credential& c);
// Sets (InfiniteFuture: clears) the expiry, to the second.
void SetCredentialExpiry(tunnel::v1::Credential& c, absl::Time expires);
// "2026-12-05T10:00:00Z": how expiries are shown and parsed (RFC 3339).
std::string FormatUtc(absl::Time t);

// "token tok_… expired at …; …" — how an expired token is refused.
std::string ExpiredTokenMessage(absl::string_view token_id, absl::Time expired);

// Agent ids: 1-64 chars of [A-Za-z0-9._-].
bool IsValidAgentId(absl::string_view id);

// Thread-safe lookup table of credentials, replaceable as a whole (reload).
// Lookups by token id are hashed: a gateway with 10,000 agents looks a token
// up four times per connect, and twice per live session on every reload.
class CredentialStore {
 public:
  CredentialStore() = default;
  explicit CredentialStore(const tunnel::v1::CredentialsFile& file);

  void Replace(const tunnel::v1::CredentialsFile& file);
  // The credential with this token id, revoked ones included.
  std::optional<tunnel::v1::Credential> Find(absl::string_view token_id) const;
  // Agent ids with at least one live token (their default slugs are "known").
  std::vector<std::string> AgentIds() const;
  // Tokens that are not revoked.
  size_t LiveTokenCount() const;
  // OK while `token_id` is in the store, not revoked and still belongs to
  // `agent_id`; else UNAUTHENTICATED saying which (for sessions that
  // authenticated before a reload). Never names a secret.
  absl::Status CheckLive(absl::string_view token_id,
                         absl::string_view agent_id) const;

  // The token ids the file marks revoked.
  std::vector<std::string> RevokedTokenIds() const;
  // Token ids revoked elsewhere (another replica of a gateway cluster):
  // from now on they count as revoked here too, whatever the file says
  // (Replace keeps them). True when the set changed.
  bool SetRevokedElsewhere(absl::flat_hash_set<std::string> ids);

 private:
  // Indexes file_ by token id (the first of duplicates, as a scan would).
  void IndexLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  tunnel::v1::CredentialsFile file_ ABSL_GUARDED_BY(mu_);
  // Token id -> its index in file_.credentials().
  absl::flat_hash_map<std::string, int> by_token_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> revoked_elsewhere_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_CREDENTIALS_H_
