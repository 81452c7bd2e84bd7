#include "common/credentials.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "common/slug.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace tunnel::common {
namespace {

constexpr char kFileHeader[] =
    "# tunnel credentials \xE2\x80\x94 keep private (mode 0600)\n";
// Shorter secrets are guessable offline from one captured signature.
constexpr size_t kMinSecretBytes = 16;
constexpr size_t kMaxAgentIdLen = 64;
constexpr size_t kTokenIdRandomBytes = 8;
constexpr size_t kSecretBytes = 32;

// Collects every syntax error the text-format parser reports, one-based, as
// "path:line:column: message" so editors can jump to it.
class CollectingErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectingErrorCollector(const std::string& path) : path_(path) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors_.push_back(absl::StrCat(path_, ":", line + 1, ":", column + 1, ": ",
                                   RedactToken(message)));
  }

  const std::vector<std::string>& errors() const { return errors_; }

 private:
  // The parser quotes the offending token ("Expected string, got: xyz"); a
  // hand-edited file with an unquoted secret would put the secret into the
  // gateway's logs. Short tokens (punctuation, keywords) stay visible.
  static std::string RedactToken(const std::string& message) {
    static constexpr char kGot[] = "got: ";
    constexpr size_t kGotLen = sizeof(kGot) - 1;
    constexpr size_t kMaxShownChars = 12;
    size_t at = message.find(kGot);
    if (at == std::string::npos) return message;
    size_t len = message.size() - at - kGotLen;
    if (len <= kMaxShownChars) return message;
    return absl::StrCat(message.substr(0, at + kGotLen), "a ", len,
                        "-char token (not shown)");
  }

  const std::string& path_;
  std::vector<std::string> errors_;
};

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          "credentials file ", path,
          " does not exist; issue a token first: tunnelctl token issue --id "
          "DEVICE --credentials ",
          path));
    }
    return absl::ErrnoToStatus(
        err, absl::StrCat("cannot open credentials file ", path));
  }
  std::string data;
  char buf[8192];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return absl::ErrnoToStatus(
          err, absl::StrCat("cannot read credentials file ", path));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return data;
}

// Semantic checks shared by load and save, so we never write a file we would
// refuse to read back. Messages name the token, never the secret.
absl::Status Validate(const std::string& path,
                      const tunnel::v1::CredentialsFile& file) {
  std::set<std::string> seen;
  for (int i = 0; i < file.credentials_size(); ++i) {
    const tunnel::v1::Credential& c = file.credentials(i);
    if (c.token_id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": credential #", i + 1, " has an empty token_id"));
    }
    std::string token =
        absl::StrCat("token \"", absl::CHexEscape(c.token_id()), "\"");
    if (!seen.insert(c.token_id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": duplicate ", token));
    }
    if (c.agent_id().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", token, ": empty agent_id"));
    }
    if (!IsValidAgentId(c.agent_id())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", token, ": invalid agent_id \"",
                       absl::CHexEscape(c.agent_id()),
                       "\" (want 1-64 chars of A-Z a-z 0-9 . _ -)"));
    }
    if (c.secret().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", token, ": empty secret"));
    }
    for (const std::string& pool : c.pools()) {
      if (absl::Status s = CheckSlug(pool); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", token, ": pool \"", absl::CHexEscape(pool),
                         "\": ", s.message()));
      }
    }
    std::optional<std::string> key = Base64UrlDecode(c.secret());
    if (!key.has_value() || key->size() < kMinSecretBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", token, ": secret is not base64url of at least ",
          kMinSecretBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Returns 0 or the errno of the failed write.
int WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

}  // namespace

bool IsValidAgentId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxAgentIdLen) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<tunnel::v1::CredentialsFile> LoadCredentialsFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return text.status();

  tunnel::v1::CredentialsFile file;
  CollectingErrorCollector errors(path);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(*text, &file)) {
    if (errors.errors().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a valid tunnel.v1.CredentialsFile"));
    }
    // The first error is the cause; later ones are mostly its echoes.
    return absl::InvalidArgumentError(errors.errors().front());
  }
  if (absl::Status s = Validate(path, file); !s.ok()) return s;
  return file;
}

absl::Status SaveCredentialsFile(const std::string& path,
                                 const tunnel::v1::CredentialsFile& file) {
  if (absl::Status s = Validate(path, file); !s.ok()) return s;
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(file, &text)) {
    return absl::InternalError(
        absl::StrCat(path, ": cannot serialize credentials"));
  }
  return WriteFileAtomically(path, absl::StrCat(kFileHeader, text));
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  // Same directory as the target, so rename() is atomic (same filesystem).
  // mkstemp creates the file 0600 before any secret is written to it.
  std::string tmp =
      absl::StrCat(DirName(path), "/.", BaseName(path), ".tmp.XXXXXX");
  int fd = mkstemp(tmp.data());
  if (fd < 0) {
    int err = errno;
    return absl::ErrnoToStatus(
        err, absl::StrCat("cannot create a temporary file next to ", path));
  }
  auto fail = [&](absl::string_view what, int err) {
    close(fd);
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot ", what, " ", tmp));
  };
  // Belt and braces: mkstemp's mode is 0600 on glibc, but make it explicit.
  if (fchmod(fd, S_IRUSR | S_IWUSR) != 0) return fail("chmod", errno);
  if (int err = WriteAll(fd, contents); err != 0) return fail("write", err);
  // Data must be on disk before the rename makes it visible, or a crash
  // could leave an empty credentials file in place of the old one.
  if (fsync(fd) != 0) return fail("fsync", errno);
  if (close(fd) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot close ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(
        err, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  // Persist the rename itself. Failure here is not reported: the new file is
  // already in place and readable; only its durability across a power loss
  // is in question.
  if (int dir = open(DirName(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      dir >= 0) {
    fsync(dir);
    close(dir);
  }
  return absl::OkStatus();
}

absl::Time CredentialExpiry(const tunnel::v1::Credential& c) {
  return c.expires_unix() == 0 ? absl::InfiniteFuture()
                               : absl::FromUnixSeconds(c.expires_unix());
}

void SetCredentialExpiry(tunnel::v1::Credential& c, absl::Time expires) {
  if (expires == absl::InfiniteFuture()) {
    c.set_expires_unix(0);
    return;
  }
  int64_t seconds = absl::ToUnixSeconds(expires);  // rounds down
  if (absl::FromUnixSeconds(seconds) < expires) ++seconds;
  c.set_expires_unix(seconds);
}

std::string FormatUtc(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

std::string ExpiredTokenMessage(absl::string_view token_id,
                                absl::Time expired) {
  return absl::StrCat(
      "token \"", absl::CHexEscape(token_id), "\" expired at ",
      FormatUtc(expired), "; extend it with `tunnelctl token extend ",
      absl::CHexEscape(token_id),
      " --ttl 24h` (and reload the gateway) or issue a new one");
}

absl::StatusOr<tunnel::v1::Credential> IssueCredential(
    absl::string_view agent_id, absl::Time now, absl::Time expires) {
  if (!IsValidAgentId(agent_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid agent id \"", absl::CHexEscape(agent_id),
                     "\": want 1-64 chars of A-Z a-z 0-9 . _ -"));
  }
  tunnel::v1::Credential c;
  c.set_token_id(absl::StrCat("tok_", RandomHex(kTokenIdRandomBytes)));
  c.set_agent_id(std::string(agent_id));
  c.set_secret(Base64UrlEncode(RandomBytes(kSecretBytes)));
  c.set_created_unix(absl::ToUnixSeconds(now));
  c.set_revoked(false);
  SetCredentialExpiry(c, expires);
  return c;
}

CredentialStore::CredentialStore(const tunnel::v1::CredentialsFile& file)
    : file_(file) {
  absl::MutexLock lock(&mu_);
  IndexLocked();
}

void CredentialStore::Replace(const tunnel::v1::CredentialsFile& file) {
  absl::MutexLock lock(&mu_);
  file_ = file;
  IndexLocked();
}

void CredentialStore::IndexLocked() {
  by_token_id_.clear();
  by_token_id_.reserve(static_cast<size_t>(file_.credentials_size()));
  for (int i = 0; i < file_.credentials_size(); ++i) {
    by_token_id_.try_emplace(file_.credentials(i).token_id(), i);
  }
}

std::optional<tunnel::v1::Credential> CredentialStore::Find(
    absl::string_view token_id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_token_id_.find(token_id);
  if (it == by_token_id_.end()) return std::nullopt;
  tunnel::v1::Credential found = file_.credentials(it->second);
  if (revoked_elsewhere_.contains(token_id)) found.set_revoked(true);
  return found;
}

std::vector<std::string> CredentialStore::RevokedTokenIds() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const tunnel::v1::Credential& c : file_.credentials()) {
    if (c.revoked()) ids.push_back(c.token_id());
  }
  return ids;
}

bool CredentialStore::SetRevokedElsewhere(
    absl::flat_hash_set<std::string> ids) {
  absl::MutexLock lock(&mu_);
  if (ids == revoked_elsewhere_) return false;
  revoked_elsewhere_ = std::move(ids);
  return true;
}

std::vector<std::string> CredentialStore::AgentIds() const {
  absl::MutexLock lock(&mu_);
  std::set<std::string> ids;
  for (const tunnel::v1::Credential& c : file_.credentials()) {
    if (!c.revoked() && !revoked_elsewhere_.contains(c.token_id())) {
      ids.insert(c.agent_id());
    }
  }
  return std::vector<std::string>(ids.begin(), ids.end());
}

size_t CredentialStore::LiveTokenCount() const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const tunnel::v1::Credential& c : file_.credentials()) {
    if (!c.revoked() && !revoked_elsewhere_.contains(c.token_id())) ++n;
  }
  return n;
}

absl::Status CredentialStore::CheckLive(absl::string_view token_id,
                                        absl::string_view agent_id) const {
  std::optional<tunnel::v1::Credential> c = Find(token_id);
  std::string token = absl::StrCat("token ", absl::CHexEscape(token_id));
  if (!c.has_value()) {
    return absl::UnauthenticatedError(
        absl::StrCat(token, " was removed from the credentials"));
  }
  if (c->revoked()) {
    return absl::UnauthenticatedError(absl::StrCat(token, " was revoked"));
  }
  if (c->agent_id() != agent_id) {
    return absl::UnauthenticatedError(absl::StrCat(
        token, " now belongs to agent ", absl::CHexEscape(c->agent_id()),
        ", not ", absl::CHexEscape(agent_id)));
  }
  return absl::OkStatus();
}

}  // namespace tunnel::common
