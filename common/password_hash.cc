#include "common/password_hash.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/random.h"

namespace tunnel::common {
namespace {

constexpr size_t kPbkdf2DigestBytes = 32;
constexpr size_t kPbkdf2SaltBytes = 16;  // what we write
constexpr size_t kMinPbkdf2SaltBytes = 8;
constexpr size_t kMaxPbkdf2SaltBytes = 64;
constexpr size_t kBcryptHashChars = 60;
constexpr char kPbkdf2Prefix[] = "$pbkdf2-sha256$";
constexpr char kFormats[] =
    "use $pbkdf2-sha256$... or bcrypt ($2b$/$2y$, `htpasswd -B`); make one "
    "with `tunnelctl hash-password USER`";

// passlib's "ab64": standard base64 with '.' for '+', without padding.
std::optional<std::string> Ab64Decode(absl::string_view text) {
  std::string std64(text);
  for (char& c : std64) {
    if (c == '+' || c == '=') return std::nullopt;
    if (c == '.') c = '+';
  }
  return Base64Decode(std64);
}

std::string Ab64Encode(absl::string_view bytes) {
  std::string out = Base64UrlEncode(bytes);
  for (char& c : out) {
    if (c == '-') c = '.';
    if (c == '_') c = '/';
  }
  return out;
}

bool IsBcryptChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '/';
}

absl::Status CheckPassword(absl::string_view password) {
  if (password.empty() || password.size() > kMaxPasswordBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a password must be 1 to ", kMaxPasswordBytes, " bytes"));
  }
  return absl::OkStatus();
}

std::optional<std::string> Pbkdf2(absl::string_view password,
                                  absl::string_view salt, uint32_t rounds) {
  std::string out(kPbkdf2DigestBytes, '\0');
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()),
                        static_cast<int>(salt.size()), static_cast<int>(rounds),
                        EVP_sha256(), static_cast<int>(out.size()),
                        reinterpret_cast<unsigned char*>(out.data())) != 1) {
    return std::nullopt;
  }
  return out;
}

// crypt_rn with its 32 KiB work area on the heap, not a small stack.
std::optional<std::string> Bcrypt(absl::string_view password,
                                  const std::string& setting) {
  auto data = std::make_unique<crypt_data>();
  const std::string phrase(password);
  const char* out = crypt_rn(phrase.c_str(), setting.c_str(), data.get(),
                             static_cast<int>(sizeof(crypt_data)));
  if (out == nullptr || out[0] == '*') return std::nullopt;
  return std::string(out);
}

absl::StatusOr<PasswordHash> ParsePbkdf2(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(
      absl::string_view(text).substr(sizeof(kPbkdf2Prefix) - 1), '$');
  if (parts.size() != 3) {
    return absl::InvalidArgumentError(
        "a PBKDF2 hash is $pbkdf2-sha256$ROUNDS$SALT$HASH");
  }
  PasswordHash h;
  h.scheme = PasswordScheme::kPbkdf2Sha256;
  h.text = std::string(text);
  if (!absl::SimpleAtoi(parts[0], &h.rounds) || h.rounds < kMinPbkdf2Rounds ||
      h.rounds > kMaxPbkdf2Rounds) {
    return absl::InvalidArgumentError(
        absl::StrCat("PBKDF2 rounds must be between ", kMinPbkdf2Rounds,
                     " and ", kMaxPbkdf2Rounds, ", not \"", parts[0], "\""));
  }
  std::optional<std::string> salt = Ab64Decode(parts[1]);
  if (!salt.has_value() || salt->size() < kMinPbkdf2SaltBytes ||
      salt->size() > kMaxPbkdf2SaltBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a PBKDF2 salt must be ", kMinPbkdf2SaltBytes, " to ",
                     kMaxPbkdf2SaltBytes, " bytes in passlib's base64"));
  }
  std::optional<std::string> digest = Ab64Decode(parts[2]);
  if (!digest.has_value() || digest->size() != kPbkdf2DigestBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a PBKDF2-SHA256 hash must be ", kPbkdf2DigestBytes,
                     " bytes in passlib's base64"));
  }
  h.salt = *std::move(salt);
  h.digest = *std::move(digest);
  return h;
}

absl::StatusOr<PasswordHash> ParseBcrypt(absl::string_view text) {
  // $2b$CC$ then 22 chars of salt and 31 of hash.
  if (text.size() != kBcryptHashChars || text[6] != '$' ||
      !absl::ascii_isdigit(static_cast<unsigned char>(text[4])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(text[5]))) {
    return absl::InvalidArgumentError(
        "a bcrypt hash is $2b$CC$ and 53 characters (60 in all)");
  }
  for (char c : text.substr(7)) {
    if (!IsBcryptChar(c)) {
      return absl::InvalidArgumentError(
          "a bcrypt hash holds only [./A-Za-z0-9] after $2b$CC$");
    }
  }
  PasswordHash h;
  h.scheme = PasswordScheme::kBcrypt;
  h.text = std::string(text);
  h.rounds = static_cast<uint32_t>((text[4] - '0') * 10 + (text[5] - '0'));
  if (h.rounds < kMinBcryptCost || h.rounds > kMaxBcryptCost) {
    return absl::InvalidArgumentError(
        absl::StrCat("bcrypt cost must be between ", kMinBcryptCost, " and ",
                     kMaxBcryptCost, ", not ", h.rounds));
  }
  return h;
}

}  // namespace

absl::StatusOr<PasswordHash> ParsePasswordHash(absl::string_view text) {
  if (absl::StartsWith(text, kPbkdf2Prefix)) return ParsePbkdf2(text);
  if (absl::StartsWith(text, "$2a$") || absl::StartsWith(text, "$2b$") ||
      absl::StartsWith(text, "$2y$")) {
    return ParseBcrypt(text);
  }
  if (absl::StartsWith(text, "$apr1$") || absl::StartsWith(text, "{SHA}")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MD5 and SHA-1 htpasswd hashes are too weak to accept; ", kFormats));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("not a password hash we accept; ", kFormats));
}

bool PasswordMatches(const PasswordHash& h, absl::string_view password) {
  if (!CheckPassword(password).ok()) return false;
  if (h.scheme == PasswordScheme::kPbkdf2Sha256) {
    std::optional<std::string> d = Pbkdf2(password, h.salt, h.rounds);
    return d.has_value() && d->size() == h.digest.size() &&
           CRYPTO_memcmp(d->data(), h.digest.data(), d->size()) == 0;
  }
  // bcrypt ignores bytes past 72 and stops at a NUL: a password that
  // differs only there must not pass as the same one.
  if (password.size() > kMaxBcryptPasswordBytes ||
      password.find('\0') != absl::string_view::npos) {
    return false;
  }
  std::optional<std::string> d = Bcrypt(password, h.text);
  return d.has_value() && d->size() == h.text.size() &&
         CRYPTO_memcmp(d->data(), h.text.data(), d->size()) == 0;
}

absl::StatusOr<std::string> HashPassword(absl::string_view password,
                                         PasswordScheme scheme,
                                         uint32_t rounds) {
  if (absl::Status s = CheckPassword(password); !s.ok()) return s;
  if (scheme == PasswordScheme::kPbkdf2Sha256) {
    if (rounds == 0) rounds = kDefaultPbkdf2Rounds;
    if (rounds < kMinPbkdf2Rounds || rounds > kMaxPbkdf2Rounds) {
      return absl::InvalidArgumentError(
          absl::StrCat("PBKDF2 rounds must be between ", kMinPbkdf2Rounds,
                       " and ", kMaxPbkdf2Rounds));
    }
    const std::string salt = RandomBytes(kPbkdf2SaltBytes);
    std::optional<std::string> d = Pbkdf2(password, salt, rounds);
    if (!d.has_value()) return absl::InternalError("PBKDF2 failed");
    return absl::StrCat(kPbkdf2Prefix, rounds, "$", Ab64Encode(salt), "$",
                        Ab64Encode(*d));
  }
  if (rounds == 0) rounds = kDefaultBcryptCost;
  if (rounds < kMinBcryptCost || rounds > kMaxBcryptCost) {
    return absl::InvalidArgumentError(
        absl::StrCat("bcrypt cost must be between ", kMinBcryptCost, " and ",
                     kMaxBcryptCost));
  }
  if (password.size() > kMaxBcryptPasswordBytes ||
      password.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("bcrypt reads only ", kMaxBcryptPasswordBytes,
                     " bytes and no NUL; use PBKDF2 for this password"));
  }
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  const std::string rbytes = RandomBytes(16);
  if (crypt_gensalt_rn("$2b$", rounds, rbytes.data(),
                       static_cast<int>(rbytes.size()), setting,
                       sizeof(setting)) == nullptr) {
    return absl::InternalError("crypt_gensalt_rn failed for bcrypt");
  }
  std::optional<std::string> d = Bcrypt(password, setting);
  if (!d.has_value()) return absl::InternalError("bcrypt failed");
  return *d;
}

absl::StatusOr<std::vector<BasicAuthUser>> ParseBasicAuthUsers(
    const std::vector<std::string>& entries, absl::string_view what) {
  if (entries.size() > kMaxBasicAuthUsers) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": at most ", kMaxBasicAuthUsers, " users, not ",
                     entries.size()));
  }
  std::vector<BasicAuthUser> users;
  absl::flat_hash_set<std::string> seen;
  for (const std::string& e : entries) {
    const size_t colon = e.find(':');
    if (colon == std::string::npos || colon == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": \"", absl::string_view(e).substr(0, 40),
                       "\" is not USER:HASH"));
    }
    BasicAuthUser u;
    u.user = e.substr(0, colon);
    if (u.user.size() > kMaxBasicAuthUserBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": a user name must be at most ",
                       kMaxBasicAuthUserBytes, " bytes"));
    }
    for (char c : u.user) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": a user name must not contain control characters"));
      }
    }
    absl::StatusOr<PasswordHash> h =
        ParsePasswordHash(absl::string_view(e).substr(colon + 1));
    if (!h.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": user \"", u.user, "\": ", h.status().message()));
    }
    if (!seen.insert(u.user).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": user \"", u.user, "\" appears twice"));
    }
    u.hash = *std::move(h);
    users.push_back(std::move(u));
  }
  return users;
}

absl::StatusOr<std::vector<std::string>> ReadBasicAuthFile(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--basic-auth-file: cannot read ", path));
  }
  std::vector<std::string> entries;
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    entries.emplace_back(l);
  }
  if (in.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--basic-auth-file: error reading ", path));
  }
  return entries;
}

}  // namespace tunnel::common
