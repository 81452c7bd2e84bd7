#include "agent/agent_flags.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "agent/agent.h"
#include "agent/qr.h"
#include "common/access_code.h"
#include "common/config_file.h"
#include "gtest/gtest.h"
#include "tunnel/v1/config.pb.h"

namespace tunnel::agent {
namespace {

// Adding a connect flag without its AgentConfig field (or the reverse) fails
// here.
TEST(AgentFlagsTest, ConfigMessageMatchesTheFlagsOneToOne) {
  AgentFlags values;
  common::FlagSet flags("usage");
  RegisterConnectFlags(&flags, &values);
  absl::Status s = common::CheckSchemaMatchesFlags(
      *tunnel::v1::AgentConfig::descriptor(), flags);
  EXPECT_TRUE(s.ok()) << s;
}

TEST(AgentFlagsTest, TheCheckCatchesAFlagWithoutAField) {
  AgentFlags values;
  common::FlagSet flags("usage");
  RegisterConnectFlags(&flags, &values);
  std::string extra;
  flags.String("not-in-the-schema", &extra, "");
  absl::Status s = common::CheckSchemaMatchesFlags(
      *tunnel::v1::AgentConfig::descriptor(), flags);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--not-in-the-schema"), std::string::npos) << s;
}

// --access-code becomes a salted hash in the options; a bad code is usage.
// `agent-tunnel connect` with the required flags and then `extra`.
absl::Status ParseConnect(std::vector<std::string> extra, AgentFlags* values) {
  common::FlagSet flags("usage");
  RegisterConnectFlags(&flags, values);
  std::vector<std::string> args = {"connect",
                                   "--gateway",
                                   "127.0.0.1:1",
                                   "--id",
                                   "cam-01",
                                   "--token",
                                   "tok",
                                   "--secret",
                                   "c2VjcmV0",
                                   "--to",
                                   "http://127.0.0.1:3000",
                                   "--state-file",
                                   ""};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseConnectFlags(static_cast<int>(argv.size()), argv.data(), 1,
                           &flags, values);
}

TEST(AgentFlagsTest, SeveralGatewaysAreTriedInTurn) {
  EXPECT_EQ(SplitGateways("a:1, b:2,,[::1]:3"),
            (std::vector<std::string>{"a:1", "b:2", "[::1]:3"}));
  EXPECT_EQ(SplitGateways("a:1"), (std::vector<std::string>{"a:1"}));
  AgentFlags ok;
  // A later --gateway replaces the first one of ParseConnect's.
  ASSERT_TRUE(
      ParseConnect({"--gateway", "10.0.0.1:8080,10.0.0.2:8080"}, &ok).ok());
  EXPECT_EQ(ok.options.gateway, "10.0.0.1:8080,10.0.0.2:8080");
  AgentFlags bad;
  absl::Status s = ParseConnect({"--gateway", "10.0.0.1:8080,nohost"}, &bad);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "--gateway \"nohost\" must be HOST:PORT (several: "
            "comma-separated)");
}

TEST(AgentFlagsTest, AccessCodeIsHashedAndChecked) {
  auto parse = [](const std::string& code, AgentFlags* values) {
    return ParseConnect({"--access-code", code}, values);
  };
  AgentFlags ok;
  absl::Status s = parse("let me in", &ok);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(ok.options.access_code.has_value());
  EXPECT_EQ(ok.options.access_code->salt().size(), 16u);
  EXPECT_EQ(ok.options.access_code->iterations(), 100000u);
  EXPECT_TRUE(common::AccessCodeMatches(*ok.options.access_code, "let me in"));
  AgentFlags bad;
  s = parse("tab\there", &bad);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--access-code"), std::string::npos) << s;
}

TEST(AgentFlagsTest, SlugRandomLeavesTheSlugsToTheGateway) {
  AgentFlags v;
  absl::Status s = ParseConnect(
      {"--slug", "random", "--to", "api=http://127.0.0.1:3001"}, &v);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(v.options.random_slug);
  ASSERT_EQ(v.options.tunnels.size(), 2u);
  for (const LocalTarget& t : v.options.tunnels)
    EXPECT_EQ(t.slug, "") << t.name;
  // Names are checked against an 8-char random part: "<name>-xxxxxxxx"
  // must still be a slug of at most 32 chars.
  AgentFlags too_long;
  s = ParseConnect({"--slug", "random", "--to",
                    "a-name-of-twenty-four-ch=http://127.0.0.1:3001"},
                   &too_long);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tunnel name"), std::string::npos) << s;
  AgentFlags plain;
  ASSERT_TRUE(ParseConnect({"--slug", "front"}, &plain).ok());
  EXPECT_FALSE(plain.options.random_slug);
  EXPECT_EQ(plain.options.tunnels[0].slug, "front");
}

TEST(AgentFlagsTest, IpRulesAreCheckedAndSent) {
  AgentFlags v;
  absl::Status s =
      ParseConnect({"--allow-cidr", "203.0.113.0/24", "--allow-cidr",
                    "2001:db8::/32", "--deny-cidr", "203.0.113.9"},
                   &v);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(v.options.ip_rules.allow_size(), 2);
  EXPECT_EQ(v.options.ip_rules.deny(0), "203.0.113.9");
  AgentFlags bad;
  s = ParseConnect({"--deny-cidr", "203.0.113.9/24"}, &bad);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--deny-cidr: \"203.0.113.9/24\" has host bits "
                             "set; did you mean 203.0.113.0/24?"),
            std::string::npos)
      << s;
}

constexpr char kBcrypt[] =
    "$2y$05$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.Be";
constexpr char kPbkdf2[] =
    "$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$"
    "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc";

TEST(AgentFlagsTest, BasicAuthUsersFromFlagsAndAFileAreCheckedAndSent) {
  const std::string file =
      absl::StrCat(::testing::TempDir(), "/htpasswd-flags-test");
  {
    std::ofstream out(file);
    out << "# made by htpasswd -B\n\ncarol:" << kBcrypt << "\n";
  }
  AgentFlags v;
  absl::Status s = ParseConnect(
      {"--basic-auth", absl::StrCat("alice:", kPbkdf2), "--basic-auth",
       absl::StrCat("bob:", kBcrypt), "--basic-auth-file", file},
      &v);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(v.options.basic_auth.size(), 3u);
  EXPECT_EQ(v.options.basic_auth[0].user(), "alice");
  EXPECT_EQ(v.options.basic_auth[0].hash(), kPbkdf2);
  EXPECT_EQ(v.options.basic_auth[2].user(), "carol");
  EXPECT_EQ(v.options.basic_auth[2].hash(), kBcrypt);

  // A password where the hash belongs says how to make one.
  AgentFlags plain;
  s = ParseConnect({"--basic-auth", "alice:hunter2"}, &plain);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--basic-auth: user \"alice\": not a password "
                             "hash we accept"),
            std::string::npos)
      << s;
  EXPECT_NE(s.message().find("tunnelctl hash-password"), std::string::npos);
  AgentFlags twice;
  s = ParseConnect({"--basic-auth", absl::StrCat("carol:", kPbkdf2),
                    "--basic-auth-file", file},
                   &twice);
  EXPECT_NE(s.message().find("user \"carol\" appears twice"), std::string::npos)
      << s;
  AgentFlags missing;
  s = ParseConnect({"--basic-auth-file", file + ".nope"}, &missing);
  EXPECT_NE(s.message().find("--basic-auth-file: cannot read"),
            std::string::npos)
      << s;
  std::remove(file.c_str());
}

TEST(AgentFlagsTest, SendQueueReachesTheOptionsAndIsBounded) {
  AgentFlags defaults;
  ASSERT_TRUE(ParseConnect({}, &defaults).ok());
  EXPECT_EQ(defaults.options.max_queued_bytes, size_t{2} << 20);
  AgentFlags set;
  absl::Status s = ParseConnect({"--send-queue", "131072"}, &set);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(set.options.max_queued_bytes, 131072u);
  for (const char* bad : {"1000", "2147483648"}) {
    AgentFlags v;
    s = ParseConnect({"--send-queue", bad}, &v);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--send-queue"), std::string::npos) << s;
  }
}

TEST(AgentFlagsTest, LocalConnectTimeoutReachesTheOptionsAndIsBounded) {
  AgentFlags defaults;
  ASSERT_TRUE(ParseConnect({}, &defaults).ok());
  EXPECT_EQ(defaults.options.local_connect_timeout, absl::Seconds(10));
  AgentFlags set;
  absl::Status s = ParseConnect({"--local-connect-timeout", "250ms"}, &set);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(set.options.local_connect_timeout, absl::Milliseconds(250));
  for (const char* bad : {"1ms", "2h", "-1s"}) {
    AgentFlags v;
    s = ParseConnect({"--local-connect-timeout", bad}, &v);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--local-connect-timeout"), std::string::npos)
        << s;
  }
}

// The half-block rendering decodes back to libqrencode's matrix with a
// 4-module light quiet zone (light = drawn).
TEST(AgentFlagsTest, InspectIsOnForATerminalOnlyUnlessNamed) {
  AgentFlags tty;
  tty.stdout_is_terminal = true;
  ASSERT_TRUE(ParseConnect({}, &tty).ok());
  EXPECT_EQ(tty.inspect, "127.0.0.1:4040");
  EXPECT_TRUE(tty.inspect_auto);
  AgentFlags piped;  // stdout not a terminal: off
  ASSERT_TRUE(ParseConnect({}, &piped).ok());
  EXPECT_EQ(piped.inspect, "");
  AgentFlags off;
  off.stdout_is_terminal = true;
  ASSERT_TRUE(ParseConnect({"--inspect", ""}, &off).ok());
  EXPECT_EQ(off.inspect, "");
  AgentFlags named;
  ASSERT_TRUE(ParseConnect({"--inspect", "127.0.0.1:0", "--inspect-max-body",
                            "0", "--inspect-max-requests", "3"},
                           &named)
                  .ok());
  EXPECT_EQ(named.inspect, "127.0.0.1:0");
  EXPECT_FALSE(named.inspect_auto);
  EXPECT_EQ(named.inspect_max_body, 0);
  EXPECT_EQ(named.inspect_max_requests, 3);

  struct Bad {
    std::vector<std::string> args;
    std::string says;
  };
  for (const Bad& b : std::vector<Bad>{
           {{"--inspect", "4040"}, "--inspect: address \"4040\" needs"},
           {{"--inspect-max-requests", "0"}, "--inspect-max-requests must"},
           {{"--inspect-max-body", "-1"}, "--inspect-max-body must"},
           {{"--inspect-max-body", "2000000", "--inspect-max-memory",
             "1000000"},
            "--inspect-max-memory must be at least --inspect-max-body"},
           {{"--inspect-max-memory", "65536"},
            "--inspect-max-memory must be at least --inspect-max-body and "
            "1048576"},
       }) {
    AgentFlags v;
    absl::Status s = ParseConnect(b.args, &v);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.args[0];
    EXPECT_NE(s.message().find(b.says), std::string::npos) << s;
  }
}

TEST(QrTest, HalfBlocksRoundTripToTheModules) {
  auto modules = QrModules("http://cam-01.localhost:8082/");
  ASSERT_TRUE(modules.ok()) << modules.status();
  const size_t n = modules->size();
  EXPECT_EQ(n, 29u);  // version 3: level M holds 42 bytes, version 2 26
  std::string text = RenderQrHalfBlocks(*modules);
  const size_t size = n + 8;
  std::vector<std::vector<int>> light(size + 1, std::vector<int>(size, -1));
  size_t y = 0, x = 0;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '\n') {
      EXPECT_EQ(x, size);
      y += 2;
      x = 0;
      ++i;
      continue;
    }
    int top, bottom;
    if (text[i] == ' ') {
      top = 0, bottom = 0;
      i += 1;
    } else {
      std::string glyph = text.substr(i, 3);
      i += 3;
      if (glyph == "\u2588") {
        top = 1, bottom = 1;
      } else if (glyph == "\u2580") {
        top = 1, bottom = 0;
      } else {
        ASSERT_EQ(glyph, "\u2584");
        top = 0, bottom = 1;
      }
    }
    light[y][x] = top;
    light[y + 1][x] = bottom;
    ++x;
  }
  EXPECT_EQ(y, size + 1);  // odd size: the last line holds one row
  for (size_t r = 0; r < size; ++r) {
    for (size_t c = 0; c < size; ++c) {
      bool in_code = r >= 4 && c >= 4 && r < n + 4 && c < n + 4;
      bool want_light = !in_code || !(*modules)[r - 4][c - 4];
      ASSERT_EQ(light[r][c], want_light ? 1 : 0) << r << "," << c;
    }
  }
}

}  // namespace
}  // namespace tunnel::agent
