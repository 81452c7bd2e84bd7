#include "common/admin_token.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/credentials.h"
#include "common/random.h"

namespace tunnel::common {
namespace {

constexpr size_t kTokenBytes = 32;
constexpr size_t kMaxTokenFileBytes = 4096;

void Digest(absl::string_view s, unsigned char out[SHA256_DIGEST_LENGTH]) {
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), out);
}

}  // namespace

std::string GenerateAdminToken() {
  return absl::StrCat("adm_", Base64UrlEncode(RandomBytes(kTokenBytes)));
}

absl::StatusOr<std::string> LoadAdminToken(const std::string& path) {
  return LoadSecretFile(path, "admin token file");
}

absl::StatusOr<std::string> LoadSecretFile(const std::string& path,
                                           absl::string_view what) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return absl::ErrnoToStatus(err,
                               absl::StrCat("cannot open ", what, " ", path));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    close(fd);
    return absl::PermissionDeniedError(
        absl::StrFormat("%s %s has mode %04o; it must not be accessible to "
                        "group or others (chmod 600 %s)",
                        what, path, st.st_mode & 07777, path));
  }
  std::string text;
  char buf[512];
  while (text.size() <= kMaxTokenFileBytes) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("cannot read ", path));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  absl::string_view token = absl::StripAsciiWhitespace(text);
  if (text.size() > kMaxTokenFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, " is too large"));
  }
  for (char c : token) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " ", path,
                       " must hold one token on one line (no spaces inside)"));
    }
  }
  if (token.size() < kMinAdminTokenLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the secret in ", what, " ", path, " is ",
        token.empty() ? "empty" : "too short", " (at least ",
        kMinAdminTokenLength,
        " characters; `tunnelctl admin-token issue --file FILE` makes one)"));
  }
  return std::string(token);
}

absl::Status SaveAdminToken(const std::string& path, absl::string_view token) {
  return WriteFileAtomically(path, absl::StrCat(token, "\n"));
}

bool AdminTokenMatches(absl::string_view expected,
                       absl::string_view presented) {
  unsigned char a[SHA256_DIGEST_LENGTH];
  unsigned char b[SHA256_DIGEST_LENGTH];
  Digest(expected, a);
  Digest(presented, b);
  return CRYPTO_memcmp(a, b, sizeof(a)) == 0 && !expected.empty();
}

}  // namespace tunnel::common
