// agent-tunnel connect: flags/config -> AgentOptions, then run until
// SIGINT/SIGTERM or a permanent error (exit 1 with the reason; 2 for bad
// usage). agent-tunnel status: prints what a running agent wrote to its state
// file.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/agent.h"
#include "agent/agent_flags.h"
#include "agent/inspect_server.h"
#include "agent/qr.h"
#include "agent/share_command.h"
#include "agent/state_file.h"
#include "common/allocator.h"
#include "common/flags.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "common/socket_io.h"
#include "google/protobuf/util/json_util.h"
#include "tunnel/v1/agent_state.pb.h"

namespace {

constexpr char kUsage[] =
    "agent-tunnel: publishes local HTTP services through a tunnel gateway.\n"
    "\n"
    "Usage: agent-tunnel connect --gateway HOST:PORT --id AGENT_ID \\\n"
    "           --token TOKEN_ID --secret SECRET --to http://127.0.0.1:3000\n"
    "       agent-tunnel connect --config agent.txtpb\n"
    "       agent-tunnel share --gateway HOST:PORT --id AGENT_ID \\\n"
    "           --token TOKEN_ID --secret SECRET --to http://127.0.0.1:3000\n"
    "       agent-tunnel status [--json] [--id ID | --state-file FILE]\n"
    "\n"
    "connect prints each public URL on its own line once the gateway accepts\n"
    "the connection (and, when stdout is a terminal and --quiet is not\n"
    "given, a QR code of the first URL after them), then forwards requests\n"
    "until stopped. Reconnects by itself after network failures; exits 1 on\n"
    "errors that retrying cannot fix (bad credentials, refused slug, a\n"
    "gateway certificate that --ca does not trust, a client certificate the\n"
    "gateway refuses). TLS is on unless --insecure: the gateway is verified\n"
    "with the system's roots, or --ca FILE for a private CA.\n"
    "When stdout is a terminal, the request inspector shows every request\n"
    "at http://127.0.0.1:4040/ and can replay it (--inspect; README\n"
    "\"Inspecting and replaying requests\").\n"
    "--config FILE reads the flags from a tunnel.v1.AgentConfig in the\n"
    "protobuf text format or JSON (.json); see README \"Config files\".\n"
    "\n"
    "share serves one local service end-to-end encrypted: the gateway only\n"
    "relays; prints a link and a pairing code (agent-tunnel share --help).\n"
    "\n"
    "status reads the state file of a running agent and prints it; exit 0\n"
    "when that agent is connected, 1 when it is not or no agent runs.\n";

constexpr char kStatusUsage[] =
    "Usage: agent-tunnel status [--json] [--id ID | --state-file FILE]\n"
    "\n"
    "Prints the state of an agent on this machine (connected or not,\n"
    "gateway, session, URLs, since when, last error, pid) from the file it\n"
    "keeps: --state-file, else the default file of --id, else the only\n"
    "agent's. Exit 0 when it is running and connected; 1 when it is not\n"
    "connected, not responding (its file is not being refreshed: stopped\n"
    "or hung), not running (stale file) or there is no file; 2 for bad\n"
    "usage (several agents and no --id).\n";

int Fail(const std::string& message, int code) {
  std::cerr << "agent-tunnel: " << message << "\n";
  return code;
}

}  // namespace

std::string Now() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(),
                          absl::UTCTimeZone());
}

// Keeps --state-file current: on every change, and every `refresh` so that
// `status` can tell a stopped or hung agent. Thread-safe (Run()'s callbacks,
// the refresher and main write it).
class StateWriter {
 public:
  StateWriter(std::string path, const tunnel::agent::AgentOptions& o,
              absl::Duration refresh)
      : path_(std::move(path)), refresh_(refresh) {
    state_.set_gateway(o.gateway);
    state_.set_agent_id(o.agent_id);
    state_.set_token_id(o.token_id);
    state_.set_pid(getpid());
    state_.set_since(Now());
    state_.set_refresh_seconds(static_cast<int32_t>(std::max<int64_t>(
        1, absl::ToInt64Seconds(absl::Ceil(refresh, absl::Seconds(1))))));
  }
  ~StateWriter() { StopRefreshing(); }

  void SetInspector(const std::string& url) {
    absl::MutexLock lock(&mu_);
    state_.set_inspector(url);
  }

  void Accepted(const tunnel::v1::ConnectAccepted& a) {
    absl::MutexLock lock(&mu_);
    state_.set_connected(true);
    state_.set_session_id(a.session_id());
    state_.clear_urls();
    for (const auto& t : a.tunnels()) {
      state_.add_urls(t.url());
      state_.add_urls(t.path_url());
    }
    state_.set_since(Now());
    if (a.token_expires_unix() != 0) {
      state_.set_token_expires(absl::FormatTime(
          "%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(a.token_expires_unix()),
          absl::UTCTimeZone()));
    } else {
      state_.clear_token_expires();
    }
    // Connected again: an earlier failure is history.
    state_.clear_last_error();
    WriteLocked();
  }
  // A local service turned unhealthy (or healthy again).
  void Health(const std::string& url, bool healthy, const std::string& why) {
    absl::MutexLock lock(&mu_);
    auto* list = state_.mutable_unhealthy();
    const std::string prefix = absl::StrCat(url, ": ");
    for (auto it = list->begin(); it != list->end();) {
      it = absl::StartsWith(*it, prefix) ? list->erase(it) : it + 1;
    }
    if (!healthy) state_.add_unhealthy(absl::StrCat(prefix, why));
    WriteLocked();
  }
  void Ended(const absl::Status& why) {
    absl::MutexLock lock(&mu_);
    if (state_.connected()) state_.set_since(Now());
    state_.set_connected(false);
    state_.clear_session_id();
    state_.clear_urls();
    if (!why.ok()) state_.set_last_error(std::string(why.message()));
    WriteLocked();
  }
  void Write() {
    absl::MutexLock lock(&mu_);
    WriteLocked();
  }
  // Rewrites the file every `refresh` until StopRefreshing.
  void StartRefreshing() {
    if (path_.empty()) return;
    refresher_ = std::thread([this] {
      while (!stop_.WaitForNotificationWithTimeout(refresh_)) Write();
    });
  }
  void StopRefreshing() {
    if (!refresher_.joinable()) return;
    stop_.Notify();
    refresher_.join();
  }

 private:
  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (path_.empty()) return;
    state_.set_updated(Now());
    if (absl::Status s = tunnel::agent::WriteStateFile(path_, state_);
        !s.ok() && !warned_) {
      warned_ = true;  // once: the agent works without it
      TUNNEL_LOG(WARNING) << "state file not written (`agent-tunnel status` "
                             "will not see this agent): "
                          << s.message();
    }
  }

  const std::string path_;
  const absl::Duration refresh_;
  absl::Mutex mu_;
  tunnel::v1::AgentState state_ ABSL_GUARDED_BY(mu_);
  bool warned_ ABSL_GUARDED_BY(mu_) = false;
  absl::Notification stop_;
  std::thread refresher_;
};

// --inspect: the inspector's page and API, and values.options.inspector for
// the agent to record into. With "auto", the next ports are tried when the
// first is taken (another agent runs), and none free is only a warning.
absl::StatusOr<std::unique_ptr<tunnel::agent::InspectServer>> StartInspector(
    tunnel::agent::AgentFlags& values) {
  tunnel::agent::AgentOptions& o = values.options;
  tunnel::agent::InspectorOptions io;
  io.max_requests = static_cast<size_t>(values.inspect_max_requests);
  io.max_body = static_cast<size_t>(values.inspect_max_body);
  io.max_memory = static_cast<size_t>(values.inspect_max_memory);
  io.show_secrets = values.inspect_show_secrets;
  auto inspector = std::make_shared<tunnel::agent::Inspector>(io);
  std::string host;
  int port = 0;
  if (absl::Status s =
          tunnel::common::SplitHostPort(values.inspect, &host, &port);
      !s.ok()) {
    return s;
  }
  tunnel::agent::ReplayTimeouts timeouts;
  timeouts.connect = absl::Seconds(10);
  timeouts.silence = o.local_timeout;
  const int tries = values.inspect_auto ? 10 : 1;
  absl::Status last;
  for (int i = 0; i < tries; ++i) {
    auto server = std::make_unique<tunnel::agent::InspectServer>(
        inspector, o.tunnels, timeouts);
    absl::StatusOr<int> bound = server->Listen(host, port + i);
    if (!bound.ok()) {
      last = bound.status();
      continue;
    }
    const bool loopback = tunnel::common::IsLoopbackHost(host);
    TUNNEL_LOG(INFO) << "inspector: " << server->url()
                     << " (every request through this agent, with replay; "
                        "--inspect \"\" turns it off)";
    if (!loopback) {
      TUNNEL_LOG(WARNING)
          << "the inspector listens on " << values.inspect
          << ", not a loopback address: anyone who reaches it sees every "
             "request's bodies and can replay them";
    }
    o.inspector = std::move(inspector);
    return server;
  }
  if (values.inspect_auto) {
    TUNNEL_LOG(WARNING) << "no inspector: ports " << port << "-"
                        << port + tries - 1 << " on " << host
                        << " are taken (--inspect HOST:PORT picks another)";
    return std::unique_ptr<tunnel::agent::InspectServer>();
  }
  return last;
}

int Status(int argc, char** argv) {
  std::string state_file;
  std::string agent_id;
  bool json = false;
  tunnel::common::FlagSet flags(kStatusUsage);
  flags.String("id", &agent_id,
               "the agent to look at (its default state file); needed when "
               "several agents run here");
  flags.String("state-file", &state_file,
               "the state file the agent writes (its --state-file)");
  flags.Bool("json", &json, "print the state as one JSON object");
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
  if (state_file.empty() && !agent_id.empty()) {
    state_file = tunnel::agent::DefaultStateFilePath(agent_id);
  }
  if (state_file.empty()) {
    // One agent on this machine (the common case): its file, whatever its id.
    const std::string dir = tunnel::agent::DefaultStateDir();
    std::vector<std::string> files = tunnel::agent::StateFilesIn(dir);
    if (files.size() > 1) {
      std::vector<std::string> ids;
      for (const std::string& f : files) {
        std::string name = f.substr(f.rfind('/') + 1);
        ids.push_back(name.substr(0, name.size() - 5));
      }
      return Fail(
          absl::StrCat("several agents keep state in ", dir, " (",
                       absl::StrJoin(ids, ", "), "); say which with --id"),
          2);
    }
    state_file = files.empty() ? absl::StrCat(dir, "/<id>.json") : files[0];
  }
  absl::StatusOr<tunnel::v1::AgentState> state =
      tunnel::agent::ReadStateFile(state_file);
  if (!state.ok()) {
    if (json) {
      std::printf("{\"running\": false, \"connected\": false}\n");
    } else {
      std::printf("no agent running (%s)\n",
                  std::string(state.status().message()).c_str());
    }
    return 1;
  }
  const bool running = tunnel::agent::ProcessAlive(state->pid());
  // A running agent rewrites its file every refresh_seconds: one that has
  // not for three times that is stopped (SIGSTOP) or hung.
  absl::Duration age = absl::ZeroDuration();
  absl::Time updated;
  std::string err;
  if (!state->updated().empty() &&
      absl::ParseTime(absl::RFC3339_full, state->updated(), &updated, &err)) {
    age = std::max(absl::ZeroDuration(), absl::Now() - updated);
  }
  const bool responding =
      running && (state->refresh_seconds() <= 0 ||
                  age <= absl::Seconds(3 * state->refresh_seconds()));
  if (!running) state->set_connected(false);
  const bool connected = responding && state->connected();
  if (json) {
    std::string out;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(*state, &out, options);
    // {"running":...,"responding":...,<the state's fields>}
    std::printf("{\"running\":%s,\"responding\":%s,%s\n",
                running ? "true" : "false", responding ? "true" : "false",
                out.substr(1).c_str());
    return connected ? 0 : 1;
  }
  if (!running) {
    std::printf("not running: agent %s (pid %lld) is gone; state from %s\n",
                state->agent_id().c_str(), static_cast<long long>(state->pid()),
                state_file.c_str());
  } else if (!responding) {
    std::printf(
        "not responding: agent %s (pid %lld) has not updated %s for %s "
        "(stopped or hung?)\n",
        state->agent_id().c_str(), static_cast<long long>(state->pid()),
        state_file.c_str(),
        absl::FormatDuration(absl::Trunc(age, absl::Seconds(1))).c_str());
  } else if (connected) {
    std::printf("connected: agent %s to %s since %s\n",
                state->agent_id().c_str(), state->gateway().c_str(),
                state->since().c_str());
    std::printf("  session     %s\n", state->session_id().c_str());
    for (const std::string& url : state->urls()) {
      std::printf("  url         %s\n", url.c_str());
    }
    absl::Time expires;
    if (!state->token_expires().empty() &&
        absl::ParseTime(absl::RFC3339_full, state->token_expires(), &expires,
                        &err)) {
      std::printf("  token       expires %s\n", state->token_expires().c_str());
      if (expires - absl::Now() < tunnel::agent::kTokenExpiryWarning) {
        std::printf("warning: %s\n",
                    tunnel::agent::TokenExpiryWarning(state->token_id(),
                                                      expires, absl::Now())
                        .c_str());
      }
    }
  } else {
    std::printf("not connected: agent %s to %s since %s (retrying)\n",
                state->agent_id().c_str(), state->gateway().c_str(),
                state->since().c_str());
  }
  if (running && !state->inspector().empty()) {
    std::printf("  inspector   %s\n", state->inspector().c_str());
  }
  for (const std::string& u : state->unhealthy()) {
    std::printf("  unhealthy   %s\n", u.c_str());
  }
  if (!state->last_error().empty()) {
    std::printf("  last error  %s\n", state->last_error().c_str());
  }
  std::printf("  pid         %lld%s\n", static_cast<long long>(state->pid()),
              running ? "" : " (not running)");
  return connected ? 0 : 1;
}

int main(int argc, char** argv) {
  // Before any thread starts.
  tunnel::common::TuneAllocator(tunnel::common::kAgentTrimThreshold);
  tunnel::common::RouteGrpcLogs();
  tunnel::agent::AgentFlags values;
  tunnel::common::FlagSet flags(kUsage);
  tunnel::agent::RegisterConnectFlags(&flags, &values);

  if (argc < 2 || std::string(argv[1]) == "--help" ||
      std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::cout << flags.Usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::string(argv[1]) == "status") return Status(argc, argv);
  if (std::string(argv[1]) == "share") {
    return tunnel::agent::RunShare(argc, argv);
  }
  if (std::string(argv[1]) != "connect") {
    return Fail(absl::StrCat("unknown command \"", argv[1],
                             "\"; the commands are `connect`, `share` and "
                             "`status` (see --help)"),
                2);
  }
  values.stdout_is_terminal = isatty(STDOUT_FILENO) == 1;
  if (absl::Status s =
          tunnel::agent::ParseConnectFlags(argc, argv, 2, &flags, &values);
      !s.ok()) {
    return Fail(std::string(s.message()), 2);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  tunnel::agent::AgentOptions& o = values.options;
  const absl::Duration drain_timeout = values.drain_timeout;
  const bool show_qr = !values.quiet && isatty(STDOUT_FILENO) == 1;

  // Before any thread starts (the inspector's are the first): every thread
  // inherits the blocked signals, and only the signal waiter below takes
  // them. A thread that did not block them would take a Ctrl-C with the
  // default action: the process gone, nothing drained.
  sigset_t signals = tunnel::common::BlockTerminationSignals();
  tunnel::common::DisableMutexDeadlockDetection();
  std::unique_ptr<tunnel::agent::InspectServer> inspector;
  if (!values.inspect.empty()) {
    absl::StatusOr<std::unique_ptr<tunnel::agent::InspectServer>> started =
        StartInspector(values);
    if (!started.ok()) return Fail(std::string(started.status().message()), 1);
    inspector = *std::move(started);  // null: "auto" found no free port
  }

  StateWriter state(values.state_file, o, values.state_refresh);
  if (inspector != nullptr) state.SetInspector(inspector->url());
  state.Write();
  std::string last_qr;
  o.on_accepted = [&](const tunnel::v1::ConnectAccepted& a) {
    // One URL per line on stdout so scripts can pick them up; the rest of
    // the agent's chatter goes to stderr. On a terminal, a QR code of the
    // first URL follows (again only if that URL changed).
    for (const auto& t : a.tunnels()) {
      std::printf("%s\n%s\n", t.url().c_str(), t.path_url().c_str());
    }
    if (show_qr && a.tunnels_size() > 0 && a.tunnels(0).url() != last_qr) {
      last_qr = a.tunnels(0).url();
      auto modules = tunnel::agent::QrModules(last_qr);
      if (modules.ok()) {
        std::printf("\n%s\n",
                    tunnel::agent::RenderQrHalfBlocks(*modules).c_str());
      } else {
        TUNNEL_LOG(WARNING) << "no QR code: " << modules.status().message();
      }
    }
    std::fflush(stdout);
    state.Accepted(a);
  };
  o.on_session_ended = [&](const absl::Status& why) { state.Ended(why); };
  o.on_health = [&](const tunnel::agent::LocalTarget& t,
                    const tunnel::agent::TargetHealth& h) {
    state.Health(t.url, h.healthy, h.reason);
  };

  state.StartRefreshing();

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
  if (inspector != nullptr) inspector->Stop();
  state.StopRefreshing();
  state.Ended(result);
  if (!result.ok()) return Fail(std::string(result.message()), 1);
  return 0;
}
