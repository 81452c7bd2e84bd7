// How the request inspector shows a captured body: its kind (json, form,
// text, binary) from its Content-Type and bytes, and its text, decompressed
// first when it was sent gzip, deflate or br (zlib and Debian's libbrotli,
// which cpp-httplib already links). Decompressed output is bounded, so a
// small body that inflates to gigabytes costs at most `max_text`.
#ifndef TUNNEL_AGENT_BODY_VIEW_H_
#define TUNNEL_AGENT_BODY_VIEW_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::agent {

struct BodyView {
  std::string kind;  // "empty", "json", "form", "text" or "binary"
  std::string text;  // for json, form and text: the (decompressed) body
  bool decompressed = false;
  bool text_truncated = false;  // decompressed output stopped at max_text
  std::string decode_error;     // why decompressing failed or stopped early
};

// `data`: the captured bytes (a prefix of the body when `truncated`).
BodyView ViewBody(absl::string_view data, bool truncated,
                  absl::string_view content_type,
                  absl::string_view content_encoding, size_t max_text);

// Decompresses `data` sent with `encoding` (gzip, x-gzip, deflate or br) into
// at most `max_out` bytes. False (and `*error`) when the encoding is not one
// of those or the bytes are not valid; a valid prefix of a stream (a cut-off
// body) gives what it holds and `*error` says it ended early.
bool Decompress(absl::string_view data, absl::string_view encoding,
                size_t max_out, std::string* out, std::string* error);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_BODY_VIEW_H_
