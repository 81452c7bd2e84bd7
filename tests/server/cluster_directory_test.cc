// The cluster directory and its Redis client against a real redis-server
// (Debian's, started here on a free port of 127.0.0.1): the rules that
// cluster_e2e cannot pin down one by one.
#include "server/cluster_directory.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "server/redis_client.h"
#include "server/session_registry.h"
#include "tests/testing/loopback_port.h"

extern char** environ;

namespace tunnel::server {
namespace {

constexpr char kRedisServer[] = "/usr/bin/redis-server";

// A redis-server of our own, without persistence.
class RedisProcess {
 public:
  ~RedisProcess() { Stop(); }
  bool Start(int port) {
    port_ = port;
    std::string p = absl::StrCat(port);
    std::vector<std::string> args = {
        kRedisServer, "--port",       p,    "--bind",    "127.0.0.1", "--save",
        "",           "--appendonly", "no", "--logfile", "/dev/null"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, kRedisServer, nullptr, nullptr, argv.data(),
                    environ) != 0) {
      return false;
    }
    RedisAddress addr{"127.0.0.1", port, 0, ""};
    RedisClient probe(addr, absl::Milliseconds(200));
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (absl::Now() < give_up) {
      if (probe.Command({"PING"}).ok()) return true;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // the port was taken
        pid_ = -1;
        return false;
      }
      absl::SleepFor(absl::Milliseconds(20));  // polling a startup, bounded
    }
    return false;
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

class ClusterDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kRedisServer, X_OK) != 0) {
      if (getenv("TUNNEL_REQUIRE_REDIS") != nullptr) {
        FAIL() << "redis-server is not installed";
      }
      GTEST_SKIP() << "redis-server is not installed";
    }
    for (int i = 0; i < 5 && !redis_.Start(testing::UnusedLoopbackPort());
         ++i) {
    }
    ASSERT_GT(redis_.port(), 0);
    address_ = RedisAddress{"127.0.0.1", redis_.port(), 0, ""};
  }

  std::unique_ptr<ClusterDirectory> Directory(const std::string& id,
                                              SessionRegistry* registry,
                                              common::MetricsRegistry* m) {
    ClusterOptions o;
    o.id = id;
    o.advertise = "127.0.0.1:1";
    o.redis_timeout = absl::Milliseconds(300);
    auto d = std::make_unique<ClusterDirectory>(o, address_, registry, m);
    d->SyncNow();
    return d;
  }

  RedisProcess redis_;
  RedisAddress address_;
};

TEST(RedisUrlTest, ParsesHostPortDatabaseAndPassword) {
  absl::StatusOr<RedisAddress> a = ParseRedisUrl("redis://10.1.2.3:6380/4");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "10.1.2.3");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 4);
  a = ParseRedisUrl("redis://:s3cret@redis.internal");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "redis.internal");
  EXPECT_EQ(a->port, 6379);
  EXPECT_EQ(a->password, "s3cret");
  // Logs and errors never carry the password.
  EXPECT_EQ(a->Describe(), "redis.internal:6379/0");
  a = ParseRedisUrl("redis://[::1]:7000");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "::1");
  for (const char* bad : {"http://h:1", "redis://", "redis://h:1/db",
                          "redis://:@h", "redis://h:port"}) {
    EXPECT_FALSE(ParseRedisUrl(bad).ok()) << bad;
  }
}

TEST_F(ClusterDirectoryTest, ClientReconnectsAfterRedisComesBack) {
  RedisClient c(address_, absl::Milliseconds(300));
  ASSERT_TRUE(c.Command({"SET", "k", "v"}).ok());
  absl::StatusOr<std::vector<RedisReply>> r =
      c.Pipeline({{"GET", "k"}, {"INCR", "k"}, {"EXISTS", "k"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].str, "v");
  EXPECT_EQ((*r)[1].type, RedisReply::Type::kError);  // not an integer
  EXPECT_EQ((*r)[2].integer, 1);
  absl::StatusOr<RedisReply> e = c.Command({"INCR", "k"});
  EXPECT_TRUE(absl::IsInternal(e.status())) << e.status();

  const int port = redis_.port();
  redis_.Stop();
  e = c.Command({"GET", "k"});
  EXPECT_TRUE(absl::IsUnavailable(e.status())) << e.status();
  EXPECT_TRUE(
      absl::StrContains(e.status().message(), absl::StrCat("127.0.0.1:", port)))
      << e.status();
  ASSERT_TRUE(redis_.Start(port));
  e = c.Command({"PING"});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->str, "PONG");
}

TEST_F(ClusterDirectoryTest, ASlugBelongsToItsFirstClaimerClusterWide) {
  common::MetricsRegistry m1, m2;
  SessionRegistry r1, r2;
  auto a = Directory("a", &r1, &m1);
  auto b = Directory("b", &r2, &m2);
  ASSERT_TRUE(a->state().redis_up) << a->state().error;
  EXPECT_TRUE(a->Claim({"cam", "cam-api"}, "agent-1", "").ok());
  // The same agent through another replica: still its own.
  EXPECT_TRUE(b->Claim({"cam"}, "agent-1", "").ok());
  absl::Status s = b->Claim({"fresh", "cam-api"}, "agent-2", "");
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(),
                                "\"cam-api\" belongs to another "
                                "agent in the gateway cluster"))
      << s;
  // The refused handshake took nothing: "fresh" is still free.
  EXPECT_TRUE(a->Claim({"fresh"}, "agent-3", "").ok());
  EXPECT_TRUE(a->Claim({"shared"}, "x", "shared").ok());
  s = b->Claim({"shared"}, "agent-2", "");
  EXPECT_TRUE(absl::StrContains(s.message(), "is pool \"shared\"'s")) << s;
  EXPECT_TRUE(b->KnowsSlug("cam"));
  EXPECT_FALSE(b->KnowsSlug("nobody"));
  b->SyncNow();
  EXPECT_EQ(b->OwnerOf("cam"), "agent:agent-1");
  EXPECT_EQ(b->OwnerOf("shared"), "pool:shared");
  EXPECT_EQ(b->state().replicas, 2u);
}

TEST_F(ClusterDirectoryTest, AdminSettingsReachEveryReplicaAndSurviveRedis) {
  common::MetricsRegistry m1, m2;
  SessionRegistry r1, r2;
  auto a = Directory("a", &r1, &m1);
  auto b = Directory("b", &r2, &m2);
  tunnel::v1::AccessCodeHash code;
  code.set_salt(std::string(16, 's'));
  code.set_iterations(1000);
  code.set_hash(std::string(32, 'h'));
  ASSERT_TRUE(a->PublishAccess("cam", code).ok());
  ASSERT_TRUE(a->PublishIpRules("cam", nullptr).ok());
  b->SyncNow();
  auto [codes, rules] = r2.AdminSettings();
  ASSERT_TRUE(codes.contains("cam"));
  ASSERT_NE(codes["cam"], nullptr);
  EXPECT_EQ(codes["cam"]->hash(), code.hash());
  EXPECT_FALSE(rules.contains("cam"));  // cleared stays cleared

  // Redis loses everything; b comes back first, then a makes the tunnel
  // public before its own heartbeat: b's write-back must not undo that.
  redis_.Stop();
  b->SyncNow();
  EXPECT_FALSE(b->state().redis_up);
  EXPECT_FALSE(b->state().error.empty());
  ASSERT_TRUE(redis_.Start(redis_.port()));
  b->SyncNow();  // new epoch, known by b now
  a->SyncNow();  // a: new epoch too; writes back what it knows
  ASSERT_TRUE(a->PublishAccess("cam", std::nullopt).ok());
  b->SyncNow();
  a->SyncNow();
  for (SessionRegistry* r : {&r1, &r2}) {
    auto [c, ip] = r->AdminSettings();
    ASSERT_TRUE(c.contains("cam"));
    EXPECT_EQ(c["cam"], nullptr) << "public";
  }
}

TEST_F(ClusterDirectoryTest, WithoutRedisAClaimIsAcceptedAndCounted) {
  common::MetricsRegistry m;
  SessionRegistry r;
  auto a = Directory("a", &r, &m);
  redis_.Stop();
  a->SyncNow();
  ASSERT_FALSE(a->state().redis_up);
  EXPECT_TRUE(a->Claim({"cam"}, "agent-1", "").ok());
  const std::string text = m.Render();
  EXPECT_TRUE(
      absl::StrContains(text, "tunnel_cluster_unverified_claims_total 1"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "tunnel_cluster_redis_up 0")) << text;
  // An admin setting is refused rather than made on one replica only.
  absl::Status s = a->PublishAccess("cam", std::nullopt);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "nothing was changed")) << s;
}

TEST_F(ClusterDirectoryTest, RateCountsAddUpAcrossReplicas) {
  common::MetricsRegistry m1, m2;
  SessionRegistry r1, r2;
  auto a = Directory("a", &r1, &m1);
  auto b = Directory("b", &r2, &m2);
  const int64_t minute = absl::ToUnixSeconds(absl::Now()) / 60;
  a->Add("cam", minute, 5);
  b->Add("cam", minute, 2);
  a->SyncNow();
  b->SyncNow();
  a->SyncNow();
  EXPECT_EQ(a->Others("cam", minute), 2);
  EXPECT_EQ(b->Others("cam", minute), 5);
  EXPECT_EQ(b->Others("cam", minute - 1), 0);  // another window
  b->Add("cam", minute, -1);                   // taken back
  b->SyncNow();
  a->SyncNow();
  EXPECT_EQ(a->Others("cam", minute), 1);
}

TEST_F(ClusterDirectoryTest, RevocationsReachEveryReplicaAndOnlyGrow) {
  common::MetricsRegistry m1, m2;
  SessionRegistry r1, r2;
  auto a = Directory("a", &r1, &m1);
  auto b = Directory("b", &r2, &m2);
  a->SetRevocations([] { return std::vector<std::string>{"tok_1"}; },
                    [](absl::flat_hash_set<std::string>) {});
  std::vector<absl::flat_hash_set<std::string>> heard;
  b->SetRevocations([] { return std::vector<std::string>{}; },
                    [&](absl::flat_hash_set<std::string> ids) {
                      heard.push_back(std::move(ids));
                    });
  a->SyncNow();
  b->SyncNow();
  ASSERT_EQ(heard.size(), 1u);
  EXPECT_TRUE(heard[0].contains("tok_1"));
  b->SyncNow();
  EXPECT_EQ(heard.size(), 1u);  // told once
  // Redis lost the set: b still holds tok_1 revoked.
  redis_.Stop();
  ASSERT_TRUE(redis_.Start(redis_.port()));
  b->SyncNow();
  EXPECT_EQ(heard.size(), 1u);
}

}  // namespace
}  // namespace tunnel::server
