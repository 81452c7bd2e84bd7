// The wire format of an end-to-end encrypted share (docs/RELAY.md): frames
// sealed with AES-256-GCM between the browser and the agent, the messages
// inside them, and the rules a receiver applies before acting on one.
// The gateway uses none of this but the session id check: it has no key.
//
// Thread-compatible; the functions are thread-safe.
#ifndef TUNNEL_COMMON_RELAY_PROTOCOL_H_
#define TUNNEL_COMMON_RELAY_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnel::common::relay {

inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kIvBytes = 12;
inline constexpr size_t kTagBytes = 16;
inline constexpr size_t kNonceBytes = 16;   // a connection nonce (C or H)
inline constexpr size_t kHeaderBytes = 36;  // a message before its payload
inline constexpr size_t kMinFrameBytes = kIvBytes + kTagBytes + kHeaderBytes;
inline constexpr size_t kSessionIdChars = 22;  // 16 bytes, base64url
inline constexpr uint8_t kVersion = 1;
// Wrong pairing codes a share takes before it locks.
inline constexpr int kMaxPairAttempts = 5;

enum class Dir : uint8_t { kC2H = 1, kH2C = 2 };

enum class Type : uint8_t {
  kHello = 1,
  kHelloAck = 2,
  kPair = 3,
  kPairOk = 4,
  kRequest = 5,
  kResponse = 6,
  kData = 7,
  kClose = 8,
  kError = 9,
  kWindow = 10,
};

struct Message {
  Type type = Type::kHello;
  Dir dir = Dir::kC2H;
  uint64_t seq = 0;
  uint64_t ts_ms = 0;  // sender's clock; informative
  std::string conn;    // kNonceBytes
  std::string payload;
};

// v | type | dir | 0 | seq (BE) | ts (BE) | conn | payload.
std::string EncodeMessage(const Message& m);
// Fails on a short message, another version, an unknown type or direction,
// or a non-zero reserved byte.
absl::StatusOr<Message> DecodeMessage(absl::string_view bytes);

// "tunnel-relay|v=1|session=<id>|dir=<c2h|h2c>"
std::string Aad(absl::string_view session, Dir dir);
// IV | tag | ciphertext. `iv` empty: a fresh random one (only tests pass
// one). `key` is kKeyBytes.
std::string SealFrame(absl::string_view key, absl::string_view session, Dir dir,
                      absl::string_view plaintext, absl::string_view iv = {});
// The plaintext, or an error when the frame is short or does not
// authenticate under this key, session and direction.
absl::StatusOr<std::string> OpenFrame(absl::string_view key,
                                      absl::string_view session, Dir dir,
                                      absl::string_view frame);

// DATA's payload: stream (u32 BE) | flags (1: end) | body bytes.
std::string EncodeData(uint32_t stream, bool end, absl::string_view bytes);
bool DecodeData(absl::string_view payload, uint32_t* stream, bool* end,
                absl::string_view* bytes);

// A share's secrets (RAND_bytes): session id, key, pairing code.
struct ShareSecrets {
  std::string session;  // kSessionIdChars of base64url
  std::string key;      // kKeyBytes raw
  std::string code;     // 6 decimal digits
};
ShareSecrets NewShareSecrets();
// 22 characters of [A-Za-z0-9_-] (what NewShareSecrets makes).
bool ValidSessionId(absl::string_view id);
// Constant time (CRYPTO_memcmp), whatever the lengths.
bool CodeMatches(absl::string_view expected, absl::string_view given);

// Why a received frame was dropped.
enum class Drop {
  kNone = 0,
  kAuth,       // does not authenticate (key, tag, session, direction)
  kMalformed,  // authenticates but is no valid message
  kDirection,  // its dir field disagrees with the AAD's
  kConn,       // another connection's nonce
  kSequence,   // replayed, out of order or skipped
};
const char* DropName(Drop d);

// Opens a frame that came from direction `from` and decodes its message:
// kAuth, kMalformed or kDirection when it must be dropped.
Drop OpenMessage(absl::string_view key, absl::string_view session, Dir from,
                 absl::string_view frame, Message* m);

// The receiving side of one connection: the nonce its messages must carry
// and the sequence number it expects next.
class Receiver {
 public:
  // kConn or kSequence when `m` must be dropped; otherwise the expected
  // sequence number moves on.
  Drop Check(const Message& m);
  // Expects `conn` from now on, starting at `next_seq`.
  void Expect(absl::string_view conn, uint64_t next_seq) {
    conn_ = std::string(conn);
    next_seq_ = next_seq;
  }

 private:
  std::string conn_;
  uint64_t next_seq_ = 0;
};

}  // namespace tunnel::common::relay

#endif  // TUNNEL_COMMON_RELAY_PROTOCOL_H_
