// Real parts on loopback for integration tests: a gateway (gRPC + front door
// on port 0), agents running in threads, local HTTP services, and visitors.
#ifndef TUNNEL_TESTS_TESTING_TUNNEL_HARNESS_H_
#define TUNNEL_TESTS_TESTING_TUNNEL_HARNESS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "agent/agent.h"
#include "httplib.h"
#include "server/gateway.h"
#include "tunnel/v1/credentials.pb.h"

namespace tunnel::testing {

// httplib::Server with room for bursts: 256 workers and a real backlog
// (the library's defaults, 8 threads and a backlog of 5, are not what the
// services behind a tunnel look like).
class TestHttpServer : public httplib::Server {
 public:
  TestHttpServer();
  void RaiseBacklog();
};

// A real cpp-httplib server on 127.0.0.1:<free port>, serving in a thread.
class LocalService {
 public:
  LocalService();
  ~LocalService();
  TestHttpServer& server() { return server_; }
  // Binds and starts; call after registering handlers.
  void Start();
  void Stop();
  int port() const { return port_; }
  std::string url() const;

 private:
  TestHttpServer server_;
  int port_ = 0;
  // After Stop: a bound, not listening socket on port_, so connections to
  // the stopped service are refused instead of reaching another test's
  // server that got the freed port (ctest runs tests in parallel).
  int reserved_fd_ = -1;
  std::thread thread_;
};

// An agent running Run() on its own thread.
class RunningAgent {
 public:
  explicit RunningAgent(agent::AgentOptions options);
  ~RunningAgent();
  agent::Agent& agent() { return *agent_; }
  // Waits for Run() to return (bounded) and gives its status.
  absl::Status WaitForExit(absl::Duration timeout);
  void Stop();

 private:
  std::unique_ptr<agent::Agent> agent_;
  absl::Status result_;
  absl::Notification exited_;
  std::thread thread_;
};

// A child process (e.g. the real agent-tunnel binary), so tests can
// kill -9 or SIGSTOP it. stderr goes to a file the test can read.
class ChildProcess {
 public:
  ChildProcess(const std::string& binary, const std::vector<std::string>& args,
               const std::vector<std::string>& env = {});
  ~ChildProcess();  // SIGKILLs and reaps if still running
  int pid() const { return pid_; }
  void Signal(int sig);
  // Waits (bounded) for exit; the exit code, or -1 if still running, or
  // 128+signal if killed.
  int WaitForExit(absl::Duration timeout);
  std::string Stderr() const;

 private:
  int pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string stderr_path_;
};

class TunnelHarness {
 public:
  // Credentials for `agent_ids` (one token each).
  explicit TunnelHarness(std::vector<std::string> agent_ids = {"cam-01"});
  ~TunnelHarness();

  // Starts the gateway; `tweak` may change options first.
  void StartGateway(
      std::function<void(server::GatewayOptions&)> tweak = nullptr);
  server::Gateway& gateway() { return *gateway_; }

  // Options for an agent with valid credentials for `agent_id` (health
  // probes off: set `health.interval` to test them).
  agent::AgentOptions AgentOptionsFor(const std::string& agent_id,
                                      const std::vector<std::string>& to);
  // Starts an agent and waits until the gateway accepted it.
  RunningAgent* StartAgent(const std::string& agent_id,
                           const std::vector<std::string>& to);
  RunningAgent* StartAgent(agent::AgentOptions options);
  // Command-line arguments for the agent-tunnel binary with the same
  // credentials (the secret goes in the environment entry `*env`).
  std::vector<std::string> AgentArgs(const std::string& agent_id,
                                     const std::vector<std::string>& to,
                                     std::string* env);
  // Stops the gateway and starts a new one on the same ports.
  void RestartGateway();
  // Waits (bounded) until the gateway has `n` live agent sessions.
  bool WaitForSessions(size_t n, absl::Duration timeout = absl::Seconds(20));

  // A visitor client for the front door (no re-encoding, no decompression).
  std::unique_ptr<httplib::Client> Visitor() const;
  // Path-routed target for a slug.
  static std::string Path(const std::string& slug, const std::string& rest);

  const tunnel::v1::CredentialsFile& credentials() const { return creds_; }

 private:
  tunnel::v1::CredentialsFile creds_;
  std::unique_ptr<server::Gateway> gateway_;
  void StartGatewayOn(int grpc_port, int http_port);

  std::function<void(server::GatewayOptions&)> tweak_;
  // Kept apart from gateway_ so visitors on other threads can connect while
  // RestartGateway swaps the gateway (the port stays the same).
  std::atomic<int> http_port_{0};
  std::vector<std::unique_ptr<RunningAgent>> agents_;
};

// Lowercase hex SHA-256, incrementally.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  void Update(const char* data, size_t n);
  std::string HexDigest();

 private:
  void* ctx_;
};

// The value of one series in the gateway's /metrics text (e.g.
// `tunnel_limit_rejections_total{limit="rate"}`), or `absent` if it is not
// there.
double MetricValue(server::Gateway& gw, absl::string_view series,
                   double absent);

// A raw TCP connection to 127.0.0.1:`port` (with SO_RCVBUF `rcvbuf` if > 0,
// set before connecting); -1 on failure.
int ConnectLoopback(int port, int rcvbuf = 0);

// Deterministic bytes for offset `offset` of a test body with `seed`.
void FillPattern(uint64_t seed, uint64_t offset, char* out, size_t n);
std::string PatternSha256(uint64_t seed, uint64_t length);
// GET ?size=N&seed=S: N pattern bytes with Content-Length, in pieces of at
// most 256 KiB. With &pad=P the head carries P bytes
// more, in fields X-Pad-0, X-Pad-1, ...
void ServePatternDownload(const httplib::Request& req, httplib::Response& res);
// A chunked body of `size` pattern bytes in pieces of at most `piece` bytes,
// for httplib's set_chunked_content_provider and chunked client uploads.
httplib::ContentProviderWithoutLength PatternProvider(uint64_t seed,
                                                      uint64_t size,
                                                      size_t piece);

}  // namespace tunnel::testing

#endif  // TUNNEL_TESTS_TESTING_TUNNEL_HARNESS_H_
