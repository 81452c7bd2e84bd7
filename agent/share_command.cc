#include "agent/share_command.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/agent.h"
#include "agent/agent_flags.h"
#include "agent/qr.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/random.h"
#include "common/relay_protocol.h"
#include "httpfront/relay_client/relay_assets.h"

namespace tunnel::agent {
namespace {

constexpr char kShareUsage[] =
    "Usage: agent-tunnel share --gateway HOST:PORT --id AGENT_ID \\\n"
    "           --token TOKEN_ID --secret SECRET --to http://127.0.0.1:3000\n"
    "\n"
    "Shares one local service end-to-end encrypted: the browser and this\n"
    "agent encrypt everything between them (AES-256-GCM) and the gateway\n"
    "only relays opaque frames; it never sees the key, the pairing code, a\n"
    "path, a header or a body. Prints a link (its secrets are in the part\n"
    "after #, which browsers never send) and a pairing code to type into\n"
    "the page, then serves until stopped; the link and code stay valid\n"
    "across reconnects. 5 wrong codes lock the share: start a new one.\n"
    "Takes the connection flags of `connect` (TLS, --ca, --config, ...);\n"
    "--slug, --pool, --access-code, --basic-auth, the IP rules, --inspect\n"
    "and --state-file do not apply. See README \"Encrypted shares\".\n";

constexpr char kNoSlug[] = "share";
// A share's per-stream credit, unless --stream-window asks for more.
constexpr uint32_t kShareWindow = 2 << 20;
constexpr const char* kNotForShares[] = {"--slug",
                                         "--pool",
                                         "--access-code",
                                         "--basic-auth",
                                         "--basic-auth-file",
                                         "--allow-cidr",
                                         "--deny-cidr",
                                         "--inspect",
                                         "--state-file"};
constexpr char kNotForSharesWhy[] =
    " does not apply to a share (it is for public tunnels: `agent-tunnel "
    "connect`)";

int Fail(const std::string& message, int code) {
  std::cerr << "agent-tunnel share: " << message << "\n";
  return code;
}

// The connect flags a share has no use for, if any was given.
std::string Inapplicable(const AgentFlags& v) {
  if (v.slug != kNoSlug) return "--slug";
  if (!v.options.pool.empty()) return "--pool";
  if (!v.access_code.empty()) return "--access-code";
  if (!v.basic_auth.empty()) return "--basic-auth";
  if (!v.basic_auth_file.empty()) return "--basic-auth-file";
  if (!v.allow_cidr.empty()) return "--allow-cidr";
  if (!v.deny_cidr.empty()) return "--deny-cidr";
  if (!v.inspect.empty()) return "--inspect";
  if (!v.state_file.empty()) return "--state-file";
  return "";
}

// ws(s)://host[:port]/relay/ws from the page's http(s)://host[:port]/relay/.
std::string WebSocketUrl(const std::string& relay_url) {
  std::string ws = relay_url;
  if (absl::StartsWith(ws, "https://")) {
    ws.replace(0, 5, "wss");
  } else if (absl::StartsWith(ws, "http://")) {
    ws.replace(0, 4, "ws");
  }
  return absl::StrCat(ws, "ws");
}

}  // namespace

std::string ShareLink(const std::string& page_url, const std::string& relay_url,
                      const common::relay::ShareSecrets& secrets,
                      bool own_page) {
  std::string link =
      absl::StrCat(page_url, "#session=", secrets.session,
                   "&key=", common::Base64UrlEncode(secrets.key));
  // A page hosted elsewhere must be told where the gateway is.
  if (!own_page) absl::StrAppend(&link, "&gw=", WebSocketUrl(relay_url));
  return link;
}

int RunShare(int argc, char** argv) {
  AgentFlags values;
  common::FlagSet flags(kShareUsage);
  RegisterConnectFlags(&flags, &values);
  std::string client_url;
  flags.String("relay-client-url", &client_url,
               "the client page the link points at, when you host a copy of "
               "it yourself (README \"Encrypted shares\"); default: the "
               "gateway's /relay/");
  // A share has no inspector and no state file unless asked (and then it
  // is refused below): both are about public tunnels. Nor a slug: this one
  // only keeps the agent id's rules out of the way, and a different one
  // after parsing was asked for.
  values.inspect = "";
  values.state_file = "";
  values.slug = kNoSlug;
  // On the command line, said before parsing (whose own checks of these
  // would talk about public tunnels); from a config file or the
  // environment, by Inapplicable after it.
  for (int i = 2, to = 0; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    const absl::string_view name = arg.substr(0, arg.find('='));
    if (name == "--to" && ++to > 1) {
      return Fail("a share serves exactly one --to URL", 2);
    }
    for (const char* flag : kNotForShares) {
      if (name == flag) {
        return Fail(absl::StrCat(flag, kNotForSharesWhy), 2);
      }
    }
  }
  values.stdout_is_terminal = isatty(STDOUT_FILENO) == 1;
  if (absl::Status s = ParseConnectFlags(argc, argv, 2, &flags, &values);
      !s.ok()) {
    return Fail(std::string(s.message()), 2);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  if (const std::string bad = Inapplicable(values); !bad.empty()) {
    return Fail(absl::StrCat(bad,
                             " does not apply to a share (it is for "
                             "public tunnels: `agent-tunnel connect`)"),
                2);
  }
  AgentOptions& o = values.options;
  if (o.tunnels.size() != 1 || o.random_slug) {
    return Fail("a share serves exactly one --to URL", 2);
  }
  if (!client_url.empty() && !absl::StartsWith(client_url, "https://") &&
      !absl::StartsWith(client_url, "http://")) {
    return Fail("--relay-client-url must be an http:// or https:// URL", 2);
  }
  ShareOptions share;
  share.secrets = common::relay::NewShareSecrets();
  share.target = o.tunnels[0];
  // A browser's round trip (WebCrypto, the page's reader, the WebSocket) is
  // longer than a gateway's: with 256 KiB of credit a 20 MiB download in
  // Chromium ran at 4 MiB/s, with 2 MiB at 19 MiB/s. The credit bounds
  // what is in flight, not what anyone buffers beyond it.
  share.window = std::max<uint32_t>(o.receive_window, kShareWindow);
  share.max_queued_bytes = o.max_queued_bytes;
  o.tunnels.clear();
  o.connections = 1;  // the share lives on one gateway
  o.share = share;

  const bool terminal = values.stdout_is_terminal && !values.quiet;
  const common::relay::ShareSecrets secrets = share.secrets;
  bool printed = false;
  o.on_accepted = [&](const tunnel::v1::ConnectAccepted& a) {
    if (printed) {
      TUNNEL_LOG(INFO) << "share: connected again; the link and the "
                          "pairing code are unchanged";
      return;
    }
    printed = true;
    const std::string link =
        ShareLink(client_url.empty() ? a.relay_url() : client_url,
                  a.relay_url(), secrets, client_url.empty());
    const std::string code =
        absl::StrCat(secrets.code.substr(0, 3), " ", secrets.code.substr(3));
    std::printf(
        "Open on your phone:  %s\n"
        "Pairing code:        %s   (type it into the page; shown only here)\n"
        "Client script:       %s\n"
        "                     (the SHA-256 of the relay.js an honest gateway "
        "serves)\n",
        link.c_str(), code.c_str(), httpfront::RelayScriptIntegrity().c_str());
    if (terminal) {
      auto modules = QrModules(link);
      if (modules.ok()) {
        std::printf("\n%s\n", RenderQrHalfBlocks(*modules).c_str());
      }
    }
    std::fflush(stdout);
  };

  sigset_t signals = common::BlockTerminationSignals();
  common::DisableMutexDeadlockDetection();
  Agent agent(o);
  std::atomic<bool> finished{false};
  std::thread signal_waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (finished) return;
    TUNNEL_LOG(INFO) << "received signal " << sig << ": the share ends";
    agent.Stop();
  });
  absl::Status result = agent.Run();
  finished = true;
  pthread_kill(signal_waiter.native_handle(), SIGTERM);
  signal_waiter.join();
  if (!result.ok()) return Fail(std::string(result.message()), 1);
  return 0;
}

}  // namespace tunnel::agent
