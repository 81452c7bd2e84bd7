#include "common/header_block.h"

#include <cstdint>
#include <cstring>

#include "absl/container/inlined_vector.h"

namespace tunnel::common {
namespace {

void AppendVarint(std::string* out, size_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A length at the front of `*rest` (at most five bytes: a block is
// smaller than 4 GiB), and that many bytes after it.
bool TakeLengthPrefixed(absl::string_view* rest, absl::string_view* out) {
  uint64_t v = 0;
  size_t i = 0;
  while (true) {
    if (i == rest->size() || i == 5) return false;
    const auto c = static_cast<unsigned char>((*rest)[i]);
    v |= static_cast<uint64_t>(c & 0x7f) << (7 * i);
    ++i;
    if ((c & 0x80) == 0) break;
  }
  if (v > rest->size() - i) return false;
  *out = rest->substr(i, static_cast<size_t>(v));
  rest->remove_prefix(i + static_cast<size_t>(v));
  return true;
}

// Keeps the fields whose flag is set, moving them down in place.
void Compact(std::string* block, const absl::InlinedVector<bool, 32>& keep) {
  absl::string_view rest(*block);
  size_t out = 0;
  for (bool k : keep) {
    const size_t at = static_cast<size_t>(rest.data() - block->data());
    absl::string_view name, value;
    TakeLengthPrefixed(&rest, &name);
    TakeLengthPrefixed(&rest, &value);
    const size_t len = static_cast<size_t>(rest.data() - block->data()) - at;
    if (!k) continue;
    if (out != at) std::memmove(&(*block)[out], block->data() + at, len);
    out += len;
  }
  block->resize(out);
}

}  // namespace

void AppendField(std::string* block, absl::string_view name,
                 absl::string_view value) {
  AppendVarint(block, name.size());
  block->append(name.data(), name.size());
  AppendVarint(block, value.size());
  block->append(value.data(), value.size());
}

bool HeaderBlockReader::Next(absl::string_view* name,
                             absl::string_view* value) {
  if (rest_.empty() || malformed_) return false;
  if (!TakeLengthPrefixed(&rest_, name) || !TakeLengthPrefixed(&rest_, value)) {
    malformed_ = true;
    rest_ = {};
    return false;
  }
  return true;
}

bool IsWellFormedHeaderBlock(absl::string_view block) {
  HeaderBlockReader r(block);
  absl::string_view name, value;
  while (r.Next(&name, &value)) {
  }
  return !r.malformed();
}

bool StripHopByHop(std::string* block) {
  if (!IsWellFormedHeaderBlock(*block)) return false;
  // Views into the block: every flag is set before a byte moves.
  HopByHop hop;
  absl::string_view name, value;
  HeaderBlockReader notes(*block);
  while (notes.Next(&name, &value)) hop.Note(name, value);
  absl::InlinedVector<bool, 32> keep;
  bool drops = false;
  HeaderBlockReader fields(*block);
  while (fields.Next(&name, &value)) {
    keep.push_back(!hop.Drops(name));
    drops |= !keep.back();
  }
  if (drops) Compact(block, keep);
  return true;
}

int DropUnsafeHeaders(std::string* block) {
  if (!IsWellFormedHeaderBlock(*block)) return -1;
  absl::InlinedVector<bool, 32> keep;
  int dropped = 0;
  absl::string_view name, value;
  HeaderBlockReader fields(*block);
  while (fields.Next(&name, &value)) {
    const bool k = IsValidHeaderName(name) && IsValidHeaderValue(value);
    keep.push_back(k);
    dropped += k ? 0 : 1;
  }
  if (dropped > 0) Compact(block, keep);
  return dropped;
}

}  // namespace tunnel::common
