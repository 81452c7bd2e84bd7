#include "common/log.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Restores the process-wide log settings after each test.
class LogTest : public ::testing::Test {
 protected:
  void TearDown() override {
    SetLogFormat(LogFormat::kText);
    SetLogLevel(LogLevel::kInfo);
  }
  template <typename F>
  std::string Captured(F f) {
    ::testing::internal::CaptureStderr();
    f();
    return ::testing::internal::GetCapturedStderr();
  }
};

TEST_F(LogTest, JsonEscapeKeepsOutputValidJson) {
  EXPECT_EQ(JsonEscape("a\"b\\c\nd\te"), "a\\\"b\\\\c\\nd\\u0009e");
  EXPECT_EQ(JsonEscape("\xff"), "\\u00ff");
}

TEST_F(LogTest, TextEventQuotesOnlyWhatNeedsIt) {
  std::string out = Captured([] {
    LogEvent(LogLevel::kInfo, "access")
        .Str("path", "/a")
        .Str("ua", "two words")
        .Str("empty", "")
        .Int("status", 200)
        .Num("duration_ms", 1.5);
  });
  EXPECT_THAT(out, MatchesRegex("[0-9T:.Z-]+ INFO access path=/a "
                                "ua=\"two words\" empty=\"\" status=200 "
                                "duration_ms=1.500\n"));
}

TEST_F(LogTest, JsonEventIsOneObjectPerLine) {
  SetLogFormat(LogFormat::kJson);
  std::string out = Captured([] {
    LogEvent(LogLevel::kWarning, "agent_refused")
        .Str("reason", "say \"no\"\nplease")
        .Int("n", -3);
  });
  EXPECT_THAT(out, MatchesRegex("\\{\"time\":\"[0-9T:.Z-]+\","
                                "\"level\":\"warning\","
                                "\"event\":\"agent_refused\","
                                "\"reason\":\"say \\\\\"no\\\\\"\\\\nplease\","
                                "\"n\":-3\\}\n"));
}

TEST_F(LogTest, JsonFormatAppliesToPlainMessagesToo) {
  SetLogFormat(LogFormat::kJson);
  std::string out = Captured([] { TUNNEL_LOG(INFO) << "hello \"you\""; });
  EXPECT_THAT(out, HasSubstr("\"level\":\"info\",\"src\":\"log_test.cc:"));
  EXPECT_THAT(out, HasSubstr("\"msg\":\"hello \\\"you\\\"\"}\n"));
}

TEST_F(LogTest, EventsBelowTheLevelAreNotWritten) {
  SetLogLevel(LogLevel::kWarning);
  std::string out = Captured([] {
    LogEvent(LogLevel::kInfo, "access").Str("path", "/");
    TUNNEL_LOG(INFO) << "quiet";
  });
  EXPECT_EQ(out, "");
}

TEST_F(LogTest, FormatNames) {
  EXPECT_TRUE(SetLogFormatByName("json"));
  EXPECT_EQ(GetLogFormat(), LogFormat::kJson);
  EXPECT_TRUE(SetLogFormatByName("TEXT"));
  EXPECT_EQ(GetLogFormat(), LogFormat::kText);
  EXPECT_FALSE(SetLogFormatByName("xml"));
}

}  // namespace
}  // namespace tunnel::common
