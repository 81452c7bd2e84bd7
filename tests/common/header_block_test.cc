// Header blocks: a head's fields packed in one bytes field.
#include "common/header_block.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

Fields Read(absl::string_view block, bool* malformed = nullptr) {
  Fields out;
  HeaderBlockReader r(block);
  absl::string_view name, value;
  while (r.Next(&name, &value)) {
    out.emplace_back(std::string(name), std::string(value));
  }
  if (malformed != nullptr) *malformed = r.malformed();
  return out;
}

std::string Pack(const Fields& fields) {
  std::string block;
  for (const auto& [name, value] : fields) AppendField(&block, name, value);
  return block;
}

TEST(HeaderBlockTest, FieldsComeBackInOrderWithLongAndOddValues) {
  const Fields fields = {
      {"Set-Cookie", "a=1"},
      {"Set-Cookie", "b=2"},
      {"X-Empty", ""},
      {std::string(200, 'n'), std::string(300, 'v')},  // two-byte lengths
      {"Content-Disposition", "attachment; filename=\"caf\xe9.txt\""},
      {"X-Big", std::string(70000, 'x')},  // a three-byte length
  };
  const std::string block = Pack(fields);
  bool malformed = true;
  EXPECT_EQ(Read(block, &malformed), fields);
  EXPECT_FALSE(malformed);
  EXPECT_TRUE(IsWellFormedHeaderBlock(block));
  EXPECT_TRUE(IsWellFormedHeaderBlock(""));
}

TEST(HeaderBlockTest, LengthsPastTheEndAreMalformedAndChangeNothing) {
  const std::string good = Pack({{"X-A", "1"}});
  const std::vector<std::string> bad = {
      good + std::string("\x05"
                         "ab"),  // name longer than the rest
      good + std::string("\x01"
                         "a"),  // no value length
      good + std::string("\x01"
                         "a\x03"
                         "b"),     // value longer than the rest
      good + std::string("\x80"),  // a length cut off
      good + std::string("\xff\xff\xff\xff\xff\x01"),  // over five bytes
  };
  for (const std::string& b : bad) {
    SCOPED_TRACE(testing::PrintToString(b));
    bool malformed = false;
    // The fields before the fault, then the fault.
    EXPECT_EQ(Read(b, &malformed), Fields({{"X-A", "1"}}));
    EXPECT_TRUE(malformed);
    EXPECT_FALSE(IsWellFormedHeaderBlock(b));
    std::string copy = b;
    EXPECT_FALSE(StripHopByHop(&copy));
    EXPECT_EQ(copy, b);
    EXPECT_EQ(DropUnsafeHeaders(&copy), -1);
    EXPECT_EQ(copy, b);
    tunnel::v1::TunnelResponse head;
    head.set_header_block(b);
    EXPECT_FALSE(ExpandHeaderBlock(&head));
    EXPECT_EQ(head.header_block(), b);
    EXPECT_EQ(head.headers_size(), 0);
  }
}

TEST(HeaderBlockTest, HopByHopFieldsAndThoseConnectionNamesGo) {
  std::string block = Pack({{"X-Secret", "s"},
                            {"Host", "example.com"},
                            {"Keep-Alive", "timeout=5"},
                            {"connection", "close, x-secret"},
                            {"TE", "trailers"},
                            {"Accept", "*/*"}});
  EXPECT_TRUE(StripHopByHop(&block));
  EXPECT_EQ(Read(block), Fields({{"Host", "example.com"}, {"Accept", "*/*"}}));
  // Nothing to drop: the same bytes.
  const std::string kept = block;
  EXPECT_TRUE(StripHopByHop(&block));
  EXPECT_EQ(block, kept);
}

TEST(HeaderBlockTest, UnsafeFieldsAreDroppedAndCounted) {
  std::string block = Pack({{"X-Good", "1"},
                            {"X-Split", "a\r\nSet-Cookie: x=1"},
                            {"Bad Name", "v"},
                            {"", "no name"},
                            {"X-Nul", std::string("a\0b", 3)},
                            {"X-Also", "2"}});
  EXPECT_EQ(DropUnsafeHeaders(&block), 4);
  EXPECT_EQ(Read(block), Fields({{"X-Good", "1"}, {"X-Also", "2"}}));
  EXPECT_EQ(DropUnsafeHeaders(&block), 0);
}

TEST(HeaderBlockTest, AHeadsFieldsAreItsHeadersThenItsBlock) {
  tunnel::v1::TunnelRequest head;
  AddHeader(head.mutable_headers(), "Host", "a.example");
  head.set_header_block(Pack({{"host", "b.example"}, {"X-B", "2"}}));
  Fields seen;
  EXPECT_TRUE(ForEachField(head, [&](absl::string_view n, absl::string_view v) {
    seen.emplace_back(std::string(n), std::string(v));
  }));
  EXPECT_EQ(
      seen,
      Fields({{"Host", "a.example"}, {"host", "b.example"}, {"X-B", "2"}}));
  absl::string_view v;
  ASSERT_TRUE(FindField(head, "HOST", &v));
  EXPECT_EQ(v, "a.example");
  ASSERT_TRUE(FindField(head, "x-b", &v));
  EXPECT_EQ(v, "2");
  EXPECT_FALSE(FindField(head, "X-C", &v));
  EXPECT_EQ(FieldsOf(head).size(), 3);

  ASSERT_TRUE(ExpandHeaderBlock(&head));
  EXPECT_TRUE(head.header_block().empty());
  ASSERT_EQ(head.headers_size(), 3);
  EXPECT_EQ(head.headers(1).name(), "host");
  EXPECT_EQ(head.headers(2).value(), "2");
}

}  // namespace
}  // namespace tunnel::common
