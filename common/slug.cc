#include "common/slug.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace tunnel::common {
namespace {
constexpr std::array<absl::string_view, 16> kReserved = {
    "www",     "api",    "app",   "relay",  "tunnel",  "admin",
    "gateway", "mail",   "login", "status", "metrics", "health",
    "static",  "assets", "root",  "ns"};
}  // namespace

bool IsReservedSlug(absl::string_view slug) {
  for (absl::string_view r : kReserved) {
    if (slug == r) return true;
  }
  return false;
}

absl::Status CheckSlug(absl::string_view slug) {
  if (slug.size() < kMinSlugLength || slug.size() > kMaxSlugLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("slug \"", slug, "\" must be ", kMinSlugLength, "-",
                     kMaxSlugLength, " characters long"));
  }
  for (char c : slug) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slug \"", slug,
          "\" may contain only lowercase letters, digits and '-'"));
    }
  }
  if (slug.front() == '-' || slug.back() == '-') {
    return absl::InvalidArgumentError(
        absl::StrCat("slug \"", slug, "\" must not start or end with '-'"));
  }
  if (IsReservedSlug(slug)) {
    return absl::InvalidArgumentError(
        absl::StrCat("slug \"", slug, "\" is reserved; choose another"));
  }
  return absl::OkStatus();
}

std::string RandomSlug() {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string bytes = RandomBytes(8);
  std::string out;
  for (unsigned char b : bytes) out.push_back(kAlphabet[b % 36]);
  return out;
}

}  // namespace tunnel::common
