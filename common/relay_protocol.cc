#include "common/relay_protocol.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace tunnel::common::relay {
namespace {

void PutU64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

uint64_t GetU64(absl::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

const unsigned char* U(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

std::string EncodeMessage(const Message& m) {
  std::string out;
  out.reserve(kHeaderBytes + m.payload.size());
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(m.type));
  out.push_back(static_cast<char>(m.dir));
  out.push_back(0);
  PutU64(&out, m.seq);
  PutU64(&out, m.ts_ms);
  std::string conn = m.conn;
  conn.resize(kNonceBytes, '\0');
  out += conn;
  out += m.payload;
  return out;
}

absl::StatusOr<Message> DecodeMessage(absl::string_view bytes) {
  if (bytes.size() < kHeaderBytes) {
    return absl::InvalidArgumentError("message shorter than its header");
  }
  if (static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("message version ", static_cast<uint8_t>(bytes[0])));
  }
  const uint8_t type = static_cast<uint8_t>(bytes[1]);
  const uint8_t dir = static_cast<uint8_t>(bytes[2]);
  if (type < static_cast<uint8_t>(Type::kHello) ||
      type > static_cast<uint8_t>(Type::kWindow)) {
    return absl::InvalidArgumentError(absl::StrCat("message type ", type));
  }
  if (dir != static_cast<uint8_t>(Dir::kC2H) &&
      dir != static_cast<uint8_t>(Dir::kH2C)) {
    return absl::InvalidArgumentError(absl::StrCat("message direction ", dir));
  }
  if (bytes[3] != 0) return absl::InvalidArgumentError("reserved byte set");
  Message m;
  m.type = static_cast<Type>(type);
  m.dir = static_cast<Dir>(dir);
  m.seq = GetU64(bytes.substr(4, 8));
  m.ts_ms = GetU64(bytes.substr(12, 8));
  m.conn = std::string(bytes.substr(20, kNonceBytes));
  m.payload = std::string(bytes.substr(kHeaderBytes));
  return m;
}

std::string Aad(absl::string_view session, Dir dir) {
  return absl::StrCat("tunnel-relay|v=1|session=", session,
                      "|dir=", dir == Dir::kC2H ? "c2h" : "h2c");
}

std::string SealFrame(absl::string_view key, absl::string_view session, Dir dir,
                      absl::string_view plaintext, absl::string_view iv) {
  const std::string fresh = iv.empty() ? RandomBytes(kIvBytes) : std::string();
  if (iv.empty()) iv = fresh;
  const std::string aad = Aad(session, dir);
  std::string out(kIvBytes + kTagBytes + plaintext.size(), '\0');
  out.replace(0, kIvBytes, iv.data(), kIvBytes);
  auto* ct = reinterpret_cast<unsigned char*>(&out[kIvBytes + kTagBytes]);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int n = 0;
  // Failures here are out of memory or a programming error (a key of the
  // wrong size): a frame nobody can open.
  if (ctx == nullptr || key.size() != kKeyBytes ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(key),
                         U(iv)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &n, U(aad),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &n, U(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), ct + n, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          &out[kIvBytes]) != 1) {
    return std::string();
  }
  return out;
}

absl::StatusOr<std::string> OpenFrame(absl::string_view key,
                                      absl::string_view session, Dir dir,
                                      absl::string_view frame) {
  if (frame.size() < kIvBytes + kTagBytes) {
    return absl::InvalidArgumentError("frame shorter than IV and tag");
  }
  if (key.size() != kKeyBytes) return absl::InvalidArgumentError("key size");
  const std::string aad = Aad(session, dir);
  const absl::string_view iv = frame.substr(0, kIvBytes);
  std::string tag(frame.substr(kIvBytes, kTagBytes));
  const absl::string_view ct = frame.substr(kIvBytes + kTagBytes);
  std::string out(ct.size(), '\0');
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  int n = 0;
  auto* pt = reinterpret_cast<unsigned char*>(out.data());
  if (ctx == nullptr ||
      EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(key),
                         U(iv)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &n, U(aad),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), pt, &n, U(ct),
                        static_cast<int>(ct.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes,
                          tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), pt + n, &n) != 1) {
    return absl::PermissionDeniedError("frame does not authenticate");
  }
  return out;
}

std::string EncodeData(uint32_t stream, bool end, absl::string_view bytes) {
  std::string out;
  out.reserve(5 + bytes.size());
  for (int shift = 24; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((stream >> shift) & 0xff));
  }
  out.push_back(end ? 1 : 0);
  out.append(bytes.data(), bytes.size());
  return out;
}

bool DecodeData(absl::string_view payload, uint32_t* stream, bool* end,
                absl::string_view* bytes) {
  if (payload.size() < 5) return false;
  uint32_t s = 0;
  for (int i = 0; i < 4; ++i) s = (s << 8) | static_cast<uint8_t>(payload[i]);
  const uint8_t flags = static_cast<uint8_t>(payload[4]);
  if ((flags & ~1u) != 0) return false;
  *stream = s;
  *end = (flags & 1) != 0;
  *bytes = payload.substr(5);
  return true;
}

ShareSecrets NewShareSecrets() {
  ShareSecrets s;
  s.session = Base64UrlEncode(RandomBytes(16));
  s.key = RandomBytes(kKeyBytes);
  // Uniform over 000000..999999: draw 32 bits, reject the biased tail.
  constexpr uint64_t kLimit = (uint64_t{1} << 32) / 1000000 * 1000000;
  uint64_t v = 0;
  do {
    v = RandomU64() & 0xffffffffu;
  } while (v >= kLimit);
  s.code = absl::StrCat(v % 1000000 + 1000000).substr(1);
  return s;
}

bool ValidSessionId(absl::string_view id) {
  if (id.size() != kSessionIdChars) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool CodeMatches(absl::string_view expected, absl::string_view given) {
  // Equal lengths first (the length of a six-digit code is no secret), then
  // every byte compared whatever the first difference.
  if (expected.size() != given.size() || expected.empty()) return false;
  return CRYPTO_memcmp(expected.data(), given.data(), expected.size()) == 0;
}

const char* DropName(Drop d) {
  switch (d) {
    case Drop::kNone:
      return "none";
    case Drop::kAuth:
      return "auth";
    case Drop::kMalformed:
      return "malformed";
    case Drop::kDirection:
      return "direction";
    case Drop::kConn:
      return "conn";
    case Drop::kSequence:
      return "sequence";
  }
  return "unknown";
}

Drop OpenMessage(absl::string_view key, absl::string_view session, Dir from,
                 absl::string_view frame, Message* m) {
  absl::StatusOr<std::string> plain = OpenFrame(key, session, from, frame);
  if (!plain.ok()) return Drop::kAuth;
  absl::StatusOr<Message> decoded = DecodeMessage(*plain);
  if (!decoded.ok()) return Drop::kMalformed;
  if (decoded->dir != from) return Drop::kDirection;
  *m = std::move(*decoded);
  return Drop::kNone;
}

Drop Receiver::Check(const Message& m) {
  if (conn_.empty() || m.conn != conn_) return Drop::kConn;
  if (m.seq != next_seq_) return Drop::kSequence;
  ++next_seq_;
  return Drop::kNone;
}

}  // namespace tunnel::common::relay
