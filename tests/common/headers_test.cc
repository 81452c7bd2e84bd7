#include "common/headers.h"

#include "common/envelopes.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

HeaderList Make(std::initializer_list<std::pair<const char*, const char*>> l) {
  HeaderList out;
  for (auto& [n, v] : l) AddHeader(&out, n, v);
  return out;
}

std::vector<std::string> Names(const HeaderList& h) {
  std::vector<std::string> out;
  for (const auto& x : h) out.push_back(x.name() + "=" + x.value());
  return out;
}

TEST(HeadersTest, StripsHopByHopAndConnectionNamedFieldsKeepingOrder) {
  HeaderList h = Make({{"Set-Cookie", "a=1"},
                       {"Connection", "keep-alive, X-Secret-Hop"},
                       {"Keep-Alive", "timeout=5"},
                       {"x-secret-hop", "1"},
                       {"Transfer-Encoding", "chunked"},
                       {"TE", "trailers"},
                       {"Upgrade", "h2c"},
                       {"Proxy-Authorization", "Basic x"},
                       {"Set-Cookie", "b=2"},
                       {"Content-Type", "text/plain"}});
  StripHopByHop(&h);
  EXPECT_EQ(Names(h),
            (std::vector<std::string>{"Set-Cookie=a=1", "Set-Cookie=b=2",
                                      "Content-Type=text/plain"}));
}

TEST(HeadersTest, ValidatesNamesAndValues) {
  EXPECT_TRUE(IsValidHeaderName("X-Custom_1"));
  EXPECT_FALSE(IsValidHeaderName(""));
  EXPECT_FALSE(IsValidHeaderName("Bad Name"));
  EXPECT_FALSE(IsValidHeaderName("Bad:Name"));
  EXPECT_FALSE(IsValidHeaderName("Bad\r\nName"));
  EXPECT_TRUE(IsValidHeaderValue("text/html; charset=utf-8"));
  EXPECT_FALSE(IsValidHeaderValue("a\r\nSet-Cookie: evil=1"));
  EXPECT_FALSE(IsValidHeaderValue(std::string("a\0b", 3)));
}

TEST(HeadersTest, FindAndRemoveAreCaseInsensitive) {
  HeaderList h = Make({{"Content-Length", "5"}, {"X-A", "1"}, {"x-a", "2"}});
  ASSERT_NE(FindHeader(h, "content-length"), nullptr);
  EXPECT_EQ(*FindHeader(h, "content-length"), "5");
  EXPECT_EQ(FindHeader(h, "missing"), nullptr);
  RemoveHeader(&h, "X-A");
  EXPECT_EQ(Names(h), (std::vector<std::string>{"Content-Length=5"}));
}

TEST(HeadersTest, ResponseHeadLinesAsLibcurlHandsThemOver) {
  HeaderList h;
  int status = 0;
  auto line = [&](const char* l) {
    return ParseResponseHeadLine(l, &status, &h);
  };
  EXPECT_EQ(line("HTTP/1.1 100 Continue\r\n"), ResponseHeadLine::kStatus);
  EXPECT_EQ(status, 100);
  EXPECT_EQ(line("\r\n"), ResponseHeadLine::kEnd);
  // The final head replaces what a 1xx head had.
  EXPECT_EQ(line("HTTP/1.1 201 Created\r\n"), ResponseHeadLine::kStatus);
  EXPECT_EQ(status, 201);
  EXPECT_EQ(line("Content-Type:  text/plain \r\n"), ResponseHeadLine::kField);
  EXPECT_EQ(line("X-Long: a\r\n"), ResponseHeadLine::kField);
  EXPECT_EQ(line("\t b\r\n"), ResponseHeadLine::kField);  // folded
  EXPECT_EQ(line("no colon here\r\n"), ResponseHeadLine::kField);
  // Not a token: dropped (a name travels as text on the tunnel).
  EXPECT_EQ(line("X-Caf\xe9: 1\r\n"), ResponseHeadLine::kField);
  EXPECT_EQ(line("Bad Name: 1\r\n"), ResponseHeadLine::kField);
  // A value's bytes are kept as they are.
  EXPECT_EQ(line("X-File: caf\xe9\r\n"), ResponseHeadLine::kField);
  EXPECT_EQ(line("\r\n"), ResponseHeadLine::kEnd);
  EXPECT_EQ(Names(h),
            (std::vector<std::string>{"Content-Type=text/plain", "X-Long=a b",
                                      "X-File=caf\xe9"}));
}

TEST(HeadersTest, Utf8IsCheckedAsRfc3629DefinesIt) {
  EXPECT_TRUE(IsUtf8(""));
  EXPECT_TRUE(IsUtf8("plain ascii"));
  EXPECT_TRUE(IsUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_TRUE(IsUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
  EXPECT_FALSE(IsUtf8("caf\xe9"));          // Latin-1
  EXPECT_FALSE(IsUtf8("\xc3"));             // cut short
  EXPECT_FALSE(IsUtf8("\xe2\x82"));
  EXPECT_FALSE(IsUtf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(IsUtf8("\xe0\x80\xaf"));      // overlong
  EXPECT_FALSE(IsUtf8("\xf0\x80\x80\xaf"));  // overlong
  EXPECT_FALSE(IsUtf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(IsUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsUtf8("\x80"));  // a lone continuation
}

TEST(HeadersTest, Utf8TextReadsStrayBytesAsLatin1) {
  EXPECT_EQ(Utf8Text("caf\xc3\xa9"), "caf\xc3\xa9");  // already UTF-8
  EXPECT_EQ(Utf8Text("caf\xe9"), "caf\xc3\xa9");
  // Valid sequences stay; each stray byte becomes its Latin-1 character.
  EXPECT_EQ(Utf8Text("\xe2\x82\xac\xff\xc3"), "\xe2\x82\xac\xc3\xbf\xc3\x83");
  EXPECT_TRUE(IsUtf8(Utf8Text("\xed\xa0\x80\x80")));
}

// A close's message is a proto3 string: words that are not UTF-8 (a
// library's or a service's) would fail the peer's parse of the whole
// message, so they go as Latin-1 text.
TEST(EnvelopesTest, ACloseMessageIsUtf8AndParses) {
  tunnel::v1::Envelope e = MakeClose(7, tunnel::v1::TunnelClose::LOCAL_ERROR,
                                     "the service said caf\xe9");
  std::string wire;
  ASSERT_TRUE(e.SerializeToString(&wire));
  tunnel::v1::Envelope back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.close().message(), "the service said caf\xc3\xa9");
}

}  // namespace
}  // namespace tunnel::common
