// tunnelctl: manages the gateway's credentials file and talks to a running
// gateway's admin API.
//
//   tunnelctl token issue --id AGENT_ID [--ttl D | --expires T]
//                         [--credentials FILE]
//   tunnelctl token list [--credentials FILE]
//   tunnelctl token revoke TOKEN_ID [--credentials FILE]
//   tunnelctl token extend TOKEN_ID (--ttl D | --expires T)
//                          [--credentials FILE]
//   tunnelctl list [--json]                  (admin API)
//   tunnelctl status SLUG [--json]           (admin API)
//   tunnelctl disconnect AGENT_ID [--json]   (admin API)
//   tunnelctl set-code SLUG [CODE | --stdin | --public] [--json] (admin API)
//   tunnelctl set-ip-rules SLUG [--allow CIDR]... [--deny CIDR]... | --clear
//                                                         (admin API)
//   tunnelctl reload [--json]                (admin API)
//   tunnelctl admin-token issue --file FILE [--force]
//
// Exit codes: 0 success (and --help), 1 runtime error (file unreadable or
// invalid, unknown token; gateway unreachable, token refused, not found),
// 2 bad usage. `token issue` prints machine-readable "key: value" lines on
// stdout; everything meant for humans goes to stderr.
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/admin_token.h"
#include "common/cidr.h"
#include "common/credentials.h"
#include "common/flags.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "common/password_hash.h"
#include "common/slug.h"
#include "grpcpp/grpcpp.h"
#include "tunnel/v1/admin.grpc.pb.h"
#include "tunnel/v1/credentials.pb.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

constexpr char kDefaultCredentials[] = "tunnel-credentials.txtpb";

constexpr char kDefaultAdmin[] = "127.0.0.1:8081";

constexpr char kTopUsage[] =
    "Usage: tunnelctl <command> [flags]\n"
    "\n"
    "Manages the gateway's agent credentials file, and asks a running\n"
    "gateway's admin API (--admin, --admin-token-file) about its agents.\n"
    "\n"
    "Commands:\n"
    "  token issue --id AGENT_ID   issue a token for an agent; prints its "
    "secret once\n"
    "  token list                  list tokens (never shows secrets)\n"
    "  token revoke TOKEN_ID       revoke a token\n"
    "  token extend TOKEN_ID --ttl D  move a token's expiry (same secret)\n"
    "  list                        connected agents, their tunnels and "
    "counters\n"
    "  status SLUG                 one tunnel: URL, online/offline, access, "
    "uptime,\n"
    "                              requests in the last hour\n"
    "  disconnect AGENT_ID         close an agent's session (it reconnects "
    "with\n"
    "                              backoff; revoke its token and reload to\n"
    "                              keep it out)\n"
    "  drain AGENT_ID              the agent finishes what it has and exits "
    "0\n"
    "  set-code SLUG [CODE]        gate a tunnel behind a visitor access "
    "code\n"
    "  set-code SLUG --public      remove any access code (the agent's too)\n"
    "  set-ip-rules SLUG --allow CIDR --deny CIDR  who may reach a tunnel\n"
    "  reload                      make the gateway re-read its credentials\n"
    "                              file (as SIGHUP does)\n"
    "  admin-token issue --file F  write a new random admin token to F "
    "(0600)\n"
    "  hash-password USER          print USER:HASH for agent-tunnel "
    "--basic-auth\n"
    "\n"
    "Run 'tunnelctl <command> --help' for a command's flags.\n";

constexpr char kAgentsUsage[] =
    "Usage: tunnelctl list [--admin ADDR] [--admin-token-file FILE] [--json]\n"
    "\n"
    "Prints the agents connected to the gateway: session, remote address,\n"
    "when it connected (UTC), visitor requests, body bytes in (visitor to\n"
    "agent) and out, streams in flight, and one row per tunnel with its\n"
    "access mode and URL.\n";

constexpr char kStatusUsage[] =
    "Usage: tunnelctl status SLUG [--admin ADDR] [--admin-token-file FILE] "
    "[--json]\n"
    "\n"
    "Prints one tunnel: URLs, status (online, or offline when its agent is\n"
    "not connected), owning agent (a pool: its name and each member with\n"
    "its state and requests in flight), access mode, uptime and visitor\n"
    "requests in the last hour. An unknown slug is an error (exit 1).\n";

constexpr char kDisconnectUsage[] =
    "Usage: tunnelctl disconnect AGENT_ID [--admin ADDR] "
    "[--admin-token-file FILE] [--json]\n"
    "\n"
    "Closes the agent's session; the agent logs \"disconnected by an\n"
    "administrator\" and reconnects with backoff (stop it on the device, or\n"
    "revoke its token and reload the gateway, to keep it away).\n";

constexpr char kDrainUsage[] =
    "Usage: tunnelctl drain AGENT_ID [--admin ADDR] [--admin-token-file "
    "FILE] [--json]\n"
    "\n"
    "Drains a connected agent as SIGTERM on its device would: the gateway\n"
    "sends it no new request (a pool's other members take them), it\n"
    "finishes those in flight (up to its --drain-timeout) and exits 0.\n";

constexpr char kReloadUsage[] =
    "Usage: tunnelctl reload [--admin ADDR] [--admin-token-file FILE] "
    "[--json]\n"
    "\n"
    "Makes the gateway re-read its --credentials file, as SIGHUP does, for\n"
    "operators without signal access (containers). Sessions whose token is\n"
    "still in force keep running; those whose token was revoked or removed\n"
    "are closed and their agents exit. A file with errors is refused (the\n"
    "error names file and line, exit 1) and the old credentials stay.\n";

constexpr char kHashPasswordUsage[] =
    "Usage: tunnelctl hash-password USER [--bcrypt] [--rounds N]\n"
    "\n"
    "Reads a password (asked twice without echo on a terminal, else the\n"
    "first line of stdin) and prints USER:HASH for agent-tunnel\n"
    "--basic-auth or a --basic-auth-file line. The hash is PBKDF2-SHA256\n"
    "(passlib's $pbkdf2-sha256$ format, 100000 rounds) or, with --bcrypt,\n"
    "bcrypt (cost 10; it reads at most 72 bytes of a password). Quote it in\n"
    "a shell: it holds '$'. Nothing is sent anywhere.\n";

constexpr char kSetCodeUsage[] =
    "Usage: tunnelctl set-code SLUG [CODE | --stdin | --public] [--admin "
    "ADDR]\n"
    "                          [--admin-token-file FILE] [--json]\n"
    "\n"
    "Gates tunnel SLUG behind a visitor access code, or with --public makes\n"
    "it public (removing the agent's --access-code too). The code comes from\n"
    "the CODE argument, else the first line of stdin with --stdin, else\n"
    "TUNNEL_ACCESS_CODE (the last two keep it out of shell history). The\n"
    "gateway keeps only a salted hash. The setting overrides the agent's\n"
    "and lasts until changed or the gateway restarts.\n";

constexpr char kSetIpRulesUsage[] =
    "Usage: tunnelctl set-ip-rules SLUG [--allow CIDR]... [--deny CIDR]...\n"
    "       tunnelctl set-ip-rules SLUG --clear\n"
    "                          [--admin ADDR] [--admin-token-file FILE] "
    "[--json]\n"
    "\n"
    "Sets which visitor addresses may reach tunnel SLUG: refused when a\n"
    "--deny range holds the address, or when there are --allow ranges and\n"
    "none holds it (403 ip_not_allowed). Overrides the agent's\n"
    "--allow-cidr/--deny-cidr until changed or the gateway restarts; with\n"
    "neither list, everyone may reach it. --clear drops the override (the\n"
    "agent's rules apply again).\n";

constexpr char kAdminTokenUsage[] =
    "Usage: tunnelctl admin-token issue --file FILE [--force]\n"
    "\n"
    "Writes a new random admin token (32 bytes from OpenSSL) to FILE,\n"
    "atomically with mode 0600. Give the same file to gateway-tunnel\n"
    "--admin-token-file and to tunnelctl --admin-token-file. Refuses to\n"
    "replace an existing file unless --force.\n";

constexpr char kIssueUsage[] =
    "Usage: tunnelctl token issue --id AGENT_ID [--ttl DURATION | --expires "
    "RFC3339]\n"
    "                             [--pool NAME]... [--credentials FILE]\n"
    "\n"
    "Adds a fresh token for AGENT_ID to the credentials file (creating it if\n"
    "needed) and prints agent_id, token and secret on stdout, one\n"
    "\"key: value\" line each (and expires: when it has an expiry). The\n"
    "secret is not recoverable later. With --ttl (e.g. 24h) or --expires\n"
    "(e.g. 2027-01-31T00:00:00Z) the gateway refuses the token from then on\n"
    "and ends its sessions, letting requests in flight finish; without,\n"
    "the token never expires. --pool NAME lets the agent serve the slug\n"
    "NAME beside other agents of that pool (agent-tunnel --pool NAME);\n"
    "pools: lists them.\n";

constexpr char kListUsage[] =
    "Usage: tunnelctl token list [--credentials FILE]\n"
    "\n"
    "Prints every token with its agent, creation and expiry times (UTC) and\n"
    "status (active, expired, revoked). Secrets are never shown.\n";

constexpr char kExtendUsage[] =
    "Usage: tunnelctl token extend TOKEN_ID (--ttl DURATION | --expires "
    "RFC3339)\n"
    "                              [--credentials FILE]\n"
    "\n"
    "Sets TOKEN_ID's expiry to DURATION from now (or to the given time),\n"
    "keeping its secret: the agent goes on with the same credentials. An\n"
    "expired token can be extended; a revoked one cannot. A running gateway\n"
    "applies it when it reloads the file (SIGHUP or `tunnelctl reload`).\n";

constexpr char kRevokeUsage[] =
    "Usage: tunnelctl token revoke TOKEN_ID [--credentials FILE]\n"
    "\n"
    "Marks TOKEN_ID revoked. A running gateway applies it when it reloads\n"
    "the file (SIGHUP or `tunnelctl reload`): new connections with the token\n"
    "are refused and a session that uses it is closed.\n";

int UsageError(absl::string_view message, absl::string_view help_command) {
  std::cerr << "tunnelctl: " << message << "\n"
            << "Run '" << help_command << " --help' for usage.\n";
  return kExitUsage;
}

int RuntimeError(const absl::Status& status) {
  std::cerr << "tunnelctl: " << status.message() << "\n";
  return kExitRuntime;
}

// Token ids come from a file someone may have edited by hand; escape them so
// a stray control character cannot garble the terminal.
std::string Printable(absl::string_view text) { return absl::CHexEscape(text); }

std::string FormatCreated(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                          absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

// Parses a subcommand's flags. Returns an exit code if the command is done
// (help printed or usage error), or nullopt to carry on.
std::optional<int> ParseFlags(tunnel::common::FlagSet& flags,
                              const std::vector<std::string>& args,
                              absl::string_view command,
                              std::vector<std::string>* positional) {
  absl::StatusOr<std::vector<std::string>> parsed = flags.Parse(args);
  if (!parsed.ok()) return UsageError(parsed.status().message(), command);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return kExitOk;
  }
  *positional = *std::move(parsed);
  return std::nullopt;
}

// The expiry --ttl or --expires asks for (InfiniteFuture: neither was
// given), or a message for the usage error.
absl::StatusOr<absl::Time> ExpiryFromFlags(absl::Duration ttl,
                                           const std::string& expires,
                                           absl::Time now) {
  if (ttl != absl::ZeroDuration() && !expires.empty()) {
    return absl::InvalidArgumentError("give --ttl or --expires, not both");
  }
  if (ttl != absl::ZeroDuration()) {
    if (ttl < absl::Seconds(1) || ttl > absl::Hours(24 * 365 * 100)) {
      return absl::InvalidArgumentError(
          "--ttl must be between 1s and 100 years (e.g. 24h, 720h)");
    }
    return now + ttl;
  }
  if (expires.empty()) return absl::InfiniteFuture();
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, expires, &t, &err)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--expires \"", Printable(expires),
        "\" is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): ", err));
  }
  if (t <= now) {
    return absl::InvalidArgumentError(
        absl::StrCat("--expires ", expires, " is in the past"));
  }
  return t;
}

int TokenIssue(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl token issue";
  std::string credentials = kDefaultCredentials;
  std::string agent_id;
  tunnel::common::FlagSet flags(kIssueUsage);
  flags.String("id", &agent_id, "agent id the token authenticates (required)");
  flags.String("credentials", &credentials, "credentials file to update");
  absl::Duration ttl = absl::ZeroDuration();
  std::string expires_text;
  flags.Duration("ttl", &ttl,
                 "the token expires this long from now (default: never)");
  flags.String("expires", &expires_text,
               "the token expires at this RFC 3339 time instead");
  std::vector<std::string> pools;
  flags.Repeated("pool", &pools,
                 "the agent may also serve pool NAME (agent-tunnel --pool "
                 "NAME) beside other agents; repeatable");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (!positional.empty()) {
    return UsageError(
        absl::StrCat("unexpected argument \"", positional[0], "\""), kCommand);
  }
  if (agent_id.empty()) return UsageError("--id is required", kCommand);
  for (const std::string& pool : pools) {
    if (absl::Status s = tunnel::common::CheckSlug(pool); !s.ok()) {
      return UsageError(
          absl::StrCat("--pool \"", Printable(pool), "\": ", s.message()),
          kCommand);
    }
  }
  const absl::Time now = absl::Now();
  absl::StatusOr<absl::Time> expires = ExpiryFromFlags(ttl, expires_text, now);
  if (!expires.ok()) return UsageError(expires.status().message(), kCommand);
  if (!tunnel::common::IsValidAgentId(agent_id)) {
    return UsageError(absl::StrCat("invalid --id \"", Printable(agent_id),
                                   "\": use 1-64 chars of A-Z a-z 0-9 . _ -"),
                      kCommand);
  }

  // A file in a directory that does not exist cannot be written: say so
  // before a secret is made.
  if (size_t slash = credentials.rfind('/');
      slash != std::string::npos && slash > 0) {
    const std::string dir = credentials.substr(0, slash);
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      std::cerr << "tunnelctl: the directory " << dir
                << " does not exist; create it first (mkdir -p " << dir
                << "; the file will be mode 0600)\n";
      return kExitRuntime;
    }
  }
  // The unnamed tunnel's slug defaults to the agent id: an id that cannot
  // be a slug needs --slug on the agent.
  const absl::Status slug_ok =
      tunnel::common::CheckSlug(absl::AsciiStrToLower(agent_id));

  tunnel::v1::CredentialsFile file;
  if (auto loaded = tunnel::common::LoadCredentialsFile(credentials);
      loaded.ok()) {
    file = *std::move(loaded);
  } else if (!absl::IsNotFound(loaded.status())) {
    return RuntimeError(loaded.status());
  }
  absl::StatusOr<tunnel::v1::Credential> cred =
      tunnel::common::IssueCredential(agent_id, now, *expires);
  if (!cred.ok()) return RuntimeError(cred.status());
  for (const std::string& pool : pools) cred->add_pools(pool);
  *file.add_credentials() = *cred;
  if (absl::Status s = tunnel::common::SaveCredentialsFile(credentials, file);
      !s.ok()) {
    return RuntimeError(s);
  }

  std::cout << "agent_id: " << cred->agent_id() << "\n"
            << "token: " << cred->token_id() << "\n"
            << "secret: " << cred->secret() << "\n";
  if (cred->expires_unix() != 0) {
    std::cout << "expires: " << FormatCreated(cred->expires_unix()) << "\n";
  }
  if (!pools.empty()) {
    std::cout << "pools: " << absl::StrJoin(pools, ",") << "\n";
  }
  std::cout.flush();
  std::cerr << "tunnelctl: the secret is shown only once; store it now. "
               "Connect the agent with:\n"
            << "  TUNNEL_SECRET='" << cred->secret()
            << "' agent-tunnel connect --gateway HOST:8080 --id "
            << cred->agent_id() << " --token " << cred->token_id()
            << (!pools.empty() ? absl::StrCat(" --pool ", pools[0])
                : slug_ok.ok() ? ""
                               : " --slug NAME")
            << " --to http://127.0.0.1:3000\n"
            << "(add --insecure only if the gateway runs with --insecure)\n";
  if (!slug_ok.ok()) {
    std::cerr << "tunnelctl: note: agent id \"" << cred->agent_id()
              << "\" cannot be its tunnel's slug (" << slug_ok.message()
              << "): the agent needs --slug NAME to connect\n";
  }
  return kExitOk;
}

int TokenList(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl token list";
  std::string credentials = kDefaultCredentials;
  tunnel::common::FlagSet flags(kListUsage);
  flags.String("credentials", &credentials, "credentials file to read");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (!positional.empty()) {
    return UsageError(
        absl::StrCat("unexpected argument \"", positional[0], "\""), kCommand);
  }

  absl::StatusOr<tunnel::v1::CredentialsFile> file =
      tunnel::common::LoadCredentialsFile(credentials);
  if (!file.ok()) return RuntimeError(file.status());

  // Columns sized to their widest cell; no secret is ever a cell.
  std::vector<std::vector<std::string>> rows = {
      {"TOKEN", "AGENT", "POOLS", "CREATED (UTC)", "EXPIRES (UTC)", "STATUS"}};
  const absl::Time now = absl::Now();
  for (const tunnel::v1::Credential& c : file->credentials()) {
    const bool expired = tunnel::common::CredentialExpiry(c) <= now;
    rows.push_back(
        {Printable(c.token_id()), Printable(c.agent_id()),
         c.pools().empty() ? "-" : Printable(absl::StrJoin(c.pools(), ",")),
         FormatCreated(c.created_unix()),
         c.expires_unix() == 0 ? "never" : FormatCreated(c.expires_unix()),
         c.revoked() ? "revoked"
         : expired   ? "expired"
                     : "active"});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) {
        line.append(widths[i] - row[i].size() + 2, ' ');
      }
    }
    std::cout << line << "\n";
  }
  if (file->credentials_size() == 0) {
    std::cerr << "tunnelctl: no tokens in " << credentials
              << " (issue one with 'tunnelctl token issue --id AGENT_ID')\n";
  }
  return kExitOk;
}

// The credential with `token_id` in `file` (read from `path`), or
// NOT_FOUND saying so.
absl::StatusOr<tunnel::v1::Credential*> FindToken(
    tunnel::v1::CredentialsFile& file, const std::string& token_id,
    const std::string& path) {
  for (tunnel::v1::Credential& c : *file.mutable_credentials()) {
    if (c.token_id() == token_id) return &c;
  }
  return absl::NotFoundError(
      absl::StrCat("no token \"", Printable(token_id), "\" in ", path));
}

int TokenRevoke(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl token revoke";
  std::string credentials = kDefaultCredentials;
  tunnel::common::FlagSet flags(kRevokeUsage);
  flags.String("credentials", &credentials, "credentials file to update");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (positional.size() != 1) {
    return UsageError(positional.empty() ? "missing TOKEN_ID"
                                         : "expected exactly one TOKEN_ID",
                      kCommand);
  }
  const std::string& token_id = positional[0];

  absl::StatusOr<tunnel::v1::CredentialsFile> file =
      tunnel::common::LoadCredentialsFile(credentials);
  if (!file.ok()) return RuntimeError(file.status());
  absl::StatusOr<tunnel::v1::Credential*> found =
      FindToken(*file, token_id, credentials);
  if (!found.ok()) return RuntimeError(found.status());
  tunnel::v1::Credential* target = *found;
  if (target->revoked()) {
    std::cout << "token " << Printable(token_id) << " (agent "
              << target->agent_id() << ") was already revoked\n";
    return kExitOk;
  }
  target->set_revoked(true);
  if (absl::Status s = tunnel::common::SaveCredentialsFile(credentials, *file);
      !s.ok()) {
    return RuntimeError(s);
  }
  std::cout << "revoked token " << Printable(token_id) << " (agent "
            << target->agent_id() << ")\n";
  std::cerr << "tunnelctl: a running gateway applies this when it reloads "
               "the file (kill -HUP, or tunnelctl reload)\n";
  return kExitOk;
}

int TokenExtend(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl token extend";
  std::string credentials = kDefaultCredentials;
  absl::Duration ttl = absl::ZeroDuration();
  std::string expires_text;
  tunnel::common::FlagSet flags(kExtendUsage);
  flags.String("credentials", &credentials, "credentials file to update");
  flags.Duration("ttl", &ttl, "the token expires this long from now");
  flags.String("expires", &expires_text,
               "the token expires at this RFC 3339 time instead");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (positional.size() != 1) {
    return UsageError(positional.empty() ? "missing TOKEN_ID"
                                         : "expected exactly one TOKEN_ID",
                      kCommand);
  }
  if (ttl == absl::ZeroDuration() && expires_text.empty()) {
    return UsageError("--ttl or --expires is required", kCommand);
  }
  absl::StatusOr<absl::Time> expires =
      ExpiryFromFlags(ttl, expires_text, absl::Now());
  if (!expires.ok()) return UsageError(expires.status().message(), kCommand);
  const std::string& token_id = positional[0];

  absl::StatusOr<tunnel::v1::CredentialsFile> file =
      tunnel::common::LoadCredentialsFile(credentials);
  if (!file.ok()) return RuntimeError(file.status());
  absl::StatusOr<tunnel::v1::Credential*> found =
      FindToken(*file, token_id, credentials);
  if (!found.ok()) return RuntimeError(found.status());
  tunnel::v1::Credential* target = *found;
  if (target->revoked()) {
    return RuntimeError(absl::FailedPreconditionError(
        absl::StrCat("token ", Printable(token_id),
                     " is revoked; issue a new one with `tunnelctl token "
                     "issue --id ",
                     Printable(target->agent_id()), "`")));
  }
  tunnel::common::SetCredentialExpiry(*target, *expires);
  if (absl::Status s = tunnel::common::SaveCredentialsFile(credentials, *file);
      !s.ok()) {
    return RuntimeError(s);
  }
  std::cout << "token " << Printable(token_id) << " (agent "
            << target->agent_id() << ") now expires at "
            << FormatCreated(target->expires_unix()) << "\n";
  std::cerr << "tunnelctl: a running gateway applies this when it reloads "
               "the file (kill -HUP, or tunnelctl reload)\n";
  return kExitOk;
}

// --- admin API client ---

// Flags every admin command takes.
struct AdminFlags {
  std::string admin = kDefaultAdmin;
  std::string token_file;
  bool json = false;
  absl::Duration timeout = absl::Seconds(10);

  void Register(tunnel::common::FlagSet& flags) {
    flags.String("admin", &admin, "gateway admin API address HOST:PORT");
    flags.String("admin-token-file", &token_file,
                 "file with the admin token (mode 0600)");
    flags.Bool("json", &json, "print JSON instead of a table");
    flags.Duration("timeout", &timeout, "give up on the gateway after this");
  }
};

// A call's context: deadline and bearer token.
absl::Status PrepareContext(const AdminFlags& f, grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoMilliseconds(f.timeout));
  if (f.token_file.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> token =
      tunnel::common::LoadAdminToken(f.token_file);
  if (!token.ok()) return token.status();
  ctx->AddMetadata("authorization", absl::StrCat("Bearer ", *token));
  return absl::OkStatus();
}

std::unique_ptr<tunnel::v1::AdminService::Stub> AdminStub(const AdminFlags& f) {
  return tunnel::v1::AdminService::NewStub(
      grpc::CreateChannel(f.admin, grpc::InsecureChannelCredentials()));
}

// The gateway's answer as a message for people; always exit code 1.
int RpcError(const AdminFlags& f, const grpc::Status& st) {
  std::string why;
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      why = absl::StrCat("cannot reach the gateway's admin API at ", f.admin,
                         " (", st.error_message(), ")");
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      why = absl::StrCat(
          st.error_message(),
          f.token_file.empty()
              ? " (no --admin-token-file / TUNNEL_ADMIN_TOKEN_FILE given)"
              : absl::StrCat(" (token from ", f.token_file, ")"));
      break;
    default:
      why = st.error_message();
  }
  std::cerr << "tunnelctl: " << why << "\n";
  return kExitRuntime;
}

std::string Quote(absl::string_view s) {
  return absl::StrCat("\"", tunnel::common::JsonEscape(s), "\"");
}

std::string FormatMillis(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

std::string FormatUptime(int64_t seconds) {
  if (seconds <= 0) return "0s";
  return absl::FormatDuration(absl::Seconds(seconds));
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << line << "\n";
  }
}

// Parses an admin command's flags and its positional arguments (exactly
// `want` of them, named `what`), and checks `f`'s --timeout when given.
std::optional<int> ParseAdmin(tunnel::common::FlagSet& flags,
                              const AdminFlags* f,
                              const std::vector<std::string>& args,
                              absl::string_view command, size_t want,
                              absl::string_view what,
                              std::vector<std::string>* positional) {
  if (auto done = ParseFlags(flags, args, command, positional)) return done;
  if (f != nullptr && f->timeout <= absl::ZeroDuration()) {
    return UsageError("--timeout must be positive", command);
  }
  if (positional->size() < want) {
    return UsageError(absl::StrCat("missing ", what), command);
  }
  if (positional->size() > want) {
    return UsageError(absl::StrCat("unexpected argument \"",
                                   Printable((*positional)[want]), "\""),
                      command);
  }
  return std::nullopt;
}

// One admin command: its flags, positional arguments and call context.
struct AdminCall {
  explicit AdminCall(const char* usage) : flags(usage) { f.Register(flags); }
  // Parses `args` (exactly `want` positional arguments, named `what`) and
  // prepares the context; returns an exit code when the command is over.
  std::optional<int> Start(const std::vector<std::string>& args,
                           absl::string_view command, size_t want,
                           absl::string_view what) {
    if (auto done =
            ParseAdmin(flags, &f, args, command, want, what, &positional)) {
      return done;
    }
    if (absl::Status s = PrepareContext(f, &ctx); !s.ok()) {
      return RuntimeError(s);
    }
    return std::nullopt;
  }

  AdminFlags f;
  tunnel::common::FlagSet flags;
  std::vector<std::string> positional;
  grpc::ClientContext ctx;
};

int AdminList(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl list";
  AdminCall call(kAgentsUsage);
  if (auto done = call.Start(args, kCommand, 0, "")) return *done;
  const AdminFlags& f = call.f;
  tunnel::v1::ListAgentsResponse resp;
  grpc::Status st = AdminStub(f)->ListAgents(
      &call.ctx, tunnel::v1::ListAgentsRequest(), &resp);
  if (!st.ok()) return RpcError(f, st);

  if (f.json) {
    std::vector<std::string> agents;
    for (const tunnel::v1::Agent& a : resp.agents()) {
      std::vector<std::string> tunnels;
      for (const tunnel::v1::AgentTunnel& t : a.tunnels()) {
        tunnels.push_back(absl::StrCat(
            "{\"slug\":", Quote(t.slug()), ",\"name\":", Quote(t.name()),
            ",\"url\":", Quote(t.url()), ",\"path_url\":", Quote(t.path_url()),
            ",\"access\":", Quote(t.access()), "}"));
      }
      agents.push_back(absl::StrCat(
          "{\"agent_id\":", Quote(a.agent_id()),
          ",\"session_id\":", Quote(a.session_id()), ",\"remote_address\":",
          Quote(a.remote_address()), ",\"connected_since\":",
          Quote(FormatMillis(a.connected_since_unix_ms())),
          ",\"connected_since_unix_ms\":", a.connected_since_unix_ms(),
          ",\"requests\":", a.requests(), ",\"bytes_in\":", a.bytes_in(),
          ",\"bytes_out\":", a.bytes_out(), ",\"streams_in_flight\":",
          a.streams_in_flight(), ",\"replica\":", Quote(a.replica()),
          ",\"tunnels\":[", absl::StrJoin(tunnels, ","), "]}"));
    }
    std::cout << "{\"agents\":[" << absl::StrJoin(agents, ",") << "]}\n";
    return kExitOk;
  }
  // A cluster's listing says which replica each agent is on.
  const bool cluster = std::any_of(
      resp.agents().begin(), resp.agents().end(),
      [](const tunnel::v1::Agent& a) { return !a.replica().empty(); });
  std::vector<std::vector<std::string>> rows = {
      {"AGENT", "SESSION", "REMOTE", "CONNECTED (UTC)", "REQUESTS", "BYTES IN",
       "BYTES OUT", "STREAMS", "TUNNEL", "ACCESS", "URL"}};
  if (cluster) rows[0].insert(rows[0].begin() + 1, "REPLICA");
  for (const tunnel::v1::Agent& a : resp.agents()) {
    std::vector<std::string> first = {Printable(a.agent_id()),
                                      Printable(a.session_id()),
                                      Printable(a.remote_address()),
                                      FormatMillis(a.connected_since_unix_ms()),
                                      absl::StrCat(a.requests()),
                                      absl::StrCat(a.bytes_in()),
                                      absl::StrCat(a.bytes_out()),
                                      absl::StrCat(a.streams_in_flight())};
    if (cluster) first.insert(first.begin() + 1, Printable(a.replica()));
    if (a.tunnels().empty()) {
      first.insert(first.end(), {"-", "-", "-"});
      rows.push_back(first);
    }
    for (int i = 0; i < a.tunnels_size(); ++i) {
      const tunnel::v1::AgentTunnel& t = a.tunnels(i);
      std::vector<std::string> row =
          i == 0 ? first : std::vector<std::string>(first.size(), "");
      row.insert(row.end(), {Printable(t.slug()), Printable(t.access()),
                             Printable(t.url())});
      rows.push_back(std::move(row));
    }
  }
  PrintTable(rows);
  if (resp.agents().empty()) {
    std::cerr << "tunnelctl: no agents connected\n";
  }
  return kExitOk;
}

int AdminStatus(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl status";
  AdminCall call(kStatusUsage);
  if (auto done = call.Start(args, kCommand, 1, "SLUG")) return *done;
  const AdminFlags& f = call.f;
  tunnel::v1::GetTunnelRequest req;
  req.set_slug(call.positional[0]);
  tunnel::v1::TunnelStatus t;
  grpc::Status st = AdminStub(f)->GetTunnel(&call.ctx, req, &t);
  if (!st.ok()) return RpcError(f, st);
  const bool online = t.status() == "online";
  if (f.json) {
    std::cout << "{\"slug\":" << Quote(t.slug())
              << ",\"url\":" << Quote(t.url())
              << ",\"path_url\":" << Quote(t.path_url())
              << ",\"status\":" << Quote(t.status())
              << ",\"agent_id\":" << Quote(t.agent_id())
              << ",\"access\":" << Quote(t.access())
              << ",\"session_id\":" << Quote(t.session_id())
              << ",\"connected_since\":"
              << Quote(online ? FormatMillis(t.connected_since_unix_ms()) : "")
              << ",\"connected_since_unix_ms\":" << t.connected_since_unix_ms()
              << ",\"uptime_seconds\":" << t.uptime_seconds()
              << ",\"requests_last_hour\":" << t.requests_last_hour()
              << ",\"pool\":" << Quote(t.pool())
              << ",\"replica\":" << Quote(t.replica()) << ",\"members\":[";
    for (int i = 0; i < t.members_size(); ++i) {
      const tunnel::v1::PoolMember& m = t.members(i);
      std::cout << (i > 0 ? "," : "") << "{\"agent_id\":" << Quote(m.agent_id())
                << ",\"session_id\":" << Quote(m.session_id())
                << ",\"streams_in_flight\":" << m.streams_in_flight()
                << ",\"state\":" << Quote(m.state())
                << ",\"last_error\":" << Quote(m.last_error()) << "}";
    }
    std::cout << "]}\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"slug:", Printable(t.slug())},
      {"url:", Printable(t.url())},
      {"path url:", Printable(t.path_url())},
      {"status:", Printable(t.status())},
      {"agent:", Printable(t.agent_id())},
      {"access:", Printable(t.access())},
      {"uptime:",
       online ? absl::StrCat(FormatUptime(t.uptime_seconds()), " (since ",
                             FormatMillis(t.connected_since_unix_ms()), ")")
              : "-"},
      {"requests (last hour):", absl::StrCat(t.requests_last_hour())}};
  if (!t.replica().empty()) {
    rows.push_back({"replica:", Printable(t.replica())});
  }
  if (!t.pool().empty()) {
    rows[4] = {"pool:", Printable(t.pool())};
    for (const tunnel::v1::PoolMember& m : t.members()) {
      rows.push_back(
          {"member:",
           absl::StrCat(Printable(m.agent_id()), " (", Printable(m.state()),
                        ", ", m.streams_in_flight(), " in flight)",
                        m.last_error().empty()
                            ? ""
                            : absl::StrCat(": ", Printable(m.last_error())))});
    }
  }
  PrintTable(rows);
  return kExitOk;
}

int AdminDisconnect(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl disconnect";
  AdminCall call(kDisconnectUsage);
  if (auto done = call.Start(args, kCommand, 1, "AGENT_ID")) return *done;
  const AdminFlags& f = call.f;
  tunnel::v1::DisconnectAgentRequest req;
  req.set_agent_id(call.positional[0]);
  tunnel::v1::DisconnectAgentResponse resp;
  grpc::Status st = AdminStub(f)->DisconnectAgent(&call.ctx, req, &resp);
  if (!st.ok()) return RpcError(f, st);
  if (f.json) {
    std::cout << "{\"agent_id\":" << Quote(req.agent_id())
              << ",\"session_id\":" << Quote(resp.session_id()) << "}\n";
  } else {
    std::cout << "disconnected agent " << Printable(req.agent_id())
              << " (session " << Printable(resp.session_id()) << ")\n";
    std::cerr << "tunnelctl: the agent reconnects with backoff unless it is "
                 "stopped or its token revoked\n";
  }
  return kExitOk;
}

int AdminDrain(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl drain";
  AdminCall call(kDrainUsage);
  if (auto done = call.Start(args, kCommand, 1, "AGENT_ID")) return *done;
  const AdminFlags& f = call.f;
  tunnel::v1::DrainAgentRequest req;
  req.set_agent_id(call.positional[0]);
  tunnel::v1::DrainAgentResponse resp;
  grpc::Status st = AdminStub(f)->DrainAgent(&call.ctx, req, &resp);
  if (!st.ok()) return RpcError(f, st);
  if (f.json) {
    std::cout << "{\"agent_id\":" << Quote(req.agent_id())
              << ",\"session_id\":" << Quote(resp.session_id())
              << ",\"streams_in_flight\":" << resp.streams_in_flight() << "}\n";
  } else {
    std::cout << "draining agent " << Printable(req.agent_id()) << " (session "
              << Printable(resp.session_id())
              << "): " << resp.streams_in_flight()
              << " request(s) in flight finish, then it exits\n";
  }
  return kExitOk;
}

int AdminReload(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl reload";
  AdminCall call(kReloadUsage);
  if (auto done = call.Start(args, kCommand, 0, "")) return *done;
  const AdminFlags& f = call.f;
  tunnel::v1::ReloadCredentialsResponse resp;
  grpc::Status st = AdminStub(f)->ReloadCredentials(
      &call.ctx, tunnel::v1::ReloadCredentialsRequest(), &resp);
  if (!st.ok()) return RpcError(f, st);
  if (f.json) {
    std::cout << "{\"live_tokens\":" << resp.live_tokens()
              << ",\"sessions_closed\":" << resp.sessions_closed() << "}\n";
  } else {
    std::cout << "reloaded the credentials: " << resp.live_tokens()
              << " live token(s), " << resp.sessions_closed()
              << " session(s) closed\n";
  }
  return kExitOk;
}

// One line from the terminal with echo off (prompt on stderr).
std::optional<std::string> ReadHidden(const char* prompt) {
  std::cerr << prompt << std::flush;
  termios old{};
  const bool tty = tcgetattr(STDIN_FILENO, &old) == 0;
  if (tty) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string line;
  const bool got = static_cast<bool>(std::getline(std::cin, line));
  if (tty) tcsetattr(STDIN_FILENO, TCSANOW, &old);
  std::cerr << "\n";
  if (!got) return std::nullopt;
  return line;
}

int HashPasswordCommand(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl hash-password";
  bool bcrypt = false;
  int64_t rounds = 0;
  tunnel::common::FlagSet flags(kHashPasswordUsage);
  flags.Bool("bcrypt", &bcrypt, "bcrypt instead of PBKDF2-SHA256");
  flags.Int("rounds", &rounds,
            "PBKDF2 iterations (10000 to 2000000, default 100000) or bcrypt "
            "cost (4 to 14, default 10)");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (positional.size() != 1) return UsageError("want one USER", kCommand);
  const std::string& user = positional[0];
  if (user.empty() || user.find(':') != std::string::npos) {
    return UsageError("USER must be non-empty and without ':'", kCommand);
  }
  if (rounds < 0 || rounds > tunnel::common::kMaxPbkdf2Rounds) {
    return UsageError("--rounds is out of range", kCommand);
  }
  std::string password;
  if (isatty(STDIN_FILENO)) {
    std::optional<std::string> a = ReadHidden("Password: ");
    std::optional<std::string> b =
        a.has_value() ? ReadHidden("Again: ") : std::nullopt;
    if (!a.has_value() || !b.has_value()) {
      return RuntimeError(absl::InvalidArgumentError("no password given"));
    }
    if (*a != *b) {
      return RuntimeError(
          absl::InvalidArgumentError("the two passwords differ"));
    }
    password = *a;
  } else if (!std::getline(std::cin, password)) {
    return RuntimeError(absl::InvalidArgumentError("no password on stdin"));
  }
  if (!password.empty() && password.back() == '\r') password.pop_back();
  absl::StatusOr<std::string> hash = tunnel::common::HashPassword(
      password,
      bcrypt ? tunnel::common::PasswordScheme::kBcrypt
             : tunnel::common::PasswordScheme::kPbkdf2Sha256,
      static_cast<uint32_t>(rounds));
  if (!hash.ok()) return RuntimeError(hash.status());
  // The line the agent will read: checked the same way.
  const std::string entry = absl::StrCat(user, ":", *hash);
  if (absl::StatusOr<std::vector<tunnel::common::BasicAuthUser>> users =
          tunnel::common::ParseBasicAuthUsers({entry}, "USER");
      !users.ok()) {
    return RuntimeError(users.status());
  }
  std::cout << entry << "\n";
  return kExitOk;
}

int AdminSetCode(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl set-code";
  AdminFlags f;
  bool make_public = false;
  bool from_stdin = false;
  std::string code;
  tunnel::common::FlagSet flags(kSetCodeUsage);
  f.Register(flags);
  flags.Bool("public", &make_public, "remove any access code");
  flags.Bool("stdin", &from_stdin, "read the code from stdin's first line");
  flags.String("access-code", &code,
               "the code (prefer TUNNEL_ACCESS_CODE, --stdin or CODE)");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (f.timeout <= absl::ZeroDuration()) {
    return UsageError("--timeout must be positive", kCommand);
  }
  if (positional.empty() || positional.size() > 2) {
    return UsageError("want SLUG and at most one CODE", kCommand);
  }
  const int sources = (positional.size() == 2) + from_stdin +
                      (flags.WasSet("access-code") ? 1 : 0);
  if (make_public && sources > 0) {
    return UsageError("--public takes no code", kCommand);
  }
  if (sources > 1) {
    return UsageError("give the code one way: CODE, --stdin or --access-code",
                      kCommand);
  }
  if (positional.size() == 2) code = positional[1];
  if (from_stdin && !std::getline(std::cin, code)) {
    return RuntimeError(absl::InvalidArgumentError("no code on stdin"));
  }
  if (!code.empty() && code.back() == '\r') code.pop_back();
  if (!make_public && code.empty()) {
    return UsageError(
        "give a CODE (or --stdin, TUNNEL_ACCESS_CODE) or --public", kCommand);
  }
  grpc::ClientContext ctx;
  if (absl::Status s = PrepareContext(f, &ctx); !s.ok()) {
    return RuntimeError(s);
  }
  tunnel::v1::SetAccessCodeRequest req;
  req.set_slug(positional[0]);
  req.set_code(code);
  req.set_public_(make_public);
  tunnel::v1::SetAccessCodeResponse resp;
  grpc::Status st = AdminStub(f)->SetAccessCode(&ctx, req, &resp);
  if (!st.ok()) return RpcError(f, st);
  if (f.json) {
    std::cout << "{\"slug\":" << Quote(resp.slug())
              << ",\"access\":" << Quote(resp.access()) << "}\n";
  } else {
    std::cout << "tunnel " << Printable(resp.slug()) << " is now "
              << Printable(resp.access()) << "\n";
  }
  return kExitOk;
}

int AdminSetIpRules(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl set-ip-rules";
  AdminFlags f;
  std::vector<std::string> allow, deny;
  bool clear = false;
  tunnel::common::FlagSet flags(kSetIpRulesUsage);
  f.Register(flags);
  flags.Repeated("allow", &allow, "a CIDR range that may reach the tunnel");
  flags.Repeated("deny", &deny, "a CIDR range that may not (wins)");
  flags.Bool("clear", &clear, "drop the admin's rules");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (f.timeout <= absl::ZeroDuration()) {
    return UsageError("--timeout must be positive", kCommand);
  }
  if (positional.size() != 1) return UsageError("want one SLUG", kCommand);
  if (clear && (!allow.empty() || !deny.empty())) {
    return UsageError("--clear takes no --allow or --deny", kCommand);
  }
  if (absl::StatusOr<tunnel::common::IpRules> rules =
          tunnel::common::ParseIpRules(allow, deny, "--allow", "--deny");
      !rules.ok()) {
    return UsageError(rules.status().message(), kCommand);
  }
  grpc::ClientContext ctx;
  if (absl::Status s = PrepareContext(f, &ctx); !s.ok()) {
    return RuntimeError(s);
  }
  tunnel::v1::SetIpRulesRequest req;
  req.set_slug(positional[0]);
  for (const std::string& c : allow) req.add_allow(c);
  for (const std::string& c : deny) req.add_deny(c);
  req.set_clear(clear);
  tunnel::v1::SetIpRulesResponse resp;
  grpc::Status st = AdminStub(f)->SetIpRules(&ctx, req, &resp);
  if (!st.ok()) return RpcError(f, st);
  auto list = [](const auto& items) {
    std::string out;
    for (const std::string& i : items) {
      absl::StrAppend(&out, out.empty() ? "" : ",", Quote(i));
    }
    return absl::StrCat("[", out, "]");
  };
  if (f.json) {
    std::cout << "{\"slug\":" << Quote(resp.slug())
              << ",\"allow\":" << list(resp.allow())
              << ",\"deny\":" << list(resp.deny())
              << ",\"source\":" << Quote(resp.source()) << "}\n";
  } else if (resp.allow().empty() && resp.deny().empty()) {
    std::cout << "tunnel " << Printable(resp.slug())
              << " may be reached from any address (rules: " << resp.source()
              << ")\n";
  } else {
    std::cout << "tunnel " << Printable(resp.slug()) << " (" << resp.source()
              << "'s rules): allow "
              << (resp.allow().empty() ? "any"
                                       : absl::StrJoin(resp.allow(), " "))
              << "; deny "
              << (resp.deny().empty() ? "none"
                                      : absl::StrJoin(resp.deny(), " "))
              << "\n";
  }
  return kExitOk;
}

int AdminTokenIssue(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl admin-token issue";
  std::string file;
  bool force = false;
  tunnel::common::FlagSet flags(kAdminTokenUsage);
  flags.String("file", &file, "where to write the token (required)");
  flags.Bool("force", &force, "replace an existing file");
  std::vector<std::string> positional;
  if (auto done =
          ParseAdmin(flags, nullptr, args, kCommand, 0, "", &positional)) {
    return *done;
  }
  if (file.empty()) return UsageError("--file is required", kCommand);
  if (!force && access(file.c_str(), F_OK) == 0) {
    return RuntimeError(absl::AlreadyExistsError(absl::StrCat(
        file,
        " exists; pass --force to replace it (the gateway keeps the "
        "old token until it restarts)")));
  }
  if (absl::Status s = tunnel::common::SaveAdminToken(
          file, tunnel::common::GenerateAdminToken());
      !s.ok()) {
    return RuntimeError(s);
  }
  std::cerr << "tunnelctl: wrote a new admin token to " << file
            << " (mode 0600); start the gateway with --admin-token-file "
            << file << " and give tunnelctl the same file\n";
  return kExitOk;
}

bool IsHelp(absl::string_view arg) { return arg == "--help" || arg == "-h"; }

}  // namespace

int main(int argc, char** argv) {
  tunnel::common::RouteGrpcLogs();
  std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
  if (args.empty()) {
    std::cerr << kTopUsage;
    return kExitUsage;
  }
  if (IsHelp(args[0]) || args[0] == "help") {
    std::cout << kTopUsage;
    return kExitOk;
  }
  std::vector<std::string> after(args.begin() + 1, args.end());
  if (args[0] == "list") return AdminList(after);
  if (args[0] == "status") return AdminStatus(after);
  if (args[0] == "disconnect") return AdminDisconnect(after);
  if (args[0] == "drain") return AdminDrain(after);
  if (args[0] == "set-code") return AdminSetCode(after);
  if (args[0] == "set-ip-rules") return AdminSetIpRules(after);
  if (args[0] == "hash-password") return HashPasswordCommand(after);
  if (args[0] == "reload") return AdminReload(after);
  if (args[0] == "admin-token") {
    if (after.empty()) {
      return UsageError("missing admin-token command (issue)", "tunnelctl");
    }
    if (IsHelp(after[0])) {
      std::cout << kAdminTokenUsage;
      return kExitOk;
    }
    if (after[0] != "issue") {
      return UsageError(absl::StrCat("unknown admin-token command \"",
                                     Printable(after[0]), "\" (want issue)"),
                        "tunnelctl");
    }
    return AdminTokenIssue(
        std::vector<std::string>(after.begin() + 1, after.end()));
  }
  if (args[0] != "token") {
    return UsageError(
        absl::StrCat("unknown command \"", Printable(args[0]), "\""),
        "tunnelctl");
  }
  if (args.size() < 2) {
    return UsageError("missing token command (issue, list or revoke)",
                      "tunnelctl");
  }
  if (IsHelp(args[1])) {
    std::cout << kTopUsage;
    return kExitOk;
  }
  const std::string& command = args[1];
  std::vector<std::string> rest(args.begin() + 2, args.end());
  if (command == "issue") return TokenIssue(rest);
  if (command == "list") return TokenList(rest);
  if (command == "revoke") return TokenRevoke(rest);
  if (command == "extend") return TokenExtend(rest);
  return UsageError(absl::StrCat("unknown token command \"", Printable(command),
                                 "\" (want issue, list, revoke or extend)"),
                    "tunnelctl");
}
