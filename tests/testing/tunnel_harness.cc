#include "tests/testing/tunnel_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "agent/local_target.h"
#include "common/credentials.h"
#include "gtest/gtest.h"

namespace tunnel::testing {

TestHttpServer::TestHttpServer() {
  new_task_queue = [] { return new httplib::ThreadPool(256); };
  // Long enough that a test never sees a request end by these timeouts
  // instead of by the behaviour under test.
  set_read_timeout(60);
  set_write_timeout(60);
  // Stop() waits for idle keep-alive connections to time out.
  set_keep_alive_timeout(1);
}

void TestHttpServer::RaiseBacklog() { ::listen(svr_sock_, 1024); }

LocalService::LocalService() = default;

LocalService::~LocalService() {
  Stop();
  if (reserved_fd_ >= 0) close(reserved_fd_);
}

void LocalService::Start() {
  if (reserved_fd_ >= 0) {
    close(reserved_fd_);
    reserved_fd_ = -1;
  }
  port_ = server_.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port_, 0);
  server_.RaiseBacklog();
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!server_.is_running() && absl::Now() < give_up) {
    std::this_thread::yield();
  }
}

void LocalService::Stop() {
  server_.stop();
  if (thread_.joinable()) thread_.join();
  if (port_ <= 0 || reserved_fd_ >= 0) return;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port_));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 &&
      bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) == 0) {
    reserved_fd_ = fd;
  } else if (fd >= 0) {
    close(fd);
  }
}

std::string LocalService::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

RunningAgent::RunningAgent(agent::AgentOptions options)
    : agent_(std::make_unique<agent::Agent>(std::move(options))) {
  thread_ = std::thread([this] {
    result_ = agent_->Run();
    exited_.Notify();
  });
}

RunningAgent::~RunningAgent() { Stop(); }

void RunningAgent::Stop() {
  agent_->Stop();
  if (thread_.joinable()) thread_.join();
}

absl::Status RunningAgent::WaitForExit(absl::Duration timeout) {
  if (!exited_.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError("agent still running");
  }
  return result_;
}

TunnelHarness::TunnelHarness(std::vector<std::string> agent_ids) {
  for (const std::string& id : agent_ids) {
    auto cred = common::IssueCredential(id, absl::Now());
    EXPECT_TRUE(cred.ok()) << cred.status();
    *creds_.add_credentials() = *cred;
  }
}

TunnelHarness::~TunnelHarness() {
  for (auto& a : agents_) a->Stop();
  agents_.clear();
  if (gateway_ != nullptr) gateway_->Shutdown();
}

void TunnelHarness::StartGateway(
    std::function<void(server::GatewayOptions&)> tweak) {
  tweak_ = std::move(tweak);
  StartGatewayOn(0, 0);
}

void TunnelHarness::StartGatewayOn(int grpc_port, int http_port) {
  server::GatewayOptions o;
  o.grpc_addr = absl::StrCat("127.0.0.1:", grpc_port);
  o.http_addr = absl::StrCat("127.0.0.1:", http_port);
  o.credentials = creds_;
  if (tweak_) tweak_(o);
  auto gw = server::Gateway::Start(o);
  ASSERT_TRUE(gw.ok()) << gw.status();
  gateway_ = *std::move(gw);
  http_port_ = gateway_->http_port();
}

void TunnelHarness::RestartGateway() {
  int grpc_port = gateway_->grpc_port();
  int http_port = gateway_->http_port();
  gateway_->Shutdown();
  gateway_.reset();
  StartGatewayOn(grpc_port, http_port);
}

bool TunnelHarness::WaitForSessions(size_t n, absl::Duration timeout) {
  absl::Time give_up = absl::Now() + timeout;
  while (gateway_->registry().session_count() != n) {
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

std::vector<std::string> TunnelHarness::AgentArgs(
    const std::string& agent_id, const std::vector<std::string>& to,
    std::string* env) {
  agent::AgentOptions o = AgentOptionsFor(agent_id, to);
  std::vector<std::string> args = {"connect",  "--gateway", o.gateway,
                                   "--id",     agent_id,    "--token",
                                   o.token_id, "--insecure"};
  for (const std::string& t : to) {
    args.push_back("--to");
    args.push_back(t);
  }
  *env = "TUNNEL_SECRET=" + o.secret;
  return args;
}

ChildProcess::ChildProcess(const std::string& binary,
                           const std::vector<std::string>& args,
                           const std::vector<std::string>& env) {
  char tmpl[] = "/tmp/tunnel-child-XXXXXX";
  int fd = mkstemp(tmpl);
  stderr_path_ = tmpl;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null",
                                   O_WRONLY, 0);
  std::vector<std::string> argv_s = {binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s = env;
  env_s.push_back("PATH=/usr/bin:/bin");
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  // Signals blocked in the test process (none by default) stay blocked in
  // the child; the agent blocks and sigwaits its own.
  int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(),
                       envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fd);
  EXPECT_EQ(rc, 0) << "cannot start " << binary;
  if (rc != 0) pid_ = -1;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
  unlink(stderr_path_.c_str());
}

void ChildProcess::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

int ChildProcess::WaitForExit(absl::Duration timeout) {
  absl::Time give_up = absl::Now() + timeout;
  while (!reaped_) {
    int r = waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      break;
    }
    if (absl::Now() >= give_up) return -1;
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return WEXITSTATUS(status_);
}

std::string ChildProcess::Stderr() const {
  std::ifstream in(stderr_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

agent::AgentOptions TunnelHarness::AgentOptionsFor(
    const std::string& agent_id, const std::vector<std::string>& to) {
  agent::AgentOptions o;
  o.gateway = absl::StrCat("127.0.0.1:", gateway_->grpc_port());
  o.agent_id = agent_id;
  for (const auto& c : creds_.credentials()) {
    if (c.agent_id() == agent_id) {
      o.token_id = c.token_id();
      o.secret = c.secret();
    }
  }
  o.insecure = true;
  auto targets = agent::ParseTargets(to, agent_id);
  EXPECT_TRUE(targets.ok()) << targets.status();
  if (targets.ok()) o.tunnels = *targets;
  o.initial_backoff = absl::Milliseconds(50);
  o.max_backoff = absl::Milliseconds(500);
  // No health probes unless a test asks: they are connections the tests'
  // services would count.
  o.health.interval = absl::ZeroDuration();
  return o;
}

RunningAgent* TunnelHarness::StartAgent(const std::string& agent_id,
                                        const std::vector<std::string>& to) {
  return StartAgent(AgentOptionsFor(agent_id, to));
}

RunningAgent* TunnelHarness::StartAgent(agent::AgentOptions options) {
  agents_.push_back(std::make_unique<RunningAgent>(std::move(options)));
  RunningAgent* a = agents_.back().get();
  EXPECT_TRUE(a->agent().WaitUntilConnected(absl::Seconds(20)))
      << "agent did not connect";
  return a;
}

std::unique_ptr<httplib::Client> TunnelHarness::Visitor() const {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", http_port_.load());
  c->set_url_encode(false);
  c->set_decompress(false);
  c->set_read_timeout(std::chrono::seconds(60));
  c->set_write_timeout(std::chrono::seconds(60));
  return c;
}

std::string TunnelHarness::Path(const std::string& slug,
                                const std::string& rest) {
  return absl::StrCat("/t/", slug, rest);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr);
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::Update(const char* data, size_t n) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n);
}

std::string Sha256::HexDigest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

void FillPattern(uint64_t seed, uint64_t offset, char* out, size_t n) {
  // splitmix64 of (seed, 8-byte block index): any offset, any split.
  for (size_t i = 0; i < n; ++i) {
    uint64_t pos = offset + i;
    uint64_t z = seed * 0x9E3779B97F4A7C15ULL + (pos >> 3) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    out[i] = static_cast<char>(z >> ((pos & 7) * 8));
  }
}

void ServePatternDownload(const httplib::Request& req, httplib::Response& res) {
  uint64_t size = std::stoull(req.get_param_value("size"));
  uint64_t seed = std::stoull(req.get_param_value("seed"));
  if (req.has_param("pad")) {
    // Fields of up to 4,000 bytes: httplib's client takes lines of 8 KiB.
    const uint64_t pad = std::stoull(req.get_param_value("pad"));
    for (uint64_t off = 0, i = 0; off < pad; off += 4000, ++i) {
      res.set_header(absl::StrCat("X-Pad-", i),
                     std::string(std::min<uint64_t>(pad - off, 4000), 'p'));
    }
  }
  res.set_content_provider(
      size, "application/octet-stream",
      [seed](size_t offset, size_t length, httplib::DataSink& sink) {
        std::string buf(std::min<size_t>(length, 256 * 1024), '\0');
        FillPattern(seed, offset, buf.data(), buf.size());
        return sink.write(buf.data(), buf.size());
      });
}

httplib::ContentProviderWithoutLength PatternProvider(uint64_t seed,
                                                      uint64_t size,
                                                      size_t piece) {
  return [seed, size, piece](size_t offset, httplib::DataSink& sink) {
    if (offset >= size) {
      sink.done();
      return true;
    }
    std::string buf(std::min<uint64_t>(size - offset, piece), '\0');
    FillPattern(seed, offset, buf.data(), buf.size());
    return sink.write(buf.data(), buf.size());
  };
}

std::string PatternSha256(uint64_t seed, uint64_t length) {
  Sha256 h;
  std::string buf(1 << 16, '\0');
  for (uint64_t off = 0; off < length; off += buf.size()) {
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(buf.size(), length - off));
    FillPattern(seed, off, buf.data(), n);
    h.Update(buf.data(), n);
  }
  return h.HexDigest();
}

double MetricValue(server::Gateway& gw, absl::string_view series,
                   double absent) {
  for (absl::string_view line : absl::StrSplit(gw.metrics().Render(), '\n')) {
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      double v;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return absent;
}

int ConnectLoopback(int port, int rcvbuf) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (rcvbuf > 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace tunnel::testing
