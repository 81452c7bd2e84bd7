#include "agent/health_check.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tunnel::agent {
namespace {

std::string TimeoutText(absl::Duration timeout) {
  return absl::StrCat("no answer within ", absl::FormatDuration(timeout));
}

// A TCP connect within the timeout, to any address the host resolves to.
std::string ProbeTcp(const LocalTarget& t, absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = absl::StrCat(t.port);
  if (int rc = getaddrinfo(t.host.c_str(), port.c_str(), &hints, &res);
      rc != 0) {
    return absl::StrCat("cannot resolve ", t.host, ": ", gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> owned(res, &freeaddrinfo);
  std::string why = "no address";
  const absl::Time deadline = absl::Now() + timeout;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int err = 0;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int64_t ms = std::max<int64_t>(
            0, absl::ToInt64Milliseconds(deadline - absl::Now()));
        int n = poll(&p, 1, static_cast<int>(ms));
        if (n == 0) {
          err = ETIMEDOUT;
        } else {
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
    }
    close(fd);
    if (err == 0) return "";
    why = err == ETIMEDOUT ? TimeoutText(timeout) : std::strerror(err);
    why[0] = static_cast<char>(std::tolower(why[0]));
  }
  return why;
}

size_t Discard(char*, size_t size, size_t n, void*) { return size * n; }

// GET of the path; 2xx and 3xx are healthy.
std::string ProbeHttp(const LocalTarget& t, const HealthCheckOptions& o) {
  CURL* e = curl_easy_init();
  if (e == nullptr) return "cannot start a probe (curl_easy_init)";
  const std::string url =
      absl::StrCat(t.scheme, "://", t.host, ":", t.port, t.base_path, o.path);
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Discard);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Milliseconds(o.timeout))));
  if (t.scheme == "https") {
    // As for requests: local services use self-signed certificates.
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  const CURLcode rc = curl_easy_perform(e);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(e);
  if (rc == CURLE_OPERATION_TIMEDOUT) return TimeoutText(o.timeout);
  if (rc != CURLE_OK) {
    return absl::StrCat("GET ", o.path, ": ",
                        error[0] != '\0' ? error : curl_easy_strerror(rc));
  }
  if (status < 200 || status > 399) {
    return absl::StrCat("GET ", o.path, " answered HTTP ", status);
  }
  return "";
}

}  // namespace

std::string ProbeTarget(const LocalTarget& target,
                        const HealthCheckOptions& options) {
  return options.path.empty() ? ProbeTcp(target, options.timeout)
                              : ProbeHttp(target, options);
}

HealthChecker::HealthChecker(std::vector<LocalTarget> targets,
                             HealthCheckOptions options, OnChange on_change)
    : targets_(std::move(targets)),
      options_(std::move(options)),
      on_change_(std::move(on_change)),
      streak_(targets_.size(), 0) {
  for (const LocalTarget& t : targets_) {
    TargetHealth h;
    h.name = t.name;
    state_.push_back(std::move(h));
  }
}

HealthChecker::~HealthChecker() { Stop(); }

void HealthChecker::Start() {
  if (options_.interval <= absl::ZeroDuration() || thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void HealthChecker::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<TargetHealth> HealthChecker::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

void HealthChecker::Loop() {
  while (true) {
    const absl::Time round = absl::Now();
    for (size_t i = 0; i < targets_.size(); ++i) {
      const std::string why = ProbeTarget(targets_[i], options_);
      int& streak = streak_[i];
      if (why.empty()) {
        streak = streak > 0 ? streak + 1 : 1;
      } else {
        streak = streak < 0 ? streak - 1 : -1;
      }
      TargetHealth changed;
      bool flip = false;
      {
        absl::MutexLock lock(&mu_);
        TargetHealth& h = state_[i];
        if (h.healthy && streak <= -options_.unhealthy_after) {
          h.healthy = false;
          h.reason = why;
          flip = true;
        } else if (!h.healthy && streak >= options_.healthy_after) {
          h.healthy = true;
          h.reason.clear();
          flip = true;
        } else if (!h.healthy && !why.empty()) {
          h.reason = why;  // the latest reason, not reported again
        }
        changed = h;
      }
      if (flip) on_change_(changed);
    }
    absl::MutexLock lock(&mu_);
    auto stopping = [this]()
                        ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    // The next round, or Stop(): whichever comes first.
    if (mu_.AwaitWithDeadline(absl::Condition(&stopping),
                              round + options_.interval)) {
      return;
    }
  }
}

}  // namespace tunnel::agent
