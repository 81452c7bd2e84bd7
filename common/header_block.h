// A head's fields packed in one bytes field (TunnelRequest.header_block,
// TunnelResponse.header_block) instead of one HeaderField message each: a
// head costs one string, not three allocations per field, to build, send,
// parse and free. Each field is varint(name length), name, varint(value
// length), value; a head's fields are its `headers` followed by its block's.
#ifndef TUNNEL_COMMON_HEADER_BLOCK_H_
#define TUNNEL_COMMON_HEADER_BLOCK_H_

#include <string>

#include "absl/strings/string_view.h"
#include "common/headers.h"

namespace tunnel::common {

// Appends one field to `block`.
void AppendField(std::string* block, absl::string_view name,
                 absl::string_view value);

// A block's fields in order.
class HeaderBlockReader {
 public:
  explicit HeaderBlockReader(absl::string_view block) : rest_(block) {}
  // The next field; false at the end, or where the rest does not parse (a
  // length past the block's end): malformed() then says so.
  bool Next(absl::string_view* name, absl::string_view* value) {
    if (rest_.empty()) return false;
    if (Take(name) && Take(value)) return true;
    malformed_ = true;
    rest_ = {};
    return false;
  }
  bool malformed() const { return malformed_; }

 private:
  // A length and that many bytes after it. Inline for the usual one-byte
  // length (below 128).
  bool Take(absl::string_view* out) {
    if (!rest_.empty() && static_cast<unsigned char>(rest_[0]) < 0x80) {
      const size_t n = static_cast<unsigned char>(rest_[0]);
      if (n >= rest_.size()) return false;
      *out = rest_.substr(1, n);
      rest_.remove_prefix(1 + n);
      return true;
    }
    return TakeLong(out);
  }
  bool TakeLong(absl::string_view* out);

  absl::string_view rest_;
  bool malformed_ = false;
};

// Whether every field of `block` parses.
bool IsWellFormedHeaderBlock(absl::string_view block);

// Calls fn(name, value) for every field of a head (a TunnelRequest or a
// TunnelResponse), its `headers` first. False if its block is malformed
// (fn has then seen the fields before the fault).
template <typename Head, typename Fn>
bool ForEachField(const Head& head, Fn&& fn) {
  for (const tunnel::v1::HeaderField& h : head.headers()) {
    fn(absl::string_view(h.name()), absl::string_view(h.value()));
  }
  HeaderBlockReader r(head.header_block());
  absl::string_view name, value;
  while (r.Next(&name, &value)) fn(name, value);
  return !r.malformed();
}

// A head's fields as one list (for the inspector and other code that keeps
// or edits them; malformed blocks: the fields before the fault).
template <typename Head>
HeaderList FieldsOf(const Head& head) {
  HeaderList out;
  ForEachField(head, [&](absl::string_view name, absl::string_view value) {
    AddHeader(&out, name, value);
  });
  return out;
}

// Moves a head's block into its `headers` (for a peer that reads no
// blocks). False, and the head unchanged, if the block is malformed.
template <typename Head>
bool ExpandHeaderBlock(Head* head) {
  if (head->header_block().empty()) return true;
  if (!IsWellFormedHeaderBlock(head->header_block())) return false;
  HeaderBlockReader r(head->header_block());
  absl::string_view name, value;
  while (r.Next(&name, &value)) AddHeader(head->mutable_headers(), name, value);
  head->clear_header_block();
  return true;
}

// The first value of `name` (case-insensitive) in a head, if any.
template <typename Head>
bool FindField(const Head& head, absl::string_view name,
               absl::string_view* value) {
  if (const std::string* v = FindHeader(head.headers(), name)) {
    *value = *v;
    return true;
  }
  HeaderBlockReader r(head.header_block());
  absl::string_view n, v;
  while (r.Next(&n, &v)) {
    if (NameIs(n, name)) {
      *value = v;
      return true;
    }
  }
  return false;
}

// StripHopByHop for a block: removes hop-by-hop fields and every field a
// Connection field names, keeping the order of the rest. Rewrites the block
// in place, and only when a field goes. False if the block is malformed
// (then unchanged).
bool StripHopByHop(std::string* block);

// DropUnsafeHeaders for a block: removes every field whose name is not a
// token or whose value holds CR, LF or NUL, in place; how many it removed,
// or -1 if the block is malformed (then unchanged).
int DropUnsafeHeaders(std::string* block);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_HEADER_BLOCK_H_
