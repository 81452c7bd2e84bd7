// tunnelctl: manages the gateway's credentials file.
//
//   tunnelctl token issue --id AGENT_ID [--credentials FILE]
//   tunnelctl token list [--credentials FILE]
//   tunnelctl token revoke TOKEN_ID [--credentials FILE]
//
// Exit codes: 0 success (and --help), 1 runtime error (file unreadable or
// invalid, unknown token), 2 bad usage. `token issue` prints machine-readable
// "key: value" lines on stdout; everything meant for humans goes to stderr.
#include <algorithm>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/flags.h"
#include "tunnel/v1/credentials.pb.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

constexpr char kDefaultCredentials[] = "tunnel-credentials.txtpb";

constexpr char kTopUsage[] =
    "Usage: tunnelctl token <command> [flags]\n"
    "\n"
    "Manages the gateway's agent credentials file.\n"
    "\n"
    "Commands:\n"
    "  token issue --id AGENT_ID   issue a token for an agent; prints its "
    "secret once\n"
    "  token list                  list tokens (never shows secrets)\n"
    "  token revoke TOKEN_ID       revoke a token\n"
    "\n"
    "Run 'tunnelctl token <command> --help' for a command's flags.\n";

constexpr char kIssueUsage[] =
    "Usage: tunnelctl token issue --id AGENT_ID [--credentials FILE]\n"
    "\n"
    "Adds a fresh token for AGENT_ID to the credentials file (creating it if\n"
    "needed) and prints agent_id, token and secret on stdout, one\n"
    "\"key: value\" line each. The secret is not recoverable later.\n";

constexpr char kListUsage[] =
    "Usage: tunnelctl token list [--credentials FILE]\n"
    "\n"
    "Prints every token with its agent, creation time (UTC) and status.\n"
    "Secrets are never shown.\n";

constexpr char kRevokeUsage[] =
    "Usage: tunnelctl token revoke TOKEN_ID [--credentials FILE]\n"
    "\n"
    "Marks TOKEN_ID revoked; the gateway refuses it from then on.\n";

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

int TokenIssue(const std::vector<std::string>& args) {
  constexpr char kCommand[] = "tunnelctl token issue";
  std::string credentials = kDefaultCredentials;
  std::string agent_id;
  tunnel::common::FlagSet flags(kIssueUsage);
  flags.String("id", &agent_id, "agent id the token authenticates (required)");
  flags.String("credentials", &credentials, "credentials file to update");
  std::vector<std::string> positional;
  if (auto done = ParseFlags(flags, args, kCommand, &positional)) return *done;
  if (!positional.empty()) {
    return UsageError(
        absl::StrCat("unexpected argument \"", positional[0], "\""), kCommand);
  }
  if (agent_id.empty()) return UsageError("--id is required", kCommand);
  if (!tunnel::common::IsValidAgentId(agent_id)) {
    return UsageError(absl::StrCat("invalid --id \"", Printable(agent_id),
                                   "\": use 1-64 chars of A-Z a-z 0-9 . _ -"),
                      kCommand);
  }

  tunnel::v1::CredentialsFile file;
  if (auto loaded = tunnel::common::LoadCredentialsFile(credentials);
      loaded.ok()) {
    file = *std::move(loaded);
  } else if (!absl::IsNotFound(loaded.status())) {
    return RuntimeError(loaded.status());
  }
  absl::StatusOr<tunnel::v1::Credential> cred =
      tunnel::common::IssueCredential(agent_id, absl::Now());
  if (!cred.ok()) return RuntimeError(cred.status());
  *file.add_credentials() = *cred;
  if (absl::Status s = tunnel::common::SaveCredentialsFile(credentials, file);
      !s.ok()) {
    return RuntimeError(s);
  }

  std::cout << "agent_id: " << cred->agent_id() << "\n"
            << "token: " << cred->token_id() << "\n"
            << "secret: " << cred->secret() << "\n";
  std::cout.flush();
  std::cerr << "tunnelctl: the secret is shown only once; store it now. "
               "Connect the agent with:\n"
            << "  agent-tunnel connect --gateway HOST:8080 --id "
            << cred->agent_id() << " --token " << cred->token_id()
            << " --secret " << cred->secret()
            << " --to http://127.0.0.1:3000\n";
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
      {"TOKEN", "AGENT", "CREATED (UTC)", "STATUS"}};
  for (const tunnel::v1::Credential& c : file->credentials()) {
    rows.push_back({Printable(c.token_id()), Printable(c.agent_id()),
                    FormatCreated(c.created_unix()),
                    c.revoked() ? "revoked" : "active"});
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
  tunnel::v1::Credential* target = nullptr;
  for (tunnel::v1::Credential& c : *file->mutable_credentials()) {
    if (c.token_id() == token_id) target = &c;
  }
  if (target == nullptr) {
    return RuntimeError(absl::NotFoundError(absl::StrCat(
        "no token \"", Printable(token_id), "\" in ", credentials)));
  }
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
  return kExitOk;
}

bool IsHelp(absl::string_view arg) { return arg == "--help" || arg == "-h"; }

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
  if (args.empty()) {
    std::cerr << kTopUsage;
    return kExitUsage;
  }
  if (IsHelp(args[0]) || args[0] == "help") {
    std::cout << kTopUsage;
    return kExitOk;
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
  return UsageError(absl::StrCat("unknown token command \"", Printable(command),
                                 "\" (want issue, list or revoke)"),
                    "tunnelctl");
}
