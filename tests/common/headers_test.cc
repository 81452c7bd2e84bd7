#include "common/headers.h"

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
  EXPECT_EQ(line("\r\n"), ResponseHeadLine::kEnd);
  EXPECT_EQ(Names(h), (std::vector<std::string>{"Content-Type=text/plain",
                                                "X-Long=a b"}));
}

}  // namespace
}  // namespace tunnel::common
