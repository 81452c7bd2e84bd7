// The native origin client's response parser (Boost.Beast underneath):
// what a local service may answer, in one piece and byte by byte.
#include "agent/response_parser.h"

#include <string>

#include "gtest/gtest.h"

namespace tunnel::agent {
namespace {

struct Parsed {
  bool ok = false;
  bool done = false;
  int status = 0;
  std::string block;           // as the parser packs the fields
  common::HeaderList headers;  // the block's fields
  std::string body;
  std::string error;
  size_t left = 0;  // bytes after the message
};

// Feeds `wire` in pieces of `step` bytes (keeping what a piece left unused,
// as the client does), then the end of the connection if `eof`.
Parsed Parse(const std::string& wire, size_t step, bool head = false,
             bool eof = false) {
  Parsed r;
  ResponseParser p(&r.block, &r.body, 1024, head);
  std::string held;
  size_t at = 0;
  while (at < wire.size() && !p.is_done()) {
    held += wire.substr(at, step);
    at += step;
    size_t used = 0;
    if (!p.Feed(held, &used, &r.error)) return r;
    held.erase(0, used);
  }
  if (eof && !p.is_done() && !p.FeedEnd(&r.error)) return r;
  common::HeaderBlockReader fields(r.block);
  absl::string_view name, value;
  while (fields.Next(&name, &value)) common::AddHeader(&r.headers, name, value);
  r.ok = !fields.malformed();
  r.done = p.is_done();
  r.status = p.status();
  r.left = held.size() + (at < wire.size() ? wire.size() - at : 0);
  return r;
}

class ResponseParserTest : public ::testing::TestWithParam<size_t> {};

TEST_P(ResponseParserTest, KnownLengthBodyAndItsFields) {
  Parsed r = Parse(
      "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n"
      "Set-Cookie: b=2\r\nX-Empty:\r\n\r\nhello",
      GetParam());
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "hello");
  ASSERT_EQ(r.headers.size(), 4);
  EXPECT_EQ(r.headers[1].name(), "Set-Cookie");
  EXPECT_EQ(r.headers[1].value(), "a=1");
  EXPECT_EQ(r.headers[2].value(), "b=2");
  EXPECT_EQ(r.headers[3].name(), "X-Empty");
  EXPECT_EQ(r.headers[3].value(), "");
}

TEST_P(ResponseParserTest, ChunkedBodyWithExtensionsAndTrailers) {
  Parsed r = Parse(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=v\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
      GetParam());
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.body, "hello world");
  EXPECT_EQ(r.left, 0u);
}

TEST_P(ResponseParserTest, BodyUntilCloseEndsOnlyWithTheConnection) {
  Parsed open = Parse("HTTP/1.0 200 OK\r\n\r\nstream", GetParam());
  ASSERT_TRUE(open.ok);
  EXPECT_FALSE(open.done);
  Parsed closed = Parse("HTTP/1.0 200 OK\r\n\r\nstream", GetParam(),
                        /*head=*/false, /*eof=*/true);
  ASSERT_TRUE(closed.ok) << closed.error;
  EXPECT_TRUE(closed.done);
  EXPECT_EQ(closed.body, "stream");
}

TEST_P(ResponseParserTest, AShortBodyAtTheEndIsAnError) {
  Parsed r = Parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                   GetParam(), false, /*eof=*/true);
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(r.error.empty());
}

TEST_P(ResponseParserTest, HeadAnd204And304HaveNoBody) {
  Parsed head = Parse("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                      GetParam(), /*head=*/true);
  ASSERT_TRUE(head.ok) << head.error;
  EXPECT_TRUE(head.done);
  for (const char* status : {"204 No Content", "304 Not Modified"}) {
    Parsed r =
        Parse(std::string("HTTP/1.1 ") + status + "\r\n\r\n", GetParam());
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.done) << status;
    EXPECT_EQ(r.body, "");
  }
}

TEST_P(ResponseParserTest, AnInformationalHeadIsCompleteByItself) {
  const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  Parsed r =
      Parse("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + answer,
            GetParam());
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.status, 103);
  EXPECT_EQ(r.left, answer.size());  // for the next parser
}

TEST_P(ResponseParserTest, WhatIsNotHttp1IsRefused) {
  for (const char* wire :
       {"SSH-2.0-OpenSSH_9.2\r\n", "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}) {
    Parsed r = Parse(wire, GetParam());
    EXPECT_FALSE(r.ok && r.done) << wire;
  }
}

TEST_P(ResponseParserTest, AHeadOverTheLimitIsRefused) {
  Parsed r =
      Parse("HTTP/1.1 200 OK\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n",
            GetParam());
  EXPECT_FALSE(r.ok);
}

INSTANTIATE_TEST_SUITE_P(Pieces, ResponseParserTest,
                         ::testing::Values(1, 7, 4096));

}  // namespace
}  // namespace tunnel::agent
