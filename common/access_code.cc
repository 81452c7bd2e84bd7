#include "common/access_code.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace tunnel::common {
namespace {

absl::StatusOr<std::string> Derive(absl::string_view code,
                                   absl::string_view salt,
                                   uint32_t iterations) {
  std::string out(kAccessCodeHashBytes, '\0');
  if (PKCS5_PBKDF2_HMAC(code.data(), static_cast<int>(code.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()),
                        static_cast<int>(salt.size()),
                        static_cast<int>(iterations), EVP_sha256(),
                        static_cast<int>(out.size()),
                        reinterpret_cast<unsigned char*>(out.data())) != 1) {
    return absl::InternalError("PBKDF2 failed");
  }
  return out;
}

}  // namespace

absl::Status CheckAccessCode(absl::string_view code) {
  if (code.empty() || code.size() > kMaxAccessCodeBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an access code must be 1 to ", kMaxAccessCodeBytes, " bytes"));
  }
  for (char c : code) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          "an access code must not contain control characters");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<tunnel::v1::AccessCodeHash> HashAccessCode(
    absl::string_view code, uint32_t iterations) {
  if (absl::Status s = CheckAccessCode(code); !s.ok()) return s;
  tunnel::v1::AccessCodeHash h;
  h.set_salt(RandomBytes(kAccessCodeSaltBytes));
  h.set_iterations(iterations);
  absl::StatusOr<std::string> d = Derive(code, h.salt(), iterations);
  if (!d.ok()) return d.status();
  h.set_hash(*std::move(d));
  if (absl::Status s = CheckAccessCodeHash(h); !s.ok()) return s;
  return h;
}

absl::Status CheckAccessCodeHash(const tunnel::v1::AccessCodeHash& h) {
  if (h.salt().size() != kAccessCodeSaltBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "access_code.salt must be ", kAccessCodeSaltBytes, " bytes"));
  }
  if (h.hash().size() != kAccessCodeHashBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "access_code.hash must be ", kAccessCodeHashBytes, " bytes"));
  }
  if (h.iterations() < kMinAccessCodeIterations ||
      h.iterations() > kMaxAccessCodeIterations) {
    return absl::InvalidArgumentError(absl::StrCat(
        "access_code.iterations must be between ", kMinAccessCodeIterations,
        " and ", kMaxAccessCodeIterations, ", not ", h.iterations()));
  }
  return absl::OkStatus();
}

bool AccessCodeMatches(const tunnel::v1::AccessCodeHash& h,
                       absl::string_view code) {
  if (!CheckAccessCodeHash(h).ok() || !CheckAccessCode(code).ok()) {
    return false;
  }
  absl::StatusOr<std::string> d = Derive(code, h.salt(), h.iterations());
  return d.ok() &&
         CRYPTO_memcmp(d->data(), h.hash().data(), kAccessCodeHashBytes) == 0;
}

}  // namespace tunnel::common
