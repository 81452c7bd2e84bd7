// libFuzzer target: the header rules both directions of the translation
// use (common/headers: hop-by-hop stripping, the unsafe-field filter the
// gateway applies to agents' responses, lookups) and the front door's
// strict request-head check (httpfront/request_head), which decides what
// of a visitor's head reaches httplib and the Envelope at all; and the
// UTF-8 check and Latin-1 view (common::IsUtf8, common::Utf8Text); header
// blocks (common/header_block: reading, packing, the in-place filters).
//
// Input: raw bytes. As a head they go to FindHeadEnd/CheckRequestHead; split
// at '\n' into "name:value" fields they form a header list; as they are,
// a header block.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "google/protobuf/stubs/common.h"
#include "httpfront/request_head.h"
#include "tunnel/v1/tunnel.pb.h"

namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

void FuzzHead(absl::string_view in) {
  using namespace tunnel::httpfront;
  size_t end = FindHeadEnd(in);
  if (end == absl::string_view::npos) {
    HeadRejection r = HeadTooLarge(in, in.size());
    Check(r.status == 414 || r.status == 431);
    return;
  }
  Check(end <= in.size());
  absl::string_view head = in.substr(0, end);
  HeadRejection r = CheckRequestHead(head);
  if (r.status == 0) {
    // What passes is what httplib parses without its lenient paths.
    Check(absl::EndsWith(head, "\r\n\r\n"));
    Check(head.find('\0') == absl::string_view::npos);
    Check(absl::StrContains(head, " HTTP/1."));
    for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
      Check(line.find('\r') == absl::string_view::npos);
      Check(line.find('\n') == absl::string_view::npos);
    }
  } else {
    Check(r.status == 400 || r.status == 414 || r.status == 431 ||
          r.status == 501 || r.status == 505);
    std::string answer = RejectionResponse(r);
    Check(absl::StartsWith(answer, "HTTP/1.1 4") ||
          absl::StartsWith(answer, "HTTP/1.1 5"));
    Check(absl::StrContains(answer, "\r\nConnection: close\r\n"));
  }
}

void FuzzList(absl::string_view in) {
  using namespace tunnel::common;
  HeaderList list;
  for (absl::string_view field : absl::StrSplit(in, '\n')) {
    std::pair<absl::string_view, absl::string_view> nv =
        absl::StrSplit(field, absl::MaxSplits(':', 1));
    AddHeader(&list, nv.first, nv.second);
  }
  HeaderList safe = list;
  const int dropped = DropUnsafeHeaders(&safe);
  Check(dropped >= 0 && safe.size() + dropped == list.size());
  for (const auto& h : safe) {
    Check(IsValidHeaderName(h.name()) && IsValidHeaderValue(h.value()));
    Check(h.name().find_first_of("\r\n: \0") == std::string::npos);
  }
  HeaderList stripped = safe;
  StripHopByHop(&stripped);
  Check(stripped.size() <= safe.size());
  for (const auto& h : stripped) {
    Check(!IsHopByHopHeader(h.name()));
    // Fields named by a Connection header are gone too.
    for (const auto& c : safe) {
      if (!absl::EqualsIgnoreCase(c.name(), "connection")) continue;
      for (absl::string_view t : absl::StrSplit(c.value(), ',')) {
        t = absl::StripAsciiWhitespace(t);
        Check(t.empty() || !absl::EqualsIgnoreCase(h.name(), t));
      }
    }
  }
  if (!list.empty()) {
    const std::string name = list.Get(0).name();
    Check(FindHeader(list, name) != nullptr);
    HeaderList removed = list;
    RemoveHeader(&removed, name);
    Check(FindHeader(removed, name) == nullptr);
  }
}

// The input as a header block (common/header_block): what reads back packs
// to the same fields; the in-place filters keep a malformed block as it is
// and leave only what they must in a well-formed one.
void FuzzBlock(absl::string_view in) {
  using namespace tunnel::common;
  using Fields = std::vector<std::pair<std::string, std::string>>;
  auto read = [](absl::string_view block, bool* malformed) {
    Fields out;
    HeaderBlockReader r(block);
    absl::string_view name, value;
    while (r.Next(&name, &value)) out.emplace_back(name, value);
    *malformed = r.malformed();
    return out;
  };
  bool malformed = false;
  const Fields fields = read(in, &malformed);
  Check(malformed == !IsWellFormedHeaderBlock(in));
  std::string packed;
  for (const auto& [n, v] : fields) AppendField(&packed, n, v);
  bool again_malformed = true;
  Check(read(packed, &again_malformed) == fields && !again_malformed);

  std::string safe(in);
  const int dropped = DropUnsafeHeaders(&safe);
  Check((dropped < 0) == malformed);
  if (malformed) {
    Check(safe == in);
    std::string stripped(in);
    Check(!StripHopByHop(&stripped) && stripped == in);
    tunnel::v1::TunnelResponse head;
    head.set_header_block(std::string(in));
    Check(!ExpandHeaderBlock(&head) && head.header_block() == in);
    return;
  }
  bool m = true;
  const Fields kept = read(safe, &m);
  Check(!m && kept.size() + static_cast<size_t>(dropped) == fields.size());
  for (const auto& [n, v] : kept) {
    Check(IsValidHeaderName(n) && IsValidHeaderValue(v));
  }
  std::string stripped = safe;
  Check(StripHopByHop(&stripped));
  const Fields left = read(stripped, &m);
  Check(!m && left.size() <= kept.size());
  for (const auto& [n, v] : left) Check(!IsHopByHopHeader(n));
  tunnel::v1::TunnelResponse head;
  head.set_header_block(std::string(in));
  Check(ExpandHeaderBlock(&head) && head.header_block().empty() &&
        static_cast<size_t>(head.headers_size()) == fields.size());
}

// Text for JSON: what IsUtf8 accepts, protobuf's own check accepts too (so
// a string field holding it parses); Utf8Text always gives such text and
// leaves text that already is alone.
void FuzzText(absl::string_view in) {
  using namespace tunnel::common;
  auto protobuf_ok = [](absl::string_view s) {
    return google::protobuf::internal::IsStructurallyValidUTF8(
        s.data(), static_cast<int>(s.size()));
  };
  const bool utf8 = IsUtf8(in);
  Check(!utf8 || protobuf_ok(in));
  const std::string text = Utf8Text(in);
  Check(IsUtf8(text) && protobuf_ok(text));
  Check(!utf8 || text == in);
  Check(text.size() >= in.size() && text.size() <= 2 * in.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  FuzzHead(in);
  FuzzList(in);
  FuzzBlock(in);
  FuzzText(in);
  return 0;
}
