// agent-tunnel: flags -> AgentOptions, then run until SIGINT/SIGTERM or a
// permanent error (exit 1 with the reason; 2 for bad usage).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/agent.h"
#include "agent/local_target.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/tls.h"

namespace {

constexpr char kUsage[] =
    "agent-tunnel: publishes local HTTP services through a tunnel gateway.\n"
    "\n"
    "Usage: agent-tunnel connect --gateway HOST:PORT --id AGENT_ID \\\n"
    "           --token TOKEN_ID --secret SECRET --to http://127.0.0.1:3000\n"
    "\n"
    "Prints each public URL on its own line once the gateway accepts the\n"
    "connection, then forwards requests until stopped. Reconnects by itself\n"
    "after network failures; exits 1 on errors that retrying cannot fix\n"
    "(bad credentials, refused slug, a gateway certificate that --ca does\n"
    "not trust, a client certificate the gateway refuses).\n"
    "\n"
    "TLS is on unless --insecure: the gateway is verified with the system's\n"
    "roots, or --ca FILE for a private CA.\n";

int Fail(const std::string& message, int code) {
  std::cerr << "agent-tunnel: " << message << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  tunnel::agent::AgentOptions o;
  std::vector<std::string> to;
  std::string slug;
  std::string log_level = "info";
  std::string log_format = "text";
  absl::Duration drain_timeout = absl::Seconds(30);
  int64_t max_concurrent = static_cast<int64_t>(o.max_concurrent);
  int64_t receive_window = o.receive_window;

  tunnel::common::FlagSet flags(kUsage);
  flags.String("gateway", &o.gateway, "gateway gRPC address, HOST:PORT");
  flags.String("id", &o.agent_id, "agent id the token was issued for");
  flags.String("token", &o.token_id, "token id from `tunnelctl token issue`");
  flags.String("secret", &o.secret,
               "secret from `tunnelctl token issue` (prefer the env var)");
  flags.Repeated("to", &to,
                 "local service: URL, or NAME=URL for an extra named tunnel "
                 "(slug NAME-<slug>)");
  flags.String("slug", &slug,
               "public slug of the unnamed tunnel (default: "
               "the agent id, lowercased)");
  flags.Bool("insecure", &o.insecure,
             "connect without TLS (only for a gateway started with "
             "--insecure)");
  std::string ca_file, client_cert_file, client_key_file;
  flags.String("ca", &ca_file,
               "PEM CA certificate(s) to verify the gateway with instead of "
               "the system's roots (a private CA)");
  flags.String("client-cert", &client_cert_file,
               "PEM client certificate to present (gateway with "
               "--client-ca)");
  flags.String("client-key", &client_key_file,
               "PEM private key of --client-cert (unencrypted)");
  flags.String("tls-server-name", &o.tls_server_name,
               "name the gateway's certificate must have (default: the host "
               "of --gateway)");
  flags.Int("max-concurrent", &max_concurrent,
            "local requests in flight at once; further ones queue");
  flags.Int("stream-window", &receive_window,
            "per-stream window for request bodies, bytes (>= 65536)");
  flags.Duration("local-timeout", &o.local_timeout,
                 "local service silent this long mid-request: it fails");
  flags.Duration("connect-timeout", &o.connect_timeout,
                 "give up one connection attempt to the gateway after this");
  flags.Duration("max-backoff", &o.max_backoff,
                 "longest wait between reconnection attempts");
  flags.Duration("heartbeat-timeout", &o.heartbeat_timeout,
                 "gateway silent this long: reconnect");
  flags.Duration("drain-timeout", &drain_timeout,
                 "on SIGTERM/SIGINT, how long requests in flight may finish");
  flags.String("log-level", &log_level, "debug, info, warning or error");
  flags.String("log-format", &log_format,
               "text (lines for people) or json (one object per line)");

  if (argc < 2 || std::string(argv[1]) == "--help" ||
      std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::cout << flags.Usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::string(argv[1]) != "connect") {
    return Fail(absl::StrCat("unknown command \"", argv[1],
                             "\"; the command is `connect` (see --help)"),
                2);
  }
  absl::StatusOr<std::vector<std::string>> rest = flags.Parse(argc, argv, 2);
  if (!rest.ok()) return Fail(std::string(rest.status().message()), 2);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!rest->empty()) {
    return Fail(
        absl::StrCat("unexpected argument \"", (*rest)[0], "\" (see --help)"),
        2);
  }
  for (const char* name : {"gateway", "id", "token", "secret"}) {
    if (!flags.WasSet(name)) {
      return Fail(absl::StrCat("--", name, " is required (or set ",
                               flags.EnvName(name), ")"),
                  2);
    }
  }
  if (!tunnel::common::SetLogLevelByName(log_level)) {
    return Fail("--log-level must be debug, info, warning or error", 2);
  }
  if (!tunnel::common::SetLogFormatByName(log_format)) {
    return Fail("--log-format must be text or json", 2);
  }
  if (max_concurrent < 1) return Fail("--max-concurrent must be >= 1", 2);
  if (receive_window < 65536 || receive_window > (16 << 20)) {
    return Fail("--stream-window must be between 65536 and 16777216", 2);
  }
  if (o.insecure && (!ca_file.empty() || !client_cert_file.empty() ||
                     !client_key_file.empty() || !o.tls_server_name.empty())) {
    return Fail(
        "--insecure turns TLS off; --ca, --client-cert, --client-key and "
        "--tls-server-name need TLS",
        2);
  }
  if (client_cert_file.empty() != client_key_file.empty()) {
    return Fail("--client-cert and --client-key go together", 2);
  }
  if (!ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        tunnel::common::ReadPemFile("--ca", ca_file);
    if (!ca.ok()) return Fail(std::string(ca.status().message()), 2);
    if (absl::Status s =
            tunnel::common::CheckCertificates("--ca", ca_file, *ca);
        !s.ok()) {
      return Fail(std::string(s.message()), 2);
    }
    o.ca_pem = *std::move(ca);
  }
  if (!client_cert_file.empty()) {
    absl::StatusOr<tunnel::common::CertAndKey> pair =
        tunnel::common::LoadCertAndKey("--client-cert", client_cert_file,
                                       "--client-key", client_key_file);
    if (!pair.ok()) return Fail(std::string(pair.status().message()), 2);
    o.client_cert_pem = std::move(pair->cert_pem);
    o.client_key_pem = std::move(pair->key_pem);
  }
  o.max_concurrent = static_cast<size_t>(max_concurrent);
  o.receive_window = static_cast<uint32_t>(receive_window);
  if (slug.empty()) slug = absl::AsciiStrToLower(o.agent_id);
  auto targets = tunnel::agent::ParseTargets(to, slug);
  if (!targets.ok()) return Fail(std::string(targets.status().message()), 2);
  o.tunnels = *std::move(targets);

  o.on_accepted = [](const tunnel::v1::ConnectAccepted& a) {
    // One URL per line on stdout so scripts can pick them up; the rest of
    // the agent's chatter goes to stderr.
    for (const auto& t : a.tunnels()) {
      std::printf("%s\n%s\n", t.url().c_str(), t.path_url().c_str());
    }
    std::fflush(stdout);
  };

  sigset_t signals = tunnel::common::BlockTerminationSignals();
  tunnel::common::DisableMutexDeadlockDetection();

  tunnel::agent::Agent agent(o);
  std::atomic<bool> finished{false};
  std::thread drainer;
  std::thread signal_waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (finished) return;  // woken by main below, not by a user
    TUNNEL_LOG(INFO) << "received signal " << sig
                     << ": taking no new requests, finishing those in "
                        "flight (signal again to stop at once)";
    drainer = std::thread([&] { agent.Drain(drain_timeout); });
    sigwait(&signals, &sig);
    if (finished) return;
    TUNNEL_LOG(WARNING) << "second signal: stopping now";
    agent.Stop();
  });
  absl::Status result = agent.Run();
  finished = true;
  pthread_kill(signal_waiter.native_handle(), SIGTERM);
  signal_waiter.join();
  if (drainer.joinable()) drainer.join();
  if (!result.ok()) return Fail(std::string(result.message()), 1);
  return 0;
}
