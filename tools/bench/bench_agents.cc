// bench_agents: many idle agents in one process, for the gateway's
// per-agent memory and mass-reconnect benchmarks.
//
//   bench_agents --write-credentials FILE --count N
//       writes credentials for agents idle-0 .. idle-N-1 and exits.
//   bench_agents --gateway HOST:PORT[,HOST:PORT...] --credentials FILE
//                --count N
//       connects N agents, each on its own TCP connection (own channel, own
//       subchannel pool), answers pings, and reconnects with full-jitter
//       backoff when a session ends (with several gateways, as agent-tunnel
//       does: each agent to the next one). Prints one line per event a
//       script can wait for:
//         "connected N in S"      all N accepted (S seconds since start)
//         "lost K"                 sessions ended (first loss of a wave)
//         "reconnected N in S"     all N back, S seconds after the first loss
//       Runs until SIGTERM/SIGINT.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <deque>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/credentials.h"
#include "common/flags.h"
#include "common/hmac_auth.h"
#include "grpcpp/grpcpp.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace {

using tunnel::v1::Envelope;

class Fleet;

// One idle agent session (callback API). Deletes itself in OnDone.
class IdleAgent : public grpc::ClientBidiReactor<Envelope, Envelope> {
 public:
  IdleAgent(Fleet* fleet, int index);
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  void QueueWrite(Envelope e);
  Fleet* const fleet_;
  const int index_;
  grpc::ClientContext ctx_;
  std::unique_ptr<tunnel::v1::TunnelService::Stub> stub_;
  Envelope in_;
  absl::Mutex mu_;
  std::deque<Envelope> pending_ ABSL_GUARDED_BY(mu_);
  Envelope writing_;
  bool write_busy_ ABSL_GUARDED_BY(mu_) = false;
  bool accepted_ = false;
};

class Fleet {
 public:
  Fleet(std::vector<std::string> gateways, tunnel::v1::CredentialsFile creds)
      : gateways_(std::move(gateways)), creds_(std::move(creds)) {
    start_ = absl::Now();
  }

  const tunnel::v1::Credential& cred(int i) const {
    return creds_.credentials(i);
  }
  int count() const { return creds_.credentials_size(); }

  std::shared_ptr<grpc::Channel> NewChannel(const std::string& gateway) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
    return grpc::CreateCustomChannel(gateway,
                                     grpc::InsecureChannelCredentials(), args);
  }

  void Accepted() {
    absl::MutexLock lock(&mu_);
    ++connected_;
    if (connected_ == count()) {
      if (!first_done_) {
        first_done_ = true;
        std::printf("connected %d in %.2f\n", count(),
                    absl::ToDoubleSeconds(absl::Now() - start_));
      } else {
        std::printf("reconnected %d in %.2f\n", count(),
                    absl::ToDoubleSeconds(absl::Now() - wave_start_));
      }
      std::fflush(stdout);
      in_wave_ = false;
    }
  }

  // A session ended (after acceptance or not): reconnect later.
  void Lost(int index, bool was_accepted, int attempt) {
    {
      absl::MutexLock lock(&mu_);
      // The next gateway for this agent's next attempt.
      gateway_of_[index] = (gateway_of_[index] + 1) % gateways_.size();
      if (was_accepted) {
        --connected_;
        if (!in_wave_ && first_done_) {
          in_wave_ = true;
          wave_start_ = absl::Now();
          std::printf("lost sessions\n");
          std::fflush(stdout);
        }
      }
      // Full jitter, capped at 5 s (matches the agent's policy, smaller cap).
      double cap = std::min(5.0, 0.2 * (1 << std::min(attempt, 10)));
      std::uniform_real_distribution<double> jitter(0, cap);
      absl::Time when = absl::Now() + absl::Seconds(jitter(rng_));
      timers_.push({when, index, attempt + 1});
    }
  }

  // Runs the reconnect timers until stop.
  void TimerLoop(const std::atomic<bool>* stop) {
    while (!*stop) {
      std::vector<std::pair<int, int>> due;
      {
        absl::MutexLock lock(&mu_);
        absl::Time now = absl::Now();
        while (!timers_.empty() && timers_.top().when <= now) {
          due.push_back({timers_.top().index, timers_.top().attempt});
          timers_.pop();
        }
      }
      for (auto [i, attempt] : due) Start(i, attempt);
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  void Start(int index, int attempt) {
    attempts_[index] = attempt;
    new IdleAgent(this, index);
  }
  int attempt(int index) const { return attempts_[index]; }
  // One channel (one TCP connection) per agent, kept across reconnects as a
  // real agent process would, and never destroyed inside a gRPC callback.
  void Init() {
    attempts_ = std::vector<std::atomic<int>>(count());
    gateway_of_ = std::vector<std::atomic<size_t>>(count());
    channels_.resize(gateways_.size());
    for (size_t g = 0; g < gateways_.size(); ++g) {
      for (int i = 0; i < count(); ++i) {
        channels_[g].push_back(NewChannel(gateways_[g]));
      }
    }
  }
  const std::shared_ptr<grpc::Channel>& channel(int i) const {
    return channels_[gateway_of_[i]][i];
  }

 private:
  struct Timer {
    absl::Time when;
    int index;
    int attempt;
    bool operator<(const Timer& o) const { return when > o.when; }
  };
  const std::vector<std::string> gateways_;
  const tunnel::v1::CredentialsFile creds_;
  absl::Mutex mu_;
  int connected_ ABSL_GUARDED_BY(mu_) = 0;
  bool first_done_ ABSL_GUARDED_BY(mu_) = false;
  bool in_wave_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time start_;
  absl::Time wave_start_ ABSL_GUARDED_BY(mu_);
  std::priority_queue<Timer> timers_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_){42};
  std::vector<std::atomic<int>> attempts_;
  std::vector<std::atomic<size_t>> gateway_of_;  // index into gateways_
  // Per gateway, one channel per agent.
  std::vector<std::vector<std::shared_ptr<grpc::Channel>>> channels_;
};

IdleAgent::IdleAgent(Fleet* fleet, int index) : fleet_(fleet), index_(index) {
  const auto& c = fleet_->cred(index);
  auto md = tunnel::common::SignAuthMetadata(c.agent_id(), c.token_id(),
                                             c.secret(), absl::Now());
  for (const auto& [k, v] : *md) ctx_.AddMetadata(k, v);
  stub_ = tunnel::v1::TunnelService::NewStub(fleet_->channel(index));
  stub_->async()->Connect(&ctx_, this);
  Envelope hello;
  auto* r = hello.mutable_connect();
  r->set_protocol_version(tunnel::v1::PROTOCOL_VERSION_1);
  r->set_agent_id(c.agent_id());
  r->set_agent_version("bench");
  r->add_tunnels()->set_slug(c.agent_id());
  QueueWrite(std::move(hello));
  StartRead(&in_);
  StartCall();
}

void IdleAgent::QueueWrite(Envelope e) {
  absl::MutexLock lock(&mu_);
  if (write_busy_) {
    pending_.push_back(std::move(e));
    return;
  }
  write_busy_ = true;
  writing_ = std::move(e);
  StartWrite(&writing_);
}

void IdleAgent::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  write_busy_ = false;
  if (!ok || pending_.empty()) return;
  write_busy_ = true;
  writing_ = std::move(pending_.front());
  pending_.pop_front();
  StartWrite(&writing_);
}

void IdleAgent::OnReadDone(bool ok) {
  if (!ok) return;
  if (in_.has_accepted()) {
    accepted_ = true;
    fleet_->Accepted();
  } else if (in_.has_control() && in_.control().has_ping()) {
    Envelope pong;
    pong.mutable_control()->mutable_pong()->set_nonce(
        in_.control().ping().nonce());
    QueueWrite(std::move(pong));
  }
  StartRead(&in_);
}

void IdleAgent::OnDone(const grpc::Status&) {
  fleet_->Lost(index_, accepted_, accepted_ ? 0 : fleet_->attempt(index_));
  delete this;
}

std::atomic<bool> g_stop{false};

}  // namespace

int main(int argc, char** argv) {
  std::string gateway, credentials, write_credentials;
  int64_t count = 1000;
  tunnel::common::FlagSet flags("bench_agents: many idle agents\n",
                                "BENCH_AGENTS_");
  flags.String("gateway", &gateway,
               "gateway gRPC address; several, comma-separated");
  flags.String("credentials", &credentials, "credentials file to use");
  flags.String("write-credentials", &write_credentials,
               "write credentials for --count agents here and exit");
  flags.Int("count", &count, "number of agents");
  auto rest = flags.Parse(argc, argv);
  if (!rest.ok()) {
    std::fprintf(stderr, "bench_agents: %s\n",
                 std::string(rest.status().message()).c_str());
    return 2;
  }
  if (!write_credentials.empty()) {
    tunnel::v1::CredentialsFile file;
    for (int i = 0; i < count; ++i) {
      auto c = tunnel::common::IssueCredential(absl::StrCat("idle-", i),
                                               absl::Now());
      *file.add_credentials() = *c;
    }
    auto s = tunnel::common::SaveCredentialsFile(write_credentials, file);
    if (!s.ok()) {
      std::fprintf(stderr, "bench_agents: %s\n",
                   std::string(s.message()).c_str());
      return 1;
    }
    return 0;
  }
  auto creds = tunnel::common::LoadCredentialsFile(credentials);
  if (!creds.ok()) {
    std::fprintf(stderr, "bench_agents: %s\n",
                 std::string(creds.status().message()).c_str());
    return 1;
  }
  tunnel::v1::CredentialsFile mine;
  for (const auto& c : creds->credentials()) {
    if (mine.credentials_size() >= count) break;
    if (c.agent_id().rfind("idle-", 0) == 0) *mine.add_credentials() = c;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  Fleet fleet(absl::StrSplit(gateway, ',', absl::SkipEmpty()), mine);
  fleet.Init();
  for (int i = 0; i < fleet.count(); ++i) fleet.Start(i, 0);
  std::thread timers([&] { fleet.TimerLoop(&g_stop); });
  int sig;
  sigwait(&signals, &sig);
  g_stop = true;
  timers.join();
  std::_Exit(0);  // sessions are torn down with the process
}
