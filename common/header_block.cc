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

// Keeps the fields whose flag is set, moving them down in place (the
// block is well formed: one flag a field).
void Compact(std::string* block, const absl::InlinedVector<bool, 32>& keep) {
  HeaderBlockReader r(*block);
  absl::string_view name, value;
  size_t out = 0;
  size_t at = 0;
  for (bool k : keep) {
    r.Next(&name, &value);
    const size_t end =
        static_cast<size_t>(value.data() - block->data()) + value.size();
    if (k) {
      if (out != at) std::memmove(&(*block)[out], block->data() + at, end - at);
      out += end - at;
    }
    at = end;
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

bool HeaderBlockReader::TakeLong(absl::string_view* out) {
  // At most five bytes: a block is smaller than 4 GiB.
  uint64_t v = 0;
  size_t i = 0;
  while (true) {
    if (i == rest_.size() || i == 5) return false;
    const auto c = static_cast<unsigned char>(rest_[i]);
    v |= static_cast<uint64_t>(c & 0x7f) << (7 * i);
    ++i;
    if ((c & 0x80) == 0) break;
  }
  if (v > rest_.size() - i) return false;
  *out = rest_.substr(i, static_cast<size_t>(v));
  rest_.remove_prefix(i + static_cast<size_t>(v));
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
  // One pass for the hop-by-hop names; a second only for other names a
  // Connection field lists (views into the block: every flag is set
  // before a byte moves).
  HopByHop hop;
  absl::InlinedVector<bool, 32> keep;
  bool drops = false;
  absl::string_view name, value;
  HeaderBlockReader fields(*block);
  while (fields.Next(&name, &value)) {
    hop.Note(name, value);
    keep.push_back(!IsHopByHopHeader(name));
    drops |= !keep.back();
  }
  if (fields.malformed()) return false;
  if (hop.names_others()) {
    HeaderBlockReader again(*block);
    for (size_t i = 0; again.Next(&name, &value); ++i) {
      if (keep[i] && hop.Drops(name)) keep[i] = false;
      drops |= !keep[i];
    }
  }
  if (drops) Compact(block, keep);
  return true;
}

int DropUnsafeHeaders(std::string* block) {
  absl::InlinedVector<bool, 32> keep;
  int dropped = 0;
  absl::string_view name, value;
  HeaderBlockReader fields(*block);
  while (fields.Next(&name, &value)) {
    keep.push_back(IsValidHeaderName(name) && IsValidHeaderValue(value));
    dropped += keep.back() ? 0 : 1;
  }
  if (fields.malformed()) return -1;
  if (dropped > 0) Compact(block, keep);
  return dropped;
}

}  // namespace tunnel::common
