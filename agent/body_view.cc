#include "agent/body_view.h"

#include <brotli/decode.h>
#include <zlib.h>

#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tunnel::agent {
namespace {

// zlib: windowBits 15+32 reads gzip and zlib streams; -15 raw deflate (what
// some servers send as "deflate").
bool Inflate(absl::string_view data, int window_bits, size_t max_out,
             std::string* out, std::string* error) {
  z_stream z{};
  if (inflateInit2(&z, window_bits) != Z_OK) {
    *error = "zlib could not start";
    return false;
  }
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  char buf[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof(buf);
    rc = inflate(&z, Z_NO_FLUSH);
    const size_t got = sizeof(buf) - z.avail_out;
    const size_t room = max_out - out->size();
    out->append(buf, got < room ? got : room);
    if (out->size() >= max_out) break;
    if (rc == Z_BUF_ERROR && z.avail_in == 0) break;  // input ran out
  }
  const std::string why = z.msg != nullptr ? z.msg : "error";
  inflateEnd(&z);
  if (rc == Z_STREAM_END || out->size() >= max_out) return true;
  if (rc == Z_OK || rc == Z_BUF_ERROR) {
    *error = "the compressed body ends early";
    return true;
  }
  *error = absl::StrCat("not valid compressed data (zlib: ", why, ")");
  return false;
}

bool Unbrotli(absl::string_view data, size_t max_out, std::string* out,
              std::string* error) {
  BrotliDecoderState* st =
      BrotliDecoderCreateInstance(nullptr, nullptr, nullptr);
  if (st == nullptr) {
    *error = "brotli could not start";
    return false;
  }
  size_t avail_in = data.size();
  const uint8_t* next_in = reinterpret_cast<const uint8_t*>(data.data());
  uint8_t buf[16384];
  BrotliDecoderResult rc = BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT;
  while (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT &&
         out->size() < max_out) {
    size_t avail_out = sizeof(buf);
    uint8_t* next_out = buf;
    rc = BrotliDecoderDecompressStream(st, &avail_in, &next_in, &avail_out,
                                       &next_out, nullptr);
    const size_t got = sizeof(buf) - avail_out;
    const size_t room = max_out - out->size();
    out->append(reinterpret_cast<char*>(buf), got < room ? got : room);
  }
  const char* why =
      rc == BROTLI_DECODER_RESULT_ERROR
          ? BrotliDecoderErrorString(BrotliDecoderGetErrorCode(st))
          : nullptr;
  BrotliDecoderDestroyInstance(st);
  if (rc == BROTLI_DECODER_RESULT_ERROR) {
    *error = absl::StrCat("not valid brotli data (", why, ")");
    return false;
  }
  if (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) {
    *error = "the compressed body ends early";
  }
  return true;
}

// Valid UTF-8 without control characters other than tab, CR, LF: text.
bool LooksLikeText(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return false;
      if (c == 0x7f) return false;
      ++i;
      continue;
    }
    int more = c >= 0xf0 && c < 0xf5   ? 3
               : c >= 0xe0             ? 2
               : c >= 0xc2 && c < 0xe0 ? 1
                                       : -1;
    if (more < 0) return false;
    // A sequence cut by the capture limit at the very end is still text.
    if (i + more >= s.size()) return true;
    for (int k = 1; k <= more; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += more + 1;
  }
  return true;
}

}  // namespace

bool Decompress(absl::string_view data, absl::string_view encoding,
                size_t max_out, std::string* out, std::string* error) {
  out->clear();
  const std::string enc =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(encoding));
  if (enc == "gzip" || enc == "x-gzip") {
    return Inflate(data, 15 + 32, max_out, out, error);
  }
  if (enc == "deflate") {
    if (Inflate(data, 15, max_out, out, error)) return true;
    out->clear();
    error->clear();
    return Inflate(data, -15, max_out, out, error);
  }
  if (enc == "br") return Unbrotli(data, max_out, out, error);
  *error = absl::StrCat("content encoding \"", encoding, "\" is not shown");
  return false;
}

BodyView ViewBody(absl::string_view data, bool truncated,
                  absl::string_view content_type,
                  absl::string_view content_encoding, size_t max_text) {
  BodyView v;
  if (data.empty() && !truncated) {
    v.kind = "empty";
    return v;
  }
  std::string decoded;
  absl::string_view bytes = data;
  const absl::string_view enc = absl::StripAsciiWhitespace(content_encoding);
  if (!enc.empty() && !absl::EqualsIgnoreCase(enc, "identity")) {
    if (Decompress(data, enc, max_text, &decoded, &v.decode_error)) {
      v.decompressed = true;
      v.text_truncated = decoded.size() >= max_text;
      if (truncated && v.decode_error.empty()) {
        v.decode_error = "only the first bytes were kept";
      }
      bytes = decoded;
    } else {
      v.kind = "binary";
      return v;
    }
  } else if (bytes.size() > max_text) {
    bytes = bytes.substr(0, max_text);
    v.text_truncated = true;
  }
  const std::string type = absl::AsciiStrToLower(absl::StripAsciiWhitespace(
      content_type.substr(0, content_type.find(';'))));
  const bool textual = LooksLikeText(bytes);
  if (textual &&
      (absl::EndsWith(type, "/json") || absl::EndsWith(type, "+json"))) {
    v.kind = "json";
  } else if (textual && type == "application/x-www-form-urlencoded") {
    v.kind = "form";
  } else if (textual) {
    v.kind = "text";
  } else {
    v.kind = "binary";
    return v;
  }
  v.text = std::string(bytes);
  return v;
}

}  // namespace tunnel::agent
