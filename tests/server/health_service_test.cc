// grpc.health.v1.Health as the gateway serves it, through a real gRPC server
// and client on 127.0.0.1.
#include "server/health_service.h"

#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace tunnel::server {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr char kService[] = "tunnel.v1.TunnelService";

class HealthServiceTest : public ::testing::Test {
 protected:
  void Start(int max_watchers) {
    health_ = std::make_unique<HealthService>(
        std::vector<std::string>{kService}, max_watchers);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(health_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = Health::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                            grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (health_ != nullptr) health_->Shutdown();
    if (server_ != nullptr) server_->Shutdown();
  }

  grpc::Status Check(const std::string& service, HealthCheckResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    HealthCheckRequest req;
    req.set_service(service);
    return stub_->Check(&ctx, req, out);
  }

  // Waits (bounded) until `n` Watch calls are streaming on the server.
  bool WatchersReach(int n) {
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (health_->watchers() != n) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return true;
  }

  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
};

TEST_F(HealthServiceTest, CheckAnswersKnownNamesAndRefusesOthers) {
  Start(4);
  HealthCheckResponse r;
  ASSERT_TRUE(Check("", &r).ok());
  EXPECT_EQ(r.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(Check(kService, &r).ok());
  EXPECT_EQ(r.status(), HealthCheckResponse::SERVING);
  grpc::Status unknown = Check("no.such.Service", &r);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown.error_message().find("no.such.Service"), std::string::npos);

  health_->SetServing(false);
  ASSERT_TRUE(Check("", &r).ok());
  EXPECT_EQ(r.status(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(Check(kService, &r).ok());
  EXPECT_EQ(r.status(), HealthCheckResponse::NOT_SERVING);
}

TEST_F(HealthServiceTest, WatchStreamsChangesAndEndsAtShutdown) {
  Start(4);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service(kService);
  auto watch = stub_->Watch(&ctx, req);
  HealthCheckResponse r;
  ASSERT_TRUE(watch->Read(&r));
  EXPECT_EQ(r.status(), HealthCheckResponse::SERVING);
  health_->SetServing(false);
  ASSERT_TRUE(watch->Read(&r));
  EXPECT_EQ(r.status(), HealthCheckResponse::NOT_SERVING);
  // Shutdown ends the stream (the server's own shutdown never waits on it).
  health_->Shutdown();
  while (watch->Read(&r)) {
  }
  grpc::Status s = watch->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(WatchersReach(0));
}

TEST_F(HealthServiceTest, WatchOfAnUnknownNameSaysSoAndStaysOpen) {
  Start(4);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  auto watch = stub_->Watch(&ctx, req);
  HealthCheckResponse r;
  ASSERT_TRUE(watch->Read(&r));
  EXPECT_EQ(r.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  EXPECT_TRUE(WatchersReach(1));
  ctx.TryCancel();
  // The handler notices its caller left and frees its thread.
  EXPECT_TRUE(WatchersReach(0));
}

TEST_F(HealthServiceTest, WatchersBeyondTheLimitAreRefused) {
  Start(1);
  grpc::ClientContext first_ctx;
  HealthCheckRequest req;
  auto first = stub_->Watch(&first_ctx, req);
  HealthCheckResponse r;
  ASSERT_TRUE(first->Read(&r));
  ASSERT_TRUE(WatchersReach(1));

  grpc::ClientContext second_ctx;
  auto second = stub_->Watch(&second_ctx, req);
  EXPECT_FALSE(second->Read(&r));
  grpc::Status s = second->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("Health.Check"), std::string::npos);

  // Check is never limited.
  EXPECT_TRUE(Check("", &r).ok());
  first_ctx.TryCancel();
  EXPECT_TRUE(WatchersReach(0));
}

}  // namespace
}  // namespace tunnel::server
