#include "common/random.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>

#include "absl/random/random.h"

namespace tunnel::common {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";
constexpr char kBase64UrlAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Value of a base64url digit, or -1 for anything else (including '+' and '/'
// of standard base64, which we deliberately do not accept).
int Base64UrlValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

}  // namespace

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  if (n == 0) return out;
  // RAND_bytes only fails if the CSPRNG cannot be seeded. Every caller uses
  // the result for keys, nonces or ids, where a predictable value would be a
  // security hole, so there is no safe fallback: stop the process instead.
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()),
                 static_cast<int>(n)) != 1) {
    std::abort();
  }
  return out;
}

std::string RandomHex(size_t n_bytes) {
  return HexEncode(RandomBytes(n_bytes));
}

uint64_t RandomU64() {
  std::string bytes = RandomBytes(sizeof(uint64_t));
  uint64_t v;
  std::memcpy(&v, bytes.data(), sizeof(v));
  return v;
}

std::string NewUuid() {
  // Request ids need uniqueness, not secrecy: a per-thread generator seeded
  // from the OS (absl::BitGen) instead of a locked OpenSSL DRBG call on
  // every request.
  thread_local absl::BitGen gen;
  std::string b(16, '\0');
  for (size_t i = 0; i < 16; i += 8) {
    uint64_t r = absl::Uniform<uint64_t>(gen);
    std::memcpy(&b[i], &r, 8);
  }
  b[6] = static_cast<char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string hex = HexEncode(b);
  std::string out;
  out.reserve(36);
  out.append(hex, 0, 8).append(1, '-');
  out.append(hex, 8, 4).append(1, '-');
  out.append(hex, 12, 4).append(1, '-');
  out.append(hex, 16, 4).append(1, '-');
  out.append(hex, 20, 12);
  return out;
}

std::string Base64UrlEncode(absl::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                 (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                 static_cast<uint8_t>(bytes[i + 2]);
    out.push_back(kBase64UrlAlphabet[(v >> 18) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[(v >> 12) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[(v >> 6) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[v & 0x3f]);
  }
  size_t rest = bytes.size() - i;
  if (rest == 1) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    out.push_back(kBase64UrlAlphabet[(v >> 18) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[(v >> 12) & 0x3f]);
  } else if (rest == 2) {
    uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                 (static_cast<uint8_t>(bytes[i + 1]) << 8);
    out.push_back(kBase64UrlAlphabet[(v >> 18) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[(v >> 12) & 0x3f]);
    out.push_back(kBase64UrlAlphabet[(v >> 6) & 0x3f]);
  }
  return out;
}

std::optional<std::string> Base64UrlDecode(absl::string_view text) {
  // Padding is optional, but if present it must complete the last quantum
  // exactly; '=' anywhere else is an invalid character.
  if (text.size() % 4 == 0 && !text.empty()) {
    size_t pad = 0;
    while (pad < 2 && text[text.size() - 1 - pad] == '=') ++pad;
    text.remove_suffix(pad);
  }
  // A lone trailing digit carries only 6 bits: no whole byte, so invalid.
  if (text.size() % 4 == 1) return std::nullopt;

  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = Base64UrlValue(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  // Leftover bits must be zero, so each byte string has exactly one encoding
  // (otherwise two different secret texts would decode to the same key).
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

std::optional<std::string> Base64Decode(absl::string_view text) {
  std::string url(text);
  for (char& c : url) {
    if (c == '-' || c == '_') return std::nullopt;  // not this alphabet
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return Base64UrlDecode(url);
}

std::string HexEncode(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    uint8_t b = static_cast<uint8_t>(c);
    out.push_back(kHexDigits[b >> 4]);
    out.push_back(kHexDigits[b & 0x0f]);
  }
  return out;
}

}  // namespace tunnel::common
