// Public tunnel names. A slug is one DNS label: 3-32 chars of [a-z0-9-],
// neither starting nor ending with '-', and not one of the reserved names
// the gateway keeps for itself.
#ifndef TUNNEL_COMMON_SLUG_H_
#define TUNNEL_COMMON_SLUG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tunnel::common {

inline constexpr size_t kMinSlugLength = 3;
inline constexpr size_t kMaxSlugLength = 32;

bool IsReservedSlug(absl::string_view slug);
// OK, or INVALID_ARGUMENT saying which rule the slug breaks.
absl::Status CheckSlug(absl::string_view slug);
// 8 random lowercase alphanumerics (never reserved).
std::string RandomSlug();

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_SLUG_H_
