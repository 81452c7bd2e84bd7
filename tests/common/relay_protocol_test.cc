// The relay's wire format against the test vectors the browser's code is
// checked against too (tests/relay/vectors.json, made by Python's
// `cryptography`, a third implementation): every frame seals to the same
// bytes, opens to the same message, and every bad frame is refused.
#include "common/relay_protocol.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/escaping.h"
#include "common/random.h"
#include "gtest/gtest.h"

namespace tunnel::common::relay {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

const Struct& Vectors() {
  static const Struct* v = [] {
    std::ifstream in(TUNNEL_RELAY_VECTORS);
    std::stringstream text;
    text << in.rdbuf();
    auto* s = new Struct();
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(text.str(), s).ok())
        << "cannot read " << TUNNEL_RELAY_VECTORS;
    return s;
  }();
  return *v;
}

std::string Str(const Struct& s, const std::string& field) {
  auto it = s.fields().find(field);
  return it == s.fields().end() ? "" : it->second.string_value();
}
double Num(const Struct& s, const std::string& field) {
  return s.fields().at(field).number_value();
}
std::string Hex(const Struct& s, const std::string& field) {
  return absl::HexStringToBytes(Str(s, field));
}
std::string Key() { return *Base64UrlDecode(Str(Vectors(), "key")); }
std::string Session() { return Str(Vectors(), "session"); }
Dir DirOf(const Struct& s) {
  return Str(s, "dir") == "c2h" ? Dir::kC2H : Dir::kH2C;
}
const google::protobuf::ListValue& List(const std::string& name) {
  return Vectors().fields().at(name).list_value();
}

TEST(RelayVectors, EveryFrameSealsAndOpensLikeTheOtherImplementations) {
  ASSERT_EQ(Key().size(), kKeyBytes);
  ASSERT_TRUE(ValidSessionId(Session()));
  std::set<int> types;
  for (const Value& v : List("frames").values()) {
    const Struct& f = v.struct_value();
    SCOPED_TRACE(Str(f, "name"));
    const Struct& m = f.fields().at("message").struct_value();
    Message msg;
    msg.type = static_cast<Type>(Num(m, "type"));
    msg.dir = static_cast<Dir>(Num(m, "dir"));
    msg.seq = static_cast<uint64_t>(Num(m, "seq"));
    msg.ts_ms = static_cast<uint64_t>(Num(m, "ts"));
    msg.conn = Hex(m, "conn");
    msg.payload = Hex(m, "payload_hex");
    types.insert(static_cast<int>(msg.type));
    EXPECT_EQ(Aad(Session(), DirOf(f)), Str(f, "aad"));
    const std::string plain = EncodeMessage(msg);
    EXPECT_EQ(absl::BytesToHexString(plain), Str(f, "plaintext_hex"));
    const std::string frame =
        SealFrame(Key(), Session(), DirOf(f), plain, Hex(f, "iv"));
    EXPECT_EQ(absl::BytesToHexString(frame), Str(f, "frame_hex"));
    Message opened;
    ASSERT_EQ(
        OpenMessage(Key(), Session(), DirOf(f), Hex(f, "frame_hex"), &opened),
        Drop::kNone);
    EXPECT_EQ(opened.type, msg.type);
    EXPECT_EQ(opened.seq, msg.seq);
    EXPECT_EQ(opened.ts_ms, msg.ts_ms);
    EXPECT_EQ(opened.conn, msg.conn);
    EXPECT_EQ(opened.payload, msg.payload);
  }
  EXPECT_EQ(types.size(), 10u) << "a vector of every message type";
}

TEST(RelayVectors, EveryBadFrameIsRefused) {
  for (const Value& v : List("bad_frames").values()) {
    const Struct& f = v.struct_value();
    SCOPED_TRACE(Str(f, "name"));
    Message m;
    const Drop d =
        OpenMessage(Key(), Session(), DirOf(f), Hex(f, "frame_hex"), &m);
    // Authentic but shorter than a message's header: malformed, else the
    // frame does not authenticate.
    EXPECT_EQ(d, Str(f, "name") == "short but authentic" ? Drop::kMalformed
                                                         : Drop::kAuth);
  }
  for (const Value& v : List("bad_messages").values()) {
    const Struct& f = v.struct_value();
    SCOPED_TRACE(Str(f, "name"));
    Message m;
    // Authentic, but no valid message: dropped all the same.
    EXPECT_NE(OpenMessage(Key(), Session(), DirOf(f), Hex(f, "frame_hex"), &m),
              Drop::kNone);
  }
}

TEST(RelayProtocol, TheDirectionInsideMustMatchTheAad) {
  Message m;
  m.type = Type::kPair;
  m.dir = Dir::kH2C;  // claims to come from the host ...
  m.conn = std::string(kNonceBytes, 'c');
  // ... but sealed as the client's.
  const std::string frame =
      SealFrame(Key(), Session(), Dir::kC2H, EncodeMessage(m));
  Message out;
  EXPECT_EQ(OpenMessage(Key(), Session(), Dir::kC2H, frame, &out),
            Drop::kDirection);
}

TEST(RelayProtocol, FreshIvPerFrame) {
  const std::string a = SealFrame(Key(), Session(), Dir::kC2H, "same");
  const std::string b = SealFrame(Key(), Session(), Dir::kC2H, "same");
  EXPECT_NE(a.substr(0, kIvBytes), b.substr(0, kIvBytes));
  EXPECT_NE(a, b);
}

TEST(RelayReceiver, AcceptsExactlyTheNextSequenceOnItsConnection) {
  Receiver rx;
  Message m;
  m.conn = "HHHHHHHHHHHHHHHH";
  m.seq = 1;
  EXPECT_EQ(rx.Check(m), Drop::kConn) << "nothing before Expect";
  rx.Expect("HHHHHHHHHHHHHHHH", 1);
  EXPECT_EQ(rx.Check(m), Drop::kNone);
  EXPECT_EQ(rx.Check(m), Drop::kSequence) << "a replay";
  m.seq = 4;
  EXPECT_EQ(rx.Check(m), Drop::kSequence) << "a skipped frame";
  m.seq = 2;
  m.conn = "CCCCCCCCCCCCCCCC";
  EXPECT_EQ(rx.Check(m), Drop::kConn) << "another connection's frame";
  m.conn = "HHHHHHHHHHHHHHHH";
  EXPECT_EQ(rx.Check(m), Drop::kNone) << "the drops did not move it on";
}

TEST(RelayData, RoundTripsAndRefusesUnknownFlags) {
  uint32_t stream = 0;
  bool end = false;
  absl::string_view bytes;
  const std::string p = EncodeData(0x01020304, true, "body");
  ASSERT_TRUE(DecodeData(p, &stream, &end, &bytes));
  EXPECT_EQ(stream, 0x01020304u);
  EXPECT_TRUE(end);
  EXPECT_EQ(bytes, "body");
  std::string bad = p;
  bad[4] = 2;
  EXPECT_FALSE(DecodeData(bad, &stream, &end, &bytes));
  EXPECT_FALSE(DecodeData("1234", &stream, &end, &bytes));
}

TEST(ShareSecrets, AreFreshWellFormedAndSixDigits) {
  const ShareSecrets a = NewShareSecrets();
  const ShareSecrets b = NewShareSecrets();
  EXPECT_TRUE(ValidSessionId(a.session));
  EXPECT_EQ(a.key.size(), kKeyBytes);
  ASSERT_EQ(a.code.size(), 6u);
  for (char c : a.code) EXPECT_TRUE(c >= '0' && c <= '9');
  EXPECT_NE(a.session, b.session);
  EXPECT_NE(a.key, b.key);
  EXPECT_FALSE(ValidSessionId("short"));
  EXPECT_FALSE(ValidSessionId("aaaaaaaaaaaaaaaaaaaaa/"));
}

TEST(ShareSecrets, CodeComparison) {
  EXPECT_TRUE(CodeMatches("481207", "481207"));
  EXPECT_FALSE(CodeMatches("481207", "481208"));
  EXPECT_FALSE(CodeMatches("481207", "48120"));
  EXPECT_FALSE(CodeMatches("481207", ""));
}

}  // namespace
}  // namespace tunnel::common::relay
