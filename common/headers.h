// HTTP header rules shared by the front door and the agent: which fields are
// hop-by-hop (never forwarded), and which names/values are safe to emit.
#ifndef TUNNEL_COMMON_HEADERS_H_
#define TUNNEL_COMMON_HEADERS_H_

#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_field.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::common {

using HeaderList = google::protobuf::RepeatedPtrField<tunnel::v1::HeaderField>;

// Whether field name `a` is `b`, ignoring case. The length check is inline:
// most names differ in length, and this runs per field against many names.
inline bool NameIs(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && absl::EqualsIgnoreCase(a, b);
}

// Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, TE, Trailer,
// Upgrade, Proxy-Authenticate, Proxy-Authorization (case-insensitive).
bool IsHopByHopHeader(absl::string_view name);

// Which fields stay at this hop: the hop-by-hop ones, and every field a
// Connection field names (RFC 9110 section 7.6.1). Note every field first;
// it keeps views into the Connection values it was given.
class HopByHop {
 public:
  void Note(absl::string_view name, absl::string_view value);
  bool Drops(absl::string_view name) const;
  // Whether a Connection field named a field that is not hop-by-hop anyway.
  bool names_others() const { return !named_.empty(); }

 private:
  absl::InlinedVector<absl::string_view, 4> named_;
};

// Removes hop-by-hop fields and every field named in a Connection header.
// Keeps the order of the rest.
void StripHopByHop(HeaderList* headers);

// RFC 9110 token characters; rejects empty names, CR, LF, NUL, ':' etc.
bool IsValidHeaderName(absl::string_view name);
// Rejects CR, LF and NUL (the characters that enable header injection).
bool IsValidHeaderValue(absl::string_view value);

// Removes every field whose name or value fails the two checks above, keeping
// the order of the rest; returns how many it removed. For header lists that
// came from a peer and are about to be written as HTTP.
int DropUnsafeHeaders(HeaderList* headers);

// First value of `name` (case-insensitive), or nullptr.
const std::string* FindHeader(const HeaderList& headers,
                              absl::string_view name);
void RemoveHeader(HeaderList* headers, absl::string_view name);
void AddHeader(HeaderList* headers, absl::string_view name,
               absl::string_view value);

// Whether `s` is UTF-8 (RFC 3629: no overlong forms, surrogates or code
// points past U+10FFFF), as protobuf's string fields and JSON need it.
bool IsUtf8(absl::string_view s);
// `s` as UTF-8 text for a JSON view: valid sequences as they are, every
// other byte read as Latin-1 (as browsers show such header bytes).
std::string Utf8Text(absl::string_view s);

// One line of an HTTP/1.x response head, as libcurl's header callback
// hands them over: a status line ("HTTP/1.1 200 OK": `*headers` cleared,
// `*status` set; a 1xx head is followed by the final one), a field (added
// to `*headers`, unless its name is not a token; an obsolete folded
// continuation joins the one before), or
// the blank line that ends a head.
enum class ResponseHeadLine { kStatus, kField, kEnd };
ResponseHeadLine ParseResponseHeadLine(absl::string_view line, int* status,
                                       HeaderList* headers);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_HEADERS_H_
