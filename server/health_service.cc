#include "server/health_service.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tunnel::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {
// How often a Watch looks whether its caller went away (the sync API has
// no wake-up for that).
constexpr absl::Duration kCancelPoll = absl::Milliseconds(200);
}  // namespace

HealthService::HealthService(std::vector<std::string> services,
                             int max_watchers)
    : services_(services.begin(), services.end()),
      max_watchers_(max_watchers) {}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || serving_ == serving) return;
  serving_ = serving;
  ++changes_;
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (!shut_down_) {
    shut_down_ = true;
    serving_ = false;
    ++changes_;
  }
}

int HealthService::watchers() const {
  absl::MutexLock lock(&mu_);
  return watchers_;
}

HealthCheckResponse::ServingStatus HealthService::StatusOf(
    const std::string& service) const {
  if (!service.empty() && !services_.contains(service)) {
    return HealthCheckResponse::SERVICE_UNKNOWN;
  }
  return serving_ ? HealthCheckResponse::SERVING
                  : HealthCheckResponse::NOT_SERVING;
}

grpc::Status HealthService::Check(grpc::ServerContext*,
                                  const HealthCheckRequest* request,
                                  HealthCheckResponse* response) {
  absl::MutexLock lock(&mu_);
  HealthCheckResponse::ServingStatus status = StatusOf(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("unknown service \"", request->service(), "\""));
  }
  response->set_status(status);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(
    grpc::ServerContext* context, const HealthCheckRequest* request,
    grpc::ServerWriter<HealthCheckResponse>* writer) {
  {
    absl::MutexLock lock(&mu_);
    if (watchers_ >= max_watchers_) {
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("too many Health.Watch calls at once (limit ",
                       max_watchers_, "); use Health.Check"));
    }
    ++watchers_;
  }
  uint64_t seen = 0;
  bool first = true;
  grpc::Status result = grpc::Status::OK;
  while (true) {
    HealthCheckResponse response;
    {
      absl::MutexLock lock(&mu_);
      auto changed = [this, &seen, &first]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return first || changes_ != seen;
      };
      // Wakes for a change; looks at the caller every kCancelPoll.
      while (!mu_.AwaitWithTimeout(absl::Condition(&changed), kCancelPoll)) {
        if (context->IsCancelled()) break;
      }
      if (!first && changes_ == seen) break;  // cancelled
      first = false;
      seen = changes_;
      response.set_status(StatusOf(request->service()));
      if (shut_down_) {
        result = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the gateway is shutting down");
      }
    }
    if (!writer->Write(response) || !result.ok()) break;
  }
  absl::MutexLock lock(&mu_);
  --watchers_;
  return result;
}

}  // namespace tunnel::server
