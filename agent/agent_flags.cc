#include "agent/agent_flags.h"

#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/agent.h"
#include "agent/local_target.h"
#include "agent/state_file.h"
#include "agent/tls_probe.h"
#include "common/access_code.h"
#include "common/cidr.h"
#include "common/config_file.h"
#include "common/log.h"
#include "common/password_hash.h"
#include "common/slug.h"
#include "common/socket_io.h"
#include "common/tls.h"
#include "tunnel/v1/config.pb.h"

namespace tunnel::agent {

void RegisterConnectFlags(common::FlagSet* flags, AgentFlags* v) {
  AgentOptions& o = v->options;
  v->max_concurrent = static_cast<int64_t>(o.max_concurrent);
  v->connections = static_cast<int64_t>(o.connections);
  v->receive_window = o.receive_window;
  v->batch_bytes = o.max_batch_bytes;
  v->send_queue = static_cast<int64_t>(o.max_queued_bytes);
  v->health_unhealthy_after = o.health.unhealthy_after;
  v->health_healthy_after = o.health.healthy_after;
  v->state_file = kDefaultStateFile;
  const InspectorOptions inspect_defaults;
  v->inspect_max_requests = static_cast<int64_t>(inspect_defaults.max_requests);
  v->inspect_max_body = static_cast<int64_t>(inspect_defaults.max_body);
  v->inspect_max_memory = static_cast<int64_t>(inspect_defaults.max_memory);

  flags->String("config", &v->config,
                "config file (tunnel.v1.AgentConfig, text format or .json); "
                "flags and environment override it");
  flags->String("gateway", &o.gateway,
                "gateway gRPC address, HOST:PORT; several, comma-separated "
                "(replicas of a gateway cluster): the next is tried when a "
                "session ends or an attempt fails");
  flags->String("id", &o.agent_id, "agent id the token was issued for");
  flags->String("token", &o.token_id, "token id from `tunnelctl token issue`");
  flags->String("secret", &o.secret,
                "secret from `tunnelctl token issue` (prefer the env var)");
  flags->Repeated("to", &v->to,
                  "local service: URL, or NAME=URL for an extra named tunnel "
                  "(slug NAME-<slug>)");
  flags->String("slug", &v->slug,
                "public slug of the unnamed tunnel, or \"random\" for 8 "
                "random chars the gateway chooses and keeps for this process "
                "(default: "
                "the agent id, lowercased)");
  flags->String("pool", &o.pool,
                "serve the public slug NAME as one member of pool NAME, "
                "beside other agents (needs a token issued with --pool "
                "NAME); requests go to the member with the fewest in "
                "flight");
  flags->String("access-code", &v->access_code,
                "visitors must enter this code (once per browser; a cookie "
                "keeps them in) for all tunnels of this agent; only a salted "
                "hash reaches the gateway (prefer the env var)");
  flags->Repeated("allow-cidr", &v->allow_cidr,
                  "only visitors from this CIDR range (e.g. 203.0.113.0/24, "
                  "2001:db8::/32) may reach this agent's tunnels; "
                  "repeatable");
  flags->Repeated("deny-cidr", &v->deny_cidr,
                  "visitors from this CIDR range may not reach this agent's "
                  "tunnels (wins over --allow-cidr); repeatable");
  flags->Repeated("basic-auth", &v->basic_auth,
                  "visitors must log in as USER with the password HASH was "
                  "made from (HTTP basic auth) for all of this agent's "
                  "tunnels: USER:HASH, a bcrypt or PBKDF2 hash from "
                  "`tunnelctl hash-password USER` or `htpasswd -nB USER`; "
                  "repeatable");
  flags->String("basic-auth-file", &v->basic_auth_file,
                "like --basic-auth, one USER:HASH per line (an htpasswd "
                "file of bcrypt hashes works)");
  flags->Bool("insecure", &o.insecure,
              "connect without TLS (only for a gateway started with "
              "--insecure)");
  flags->String("ca", &v->ca_file,
                "PEM CA certificate(s) to verify the gateway with instead of "
                "the system's roots (a private CA)");
  flags->String("client-cert", &v->client_cert_file,
                "PEM client certificate to present (gateway with "
                "--client-ca)");
  flags->String("client-key", &v->client_key_file,
                "PEM private key of --client-cert (unencrypted)");
  flags->String("tls-server-name", &o.tls_server_name,
                "name the gateway's certificate must have (default: the host "
                "of --gateway)");
  flags->Int("connections", &v->connections,
             "with several --gateway addresses: connections held at once, "
             "each to another address (a cluster's replicas all serve the "
             "tunnels; losing one loses none); at most one per address");
  flags->Int("max-concurrent", &v->max_concurrent,
             "local requests in flight at once; further ones queue");
  flags->Int("stream-window", &v->receive_window,
             "per-stream window for request bodies, bytes (>= 65536)");
  flags->Int("batch-bytes", &v->batch_bytes,
             "largest batch of envelopes in one gRPC message to and from "
             "the gateway, bytes (the gateway may choose less); 0: one "
             "envelope per message");
  flags->Int("send-queue", &v->send_queue,
             "response bytes queued towards the gateway beyond which local "
             "services are paused (bounds the agent's memory however many "
             "requests run), bytes");
  flags->String("health-check", &o.health.path,
                "how the agent checks its local services: GET this path "
                "(2xx/3xx: healthy); default: a TCP connect to the target");
  flags->Duration("health-interval", &o.health.interval,
                  "how often each local service is checked (0: never; the "
                  "gateway then always takes it as healthy)");
  flags->Duration("health-timeout", &o.health.timeout,
                  "a check without an answer this long fails");
  flags->Int("health-unhealthy-after", &v->health_unhealthy_after,
             "failed checks in a row that make a service unhealthy (the "
             "gateway then sends its visitors to another pool member, or "
             "503 local_service_unhealthy)");
  flags->Int("health-healthy-after", &v->health_healthy_after,
             "good checks in a row that make it healthy again");
  flags->Duration("local-timeout", &o.local_timeout,
                  "local service silent this long mid-request: it fails "
                  "(an upgraded connection: no byte either way)");
  flags->Duration("local-connect-timeout", &o.local_connect_timeout,
                  "give up connecting to a local service after this (502 "
                  "local_service_unreachable)");
  flags->Duration("connect-timeout", &o.connect_timeout,
                  "give up one connection attempt to the gateway after this");
  flags->Duration("max-backoff", &o.max_backoff,
                  "longest wait between reconnection attempts");
  flags->Duration("heartbeat-timeout", &o.heartbeat_timeout,
                  "gateway silent this long: reconnect");
  flags->Duration("drain-timeout", &v->drain_timeout,
                  "on SIGTERM/SIGINT, how long requests in flight may finish");
  flags->String("log-level", &v->log_level,
                "debug, info, warning or error (default warning with "
                "--quiet)");
  flags->String("log-format", &v->log_format,
                "text (lines for people) or json (one object per line)");
  flags->Bool("quiet", &v->quiet,
              "stdout gets only the URL lines (no QR code), stderr only "
              "warnings and errors unless --log-level is given");
  flags->String("state-file", &v->state_file,
                absl::StrCat("where the agent keeps its state for "
                             "`agent-tunnel status` (\"auto\": ",
                             DefaultStateDir(), "/<id>.json; empty: none)"));
  flags->String("inspect", &v->inspect,
                absl::StrCat("a local web page and JSON API showing every "
                             "request through this agent, with replay, at "
                             "HOST:PORT; \"auto\": at ",
                             kInspectDefaultAddr,
                             " when stdout is a terminal; \"\": off"));
  flags->Int("inspect-max-requests", &v->inspect_max_requests,
             "requests the inspector keeps (the oldest go first)");
  flags->Int("inspect-max-body", &v->inspect_max_body,
             "body bytes the inspector keeps per request and direction "
             "(0: none)");
  flags->Int("inspect-max-memory", &v->inspect_max_memory,
             "bytes of bodies and heads the inspector keeps in all (the "
             "oldest requests go first)");
  flags->Bool("inspect-show-secrets", &v->inspect_show_secrets,
              "show Authorization, Cookie, Set-Cookie and access-code values "
              "in the inspector instead of masking them");
  flags->Duration("state-refresh", &v->state_refresh,
                  "how often the agent rewrites its state file (status "
                  "calls an agent whose file is 3 times older not "
                  "responding)");
}

namespace {

absl::Status CheckInspectFlags(AgentFlags* v) {
  v->inspect_auto = v->inspect == kInspectAuto;
  if (v->inspect_auto) {
    v->inspect = v->stdout_is_terminal ? kInspectDefaultAddr : "";
  } else if (!v->inspect.empty()) {
    std::string host;
    int port = 0;
    if (absl::Status s = common::SplitHostPort(v->inspect, &host, &port);
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--inspect: ", s.message(),
                       " (e.g. 127.0.0.1:4040; \"\" turns it off)"));
    }
  }
  if (v->inspect_max_requests < 1 || v->inspect_max_requests > 100000) {
    return absl::InvalidArgumentError(
        "--inspect-max-requests must be between 1 and 100000");
  }
  if (v->inspect_max_body < 0 || v->inspect_max_body > (64 << 20)) {
    return absl::InvalidArgumentError(
        "--inspect-max-body must be between 0 and 67108864");
  }
  if (v->inspect_max_memory < std::max<int64_t>(v->inspect_max_body, 1 << 20) ||
      v->inspect_max_memory > (int64_t{4} << 30)) {
    return absl::InvalidArgumentError(
        "--inspect-max-memory must be at least --inspect-max-body and "
        "1048576 (it holds the heads too), and at most 4294967296");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseConnectFlags(int argc, char** argv, int first,
                               common::FlagSet* flags, AgentFlags* v) {
  absl::StatusOr<std::vector<std::string>> rest =
      flags->Parse(argc, argv, first);
  if (!rest.ok()) return rest.status();
  if (flags->help_requested()) return absl::OkStatus();
  if (!rest->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", (*rest)[0], "\" (see --help)"));
  }
  bool exposed_secret = false;
  if (!v->config.empty()) {
    tunnel::v1::AgentConfig config;
    if (absl::Status s = common::ApplyConfigFile(v->config, &config, flags);
        !s.ok()) {
      return s;
    }
    struct stat st;
    exposed_secret = (config.has_secret() || config.has_access_code()) &&
                     stat(v->config.c_str(), &st) == 0 &&
                     (st.st_mode & (S_IRWXG | S_IRWXO)) != 0;
  }
  for (const char* name : {"gateway", "id", "token", "secret"}) {
    if (!flags->WasSet(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, " is required (or set ", flags->EnvName(name), ", or `",
          name, "` in the --config file)"));
    }
  }
  for (const std::string& g : SplitGateways(v->options.gateway)) {
    std::string host;
    int port = 0;
    if (!SplitGateway(g, &host, &port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--gateway \"", g,
                       "\" must be HOST:PORT (several: comma-separated)"));
    }
  }
  if (v->quiet && !flags->WasSet("log-level")) v->log_level = "warning";
  if (!common::SetLogLevelByName(v->log_level)) {
    return absl::InvalidArgumentError(
        "--log-level must be debug, info, warning or error");
  }
  if (!common::SetLogFormatByName(v->log_format)) {
    return absl::InvalidArgumentError("--log-format must be text or json");
  }
  if (exposed_secret) {
    TUNNEL_LOG(WARNING) << v->config
                        << " holds a secret and is readable by group or "
                           "others; chmod 600 it";
  }
  if (v->connections < 1 || v->connections > 16) {
    return absl::InvalidArgumentError("--connections must be between 1 and 16");
  }
  if (v->max_concurrent < 1) {
    return absl::InvalidArgumentError("--max-concurrent must be >= 1");
  }
  if (v->state_file == kDefaultStateFile) {
    v->state_file = DefaultStateFilePath(v->options.agent_id);
  }
  if (v->state_refresh < absl::Milliseconds(100) ||
      v->state_refresh > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        "--state-refresh must be between 100ms and 1h");
  }
  if (v->receive_window < 65536 || v->receive_window > (16 << 20)) {
    return absl::InvalidArgumentError(
        "--stream-window must be between 65536 and 16777216");
  }
  if (v->batch_bytes != 0 &&
      (v->batch_bytes < 4096 || v->batch_bytes > (1 << 20))) {
    return absl::InvalidArgumentError(
        "--batch-bytes must be 0 (no batches) or between 4096 and 1048576");
  }
  if (v->send_queue < 65536 || v->send_queue > (1 << 30)) {
    return absl::InvalidArgumentError(
        "--send-queue must be between 65536 and 1073741824");
  }
  AgentOptions& o = v->options;
  if (o.insecure &&
      (!v->ca_file.empty() || !v->client_cert_file.empty() ||
       !v->client_key_file.empty() || !o.tls_server_name.empty())) {
    return absl::InvalidArgumentError(
        "--insecure turns TLS off; --ca, --client-cert, --client-key and "
        "--tls-server-name need TLS");
  }
  if (v->client_cert_file.empty() != v->client_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--client-cert and --client-key go together");
  }
  if (!v->ca_file.empty()) {
    absl::StatusOr<std::string> ca = common::ReadPemFile("--ca", v->ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status s = common::CheckCertificates("--ca", v->ca_file, *ca);
        !s.ok()) {
      return s;
    }
    o.ca_pem = *std::move(ca);
  }
  if (!v->client_cert_file.empty()) {
    absl::StatusOr<common::CertAndKey> pair =
        common::LoadCertAndKey("--client-cert", v->client_cert_file,
                               "--client-key", v->client_key_file);
    if (!pair.ok()) return pair.status();
    o.client_cert_pem = std::move(pair->cert_pem);
    o.client_key_pem = std::move(pair->key_pem);
  }
  if (!v->access_code.empty()) {
    absl::StatusOr<tunnel::v1::AccessCodeHash> h =
        common::HashAccessCode(v->access_code);
    if (!h.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--access-code: ", h.status().message()));
    }
    o.access_code = *std::move(h);
  }
  if (absl::StatusOr<common::IpRules> rules = common::ParseIpRules(
          v->allow_cidr, v->deny_cidr, "--allow-cidr", "--deny-cidr");
      !rules.ok()) {
    return rules.status();
  }
  std::vector<std::string> basic_auth = v->basic_auth;
  if (!v->basic_auth_file.empty()) {
    absl::StatusOr<std::vector<std::string>> lines =
        common::ReadBasicAuthFile(v->basic_auth_file);
    if (!lines.ok()) return lines.status();
    if (lines->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--basic-auth-file: ", v->basic_auth_file, " holds no USER:HASH"));
    }
    basic_auth.insert(basic_auth.end(), lines->begin(), lines->end());
  }
  absl::StatusOr<std::vector<common::BasicAuthUser>> users =
      common::ParseBasicAuthUsers(basic_auth,
                                  v->basic_auth_file.empty()
                                      ? "--basic-auth"
                                      : "--basic-auth/--basic-auth-file");
  if (!users.ok()) return users.status();
  o.basic_auth.clear();
  for (const common::BasicAuthUser& u : *users) {
    tunnel::v1::BasicAuthUser& out = o.basic_auth.emplace_back();
    out.set_user(u.user);
    out.set_hash(u.hash.text);
  }
  o.ip_rules.Clear();
  for (const std::string& c : v->allow_cidr) o.ip_rules.add_allow(c);
  for (const std::string& c : v->deny_cidr) o.ip_rules.add_deny(c);
  if (o.health.interval < absl::ZeroDuration() ||
      (o.health.interval > absl::ZeroDuration() &&
       o.health.interval < absl::Milliseconds(100))) {
    return absl::InvalidArgumentError(
        "--health-interval must be 0 (no checks) or at least 100ms");
  }
  if (o.local_connect_timeout < absl::Milliseconds(10) ||
      o.local_connect_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        "--local-connect-timeout must be between 10ms and 1h");
  }
  if (o.health.timeout < absl::Milliseconds(10)) {
    return absl::InvalidArgumentError("--health-timeout must be at least 10ms");
  }
  if (v->health_unhealthy_after < 1 || v->health_unhealthy_after > 100 ||
      v->health_healthy_after < 1 || v->health_healthy_after > 100) {
    return absl::InvalidArgumentError(
        "--health-unhealthy-after and --health-healthy-after must be between "
        "1 and 100");
  }
  if (!o.health.path.empty() && o.health.path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("--health-check wants a path starting with '/', not \"",
                     o.health.path, "\""));
  }
  if (absl::Status s = CheckInspectFlags(v); !s.ok()) return s;
  o.health.unhealthy_after = static_cast<int>(v->health_unhealthy_after);
  o.health.healthy_after = static_cast<int>(v->health_healthy_after);
  o.drain_timeout = v->drain_timeout;
  o.max_concurrent = static_cast<size_t>(v->max_concurrent);
  o.connections = static_cast<size_t>(v->connections);
  o.receive_window = static_cast<uint32_t>(v->receive_window);
  o.max_batch_bytes = static_cast<uint32_t>(v->batch_bytes);
  o.max_queued_bytes = static_cast<size_t>(v->send_queue);
  if (!o.pool.empty()) {
    if (!v->slug.empty()) {
      return absl::InvalidArgumentError(
          "--pool NAME is the slug; leave --slug out");
    }
    if (absl::Status s = common::CheckSlug(o.pool); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--pool: ", s.message()));
    }
  }
  std::string slug = !o.pool.empty() ? o.pool : v->slug;
  if (slug.empty()) slug = absl::AsciiStrToLower(o.agent_id);
  o.random_slug = slug == "random";
  // A random slug is 8 chars: the names are checked against one that long.
  auto targets = ParseTargets(v->to, o.random_slug ? "r4nd0m00" : slug);
  if (!targets.ok()) return targets.status();
  o.tunnels = *std::move(targets);
  if (o.random_slug) {
    for (LocalTarget& t : o.tunnels) t.slug.clear();  // the gateway's to say
  }
  return absl::OkStatus();
}

}  // namespace tunnel::agent
