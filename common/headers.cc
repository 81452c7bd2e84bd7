#include "common/headers.h"

#include <array>

#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tunnel::common {
namespace {
constexpr std::array<absl::string_view, 9> kHopByHop = {"connection",
                                                        "keep-alive",
                                                        "proxy-connection",
                                                        "transfer-encoding",
                                                        "te",
                                                        "trailer",
                                                        "upgrade",
                                                        "proxy-authenticate",
                                                        "proxy-authorization"};
// RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~ (a table: these run for
// every field of every request, twice).
constexpr std::array<bool, 256> MakeTokenTable() {
  std::array<bool, 256> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (char c : absl::string_view("!#$%&'*+-.^_`|~")) {
    t[static_cast<unsigned char>(c)] = true;
  }
  return t;
}
constexpr std::array<bool, 256> kToken = MakeTokenTable();
constexpr std::array<bool, 256> MakeNotInValueTable() {
  std::array<bool, 256> t{};
  t['\r'] = t['\n'] = t['\0'] = true;
  return t;
}
constexpr std::array<bool, 256> kNotInValue = MakeNotInValueTable();

// The length of the UTF-8 sequence at the start of `s`, 0 if none is.
size_t Utf8SequenceLength(absl::string_view s) {
  const auto at = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = at(0);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // the second byte's range
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // past U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < n || at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((at(k) & 0xc0) != 0x80) return 0;
  }
  return n;
}

}  // namespace

bool IsUtf8(absl::string_view s) {
  while (!s.empty()) {
    const size_t n = Utf8SequenceLength(s);
    if (n == 0) return false;
    s.remove_prefix(n);
  }
  return true;
}

std::string Utf8Text(absl::string_view s) {
  if (IsUtf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() * 2);
  while (!s.empty()) {
    size_t n = Utf8SequenceLength(s);
    if (n > 0) {
      out.append(s.data(), n);
    } else {  // a Latin-1 byte, 0x80-0xff: two bytes in UTF-8
      const unsigned char c = static_cast<unsigned char>(s[0]);
      out.push_back(static_cast<char>(0xc0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
      n = 1;
    }
    s.remove_prefix(n);
  }
  return out;
}

bool IsHopByHopHeader(absl::string_view name) {
  for (absl::string_view h : kHopByHop) {
    if (NameIs(name, h)) return true;
  }
  return false;
}

void HopByHop::Note(absl::string_view name, absl::string_view value) {
  if (!NameIs(name, "connection")) return;
  for (absl::string_view token : absl::StrSplit(value, ',')) {
    token = absl::StripAsciiWhitespace(token);
    // "keep-alive", "upgrade": dropped as hop-by-hop names anyway.
    if (!token.empty() && !IsHopByHopHeader(token)) named_.emplace_back(token);
  }
}

bool HopByHop::Drops(absl::string_view name) const {
  if (IsHopByHopHeader(name)) return true;
  for (absl::string_view n : named_) {
    if (NameIs(name, n)) return true;
  }
  return false;
}

void StripHopByHop(HeaderList* headers) {
  // Views into the fields' values: no field goes before DeleteSubrange.
  HopByHop hop;
  for (const auto& h : *headers) hop.Note(h.name(), h.value());
  int out = 0;
  for (int i = 0; i < headers->size(); ++i) {
    if (hop.Drops(headers->Get(i).name())) continue;
    if (out != i) headers->SwapElements(out, i);
    ++out;
  }
  headers->DeleteSubrange(out, headers->size() - out);
}

bool IsValidHeaderName(absl::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (!kToken[c]) return false;
  }
  return true;
}

bool IsValidHeaderValue(absl::string_view value) {
  for (unsigned char c : value) {
    if (kNotInValue[c]) return false;
  }
  return true;
}

int DropUnsafeHeaders(HeaderList* headers) {
  int out = 0;
  const int n = headers->size();
  for (int i = 0; i < n; ++i) {
    const tunnel::v1::HeaderField& h = headers->Get(i);
    if (!IsValidHeaderName(h.name()) || !IsValidHeaderValue(h.value())) {
      continue;
    }
    if (out != i) headers->SwapElements(out, i);
    ++out;
  }
  headers->DeleteSubrange(out, n - out);
  return n - out;
}

const std::string* FindHeader(const HeaderList& headers,
                              absl::string_view name) {
  for (const auto& h : headers) {
    if (NameIs(h.name(), name)) return &h.value();
  }
  return nullptr;
}

void RemoveHeader(HeaderList* headers, absl::string_view name) {
  int out = 0;
  for (int i = 0; i < headers->size(); ++i) {
    if (NameIs(headers->Get(i).name(), name)) continue;
    if (out != i) headers->SwapElements(out, i);
    ++out;
  }
  headers->DeleteSubrange(out, headers->size() - out);
}

void AddHeader(HeaderList* headers, absl::string_view name,
               absl::string_view value) {
  tunnel::v1::HeaderField* h = headers->Add();
  h->set_name(std::string(name));
  h->set_value(std::string(value));
}

ResponseHeadLine ParseResponseHeadLine(absl::string_view line, int* status,
                                       HeaderList* headers) {
  if (absl::StartsWith(line, "HTTP/")) {
    headers->Clear();
    *status = 0;
    absl::string_view rest = line.substr(line.find(' ') + 1);
    (void)absl::SimpleAtoi(rest.substr(0, 3), status);
    return ResponseHeadLine::kStatus;
  }
  absl::string_view stripped = absl::StripTrailingAsciiWhitespace(line);
  if (stripped.empty()) return ResponseHeadLine::kEnd;
  if ((line[0] == ' ' || line[0] == '\t') && !headers->empty()) {
    absl::StrAppend(headers->rbegin()->mutable_value(), " ",
                    absl::StripAsciiWhitespace(line));
    return ResponseHeadLine::kField;
  }
  const size_t colon = stripped.find(':');
  // A field whose name is not a token is dropped, as the gateway would.
  if (colon != absl::string_view::npos &&
      IsValidHeaderName(stripped.substr(0, colon))) {
    AddHeader(headers, stripped.substr(0, colon),
              absl::StripAsciiWhitespace(stripped.substr(colon + 1)));
  }
  return ResponseHeadLine::kField;
}

}  // namespace tunnel::common
