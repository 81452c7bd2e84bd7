#include "server/gateway.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/admin_token.h"
#include "common/hmac_auth.h"
#include "common/log.h"
#include "common/random.h"
#include "common/tls.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/server_credentials.h"

namespace tunnel::server {
namespace {

#ifndef TUNNEL_VERSION
#define TUNNEL_VERSION "unknown"
#endif
constexpr char kVersion[] = TUNNEL_VERSION;

// Every agent's secret is in the credentials file: say so when others may
// read it (a warning, not a refusal: the file is ours to read either way).
void WarnIfOthersMayRead(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 &&
      (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    TUNNEL_LOG(WARNING) << "credentials file " << path
                        << " is accessible to group or others (mode 0"
                        << std::oct << (st.st_mode & 0777) << std::dec
                        << "); it holds every agent's secret: chmod 600 "
                        << path;
  }
}

}  // namespace

Gateway::Gateway(GatewayOptions options) : options_(std::move(options)) {}

Gateway::~Gateway() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Gateway>> Gateway::Start(
    GatewayOptions options) {
  std::unique_ptr<Gateway> gw(new Gateway(std::move(options)));
  GatewayOptions& o = gw->options_;

  tunnel::v1::CredentialsFile creds;
  if (o.credentials.has_value()) {
    creds = *o.credentials;
  } else {
    absl::StatusOr<tunnel::v1::CredentialsFile> loaded =
        common::LoadCredentialsFile(o.credentials_path);
    if (!loaded.ok()) return loaded.status();
    creds = *std::move(loaded);
    WarnIfOthersMayRead(o.credentials_path);
  }
  std::optional<std::string> admin_token = o.admin_token;
  if (!admin_token.has_value() && !o.admin_token_file.empty()) {
    absl::StatusOr<std::string> t = common::LoadAdminToken(o.admin_token_file);
    if (!t.ok()) return t.status();
    admin_token = *std::move(t);
  }
  gw->credentials_.Replace(creds);
  gw->core_metrics_.live_tokens->Set(
      static_cast<int64_t>(gw->credentials_.LiveTokenCount()));
  gw->registry_.ReserveAgentSlugs(gw->credentials_.AgentIds());
  gw->verifier_ =
      std::make_unique<common::AuthVerifier>(&gw->credentials_, o.auth_skew);

  // TLS material first: a wrong file is reported before anything listens.
  std::shared_ptr<grpc::ServerCredentials> grpc_creds =
      grpc::InsecureServerCredentials();
  if (o.tls.enabled()) {
    if (o.tls.cert_file.empty() || o.tls.key_file.empty()) {
      return absl::InvalidArgumentError(
          "TLS needs both --tls-cert and --tls-key");
    }
    absl::StatusOr<common::CertAndKey> pair = common::LoadCertAndKey(
        "--tls-cert", o.tls.cert_file, "--tls-key", o.tls.key_file);
    if (!pair.ok()) return pair.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({pair->key_pem, pair->cert_pem});
    if (!o.tls.client_ca_file.empty()) {
      absl::StatusOr<std::string> ca =
          common::ReadPemFile("--client-ca", o.tls.client_ca_file);
      if (!ca.ok()) return ca.status();
      if (absl::Status s = common::CheckCertificates("--client-ca",
                                                     o.tls.client_ca_file, *ca);
          !s.ok()) {
        return s;
      }
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    grpc_creds = grpc::SslServerCredentials(ssl);
    o.front.tls = *std::move(pair);
  } else if (!o.tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--client-ca needs TLS (--tls-cert and --tls-key)");
  }
  if (o.public_scheme.empty()) {
    o.public_scheme = o.tls.enabled() ? "https" : "http";
  }
  o.service.public_scheme = o.public_scheme;
  o.front.scheme = o.tls.enabled() ? "https" : o.public_scheme;

  std::string http_host;
  int http_port;
  if (absl::Status s = SplitHostPort(o.http_addr, &http_host, &http_port);
      !s.ok()) {
    return s;
  }
  o.front.domain = o.service.domain;
  gw->metrics_
      .AddGauge("tunnel_build_info", "Always 1; labelled with the version.",
                {"version"})
      ->WithLabels({kVersion})
      ->Set(1);
  gw->core_metrics_.ObserveSessions(&gw->metrics_, &gw->registry_);
  TunnelRouter* router = &gw->registry_;
  if (!o.cluster.redis_url.empty()) {
    absl::StatusOr<RedisAddress> redis = ParseRedisUrl(o.cluster.redis_url);
    if (!redis.ok()) return redis.status();
    if (o.cluster.secret.empty()) {
      absl::StatusOr<std::string> secret =
          common::LoadSecretFile(o.cluster_secret_file, "cluster secret file");
      if (!secret.ok()) return secret.status();
      o.cluster.secret = common::Base64UrlEncode(*secret);
    }
    // Access cookies earned at any replica pass every replica.
    o.front.access_cookie_key = common::HmacSha256(
        common::Base64UrlDecode(o.cluster.secret).value_or(o.cluster.secret),
        "tunnel-access-cookie-v1");
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> peers =
        ClusterCredentials(o.tls.enabled(), o.cluster.ca_file, o.tls.cert_file);
    if (!peers.ok()) return peers.status();
    gw->cluster_ = std::make_unique<ClusterDirectory>(
        o.cluster, *redis, &gw->registry_, &gw->metrics_);
    gw->cluster_router_ = std::make_unique<ClusterRouter>(
        &gw->registry_, gw->cluster_.get(), *std::move(peers), &gw->metrics_);
    router = gw->cluster_router_.get();
    o.front.shared_tunnel_counts = gw->cluster_.get();
  }
  if (o.relay.max_sessions > 0) {
    gw->relay_ = std::make_unique<RelayHub>(o.relay);
    o.front.relay = gw->relay_.get();
  }
  gw->front_ =
      std::make_unique<httpfront::FrontDoor>(o.front, router, &gw->metrics_);
  absl::StatusOr<int> bound = gw->front_->Listen(http_host, http_port);
  if (!bound.ok()) return bound.status();
  gw->http_port_ = *bound;
  o.service.public_port = o.public_port < 0 ? gw->http_port_ : o.public_port;
  gw->front_->SetPublicPort(o.service.public_port);

  gw->service_ = std::make_unique<TunnelServiceImpl>(
      o.service, &gw->registry_, gw->verifier_.get(), &gw->core_metrics_);
  gw->service_->set_relay(gw->relay_.get());
  // Operators' tools on the agent port: server reflection (`grpcurl list`,
  // `describe`; a process-wide switch read when a builder is made and
  // built) and grpc.health.v1.Health (ours, not gRPC's default: see
  // health_service.h). Neither asks for credentials: HMAC auth is checked
  // inside Connect, not by an interceptor.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  gw->health_ = std::make_unique<HealthService>(
      std::vector<std::string>{tunnel::v1::TunnelService::service_full_name()});
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.grpc_addr, grpc_creds, &gw->grpc_port_);
  builder.RegisterService(gw->service_.get());
  builder.RegisterService(gw->health_.get());
  if (gw->cluster_ != nullptr) {
    ForwardServiceOptions fo;
    fo.secret = o.cluster.secret;
    fo.auth_skew = o.auth_skew;
    fo.response_timeout = o.front.response_timeout;
    fo.idle_timeout =
        std::max(o.front.body_idle_timeout, o.front.upgrade_idle_timeout);
    gw->forward_service_ = std::make_unique<ForwardService>(
        fo, &gw->registry_, gw->front_.get(), &gw->metrics_);
    builder.RegisterService(gw->forward_service_.get());
    gw->service_->set_cluster(gw->cluster_.get());
  }
  // Agents ping through NATs that drop idle flows; allow it and answer.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // gRPC's default (4 MiB) is far above any legitimate envelope. Its cap is
  // twice ours: up to it the service sees the message, closes the session
  // and counts it exactly; beyond it gRPC refuses it unseen (the agent gets
  // RESOURCE_EXHAUSTED; the gateway sees only a call that ended).
  builder.SetMaxReceiveMessageSize(2 * o.service.max_message_bytes);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < std::max(1, o.service.grpc_threads); ++i) {
    queues.push_back(builder.AddCompletionQueue());
  }
  gw->grpc_server_ = builder.BuildAndStart();
  if (gw->grpc_server_ != nullptr) {
    gw->service_->Serve(std::move(queues));
  } else {
    for (auto& q : queues) {  // a queue must be drained before it goes
      q->Shutdown();
      void* tag;
      bool ok;
      while (q->Next(&tag, &ok)) {
      }
    }
  }
  if (gw->grpc_server_ == nullptr || gw->grpc_port_ == 0) {
    gw->front_->Stop();
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", o.grpc_addr,
                     " (address in use or not available)"));
  }
  if (gw->cluster_ != nullptr) {
    // The advertised port 0 is the bound one; the default name says where.
    std::string host;
    int port = 0;
    if (absl::Status s = SplitHostPort(
            o.cluster.advertise.empty() ? o.grpc_addr : o.cluster.advertise,
            &host, &port);
        !s.ok()) {
      gw->Shutdown();
      return s;
    }
    if (port == 0) port = gw->grpc_port_;
    std::string advertise = absl::StrCat(host.find(':') != std::string::npos
                                             ? absl::StrCat("[", host, "]")
                                             : host,
                                         ":", port);
    std::string id = o.cluster.id;
    if (id.empty()) {
      char name[256] = {};
      gethostname(name, sizeof(name) - 1);
      id = absl::StrCat(name, "-", port);
    }
    gw->cluster_->SetAddress(advertise, id);
    Gateway* g = gw.get();
    gw->cluster_->SetRevocations(
        [g] { return g->credentials_.RevokedTokenIds(); },
        [g](absl::flat_hash_set<std::string> revoked) {
          if (!g->credentials_.SetRevokedElsewhere(std::move(revoked))) return;
          g->core_metrics_.live_tokens->Set(
              static_cast<int64_t>(g->credentials_.LiveTokenCount()));
          const size_t closed = g->service_->CloseSessionsWithoutLiveToken();
          if (closed > 0) {
            TUNNEL_LOG(INFO) << "cluster: closed " << closed
                             << " session(s) whose token another replica "
                                "revoked";
          }
        });
    gw->cluster_->Start();
    const ClusterState cs = gw->cluster_->state();
    TUNNEL_LOG(INFO) << "cluster: replica " << id << " at " << advertise
                     << (cs.redis_up
                             ? absl::StrCat(", ", cs.replicas,
                                            " replica(s) in the directory")
                             : absl::StrCat(", Redis unreachable for now (",
                                            cs.error, ")"));
  }
  // "" (the whole server) and the tunnel service are SERVING, so a probe
  // can ask for either. Drain() turns both to NOT_SERVING.
  if (!o.ops_addr.empty()) {
    std::string ops_host;
    int ops_port;
    if (absl::Status s = SplitHostPort(o.ops_addr, &ops_host, &ops_port);
        !s.ok()) {
      gw->Shutdown();
      return s;
    }
    Gateway* g = gw.get();
    gw->ops_ = std::make_unique<httpfront::OpsServer>(
        &gw->metrics_,
        [g] {
          httpfront::Health h;
          h.draining = g->draining_;
          h.sessions = g->registry_.session_count();
          h.streams = g->registry_.stream_count();
          if (g->relay_ != nullptr) {
            const RelayCounts rc = g->relay_->counts();
            h.relay = httpfront::RelayHealth{rc.sessions, rc.clients};
          }
          if (g->cluster_ != nullptr) {
            const ClusterState cs = g->cluster_->state();
            h.cluster = httpfront::ClusterHealth{
                g->cluster_->options().id, cs.redis_up, cs.error, cs.replicas,
                cs.remote_tunnels};
          }
          return h;
        },
        kVersion);
    absl::StatusOr<int> ops_bound = gw->ops_->Listen(ops_host, ops_port);
    if (!ops_bound.ok()) {
      gw->Shutdown();
      return ops_bound.status();
    }
    gw->ops_port_ = *ops_bound;
  }
  if (!o.admin_addr.empty()) {
    // Its own server and port: the admin API never shares a listener with
    // agents, and a sync service keeps its calls off the tunnel's pool.
    // Reflection comes with it (the process-wide switch above); health is
    // ours, its own instance.
    Gateway* g = gw.get();
    gw->admin_service_ = std::make_unique<AdminServiceImpl>(
        std::move(admin_token), &gw->registry_, gw->service_.get(),
        &gw->metrics_,
        [g]() -> absl::StatusOr<tunnel::v1::ReloadCredentialsResponse> {
          absl::StatusOr<ReloadResult> r = g->ReloadCredentials();
          if (!r.ok()) return r.status();
          tunnel::v1::ReloadCredentialsResponse resp;
          resp.set_live_tokens(r->live_tokens);
          resp.set_sessions_closed(r->sessions_closed);
          return resp;
        });
    grpc::ServerBuilder admin;
    admin.AddListeningPort(o.admin_addr, grpc::InsecureServerCredentials(),
                           &gw->admin_port_);
    gw->admin_health_ =
        std::make_unique<HealthService>(std::vector<std::string>{
            tunnel::v1::AdminService::service_full_name()});
    admin.RegisterService(gw->admin_service_.get());
    admin.RegisterService(gw->admin_health_.get());
    gw->admin_server_ = admin.BuildAndStart();
    if (gw->admin_server_ == nullptr || gw->admin_port_ == 0) {
      gw->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot listen for the admin API on ", o.admin_addr,
                       " (address in use or not available; --admin-addr)"));
    }
  }
  gw->heartbeats_ = std::thread([g = gw.get()] { g->HeartbeatLoop(); });
  return gw;
}

absl::StatusOr<Gateway::ReloadResult> Gateway::ReloadCredentials() {
  if (options_.credentials.has_value()) {
    return absl::FailedPreconditionError(
        "the credentials were given in memory, not as a file; nothing to "
        "reload");
  }
  absl::MutexLock lock(&reload_mu_);
  absl::StatusOr<tunnel::v1::CredentialsFile> loaded =
      common::LoadCredentialsFile(options_.credentials_path);
  if (!loaded.ok()) {
    core_metrics_.credential_reloads_failed->Increment();
    // The message names the file (and line:column for syntax errors) and
    // never a secret (common/credentials.h).
    common::LogEvent(common::LogLevel::kError, "credentials_reload_failed")
        .Str("file", options_.credentials_path)
        .Str("error", loaded.status().message())
        .Str("kept", "the credentials in force stay unchanged");
    return loaded.status();
  }
  WarnIfOthersMayRead(options_.credentials_path);
  return ApplyCredentialsLocked(*loaded);
}

Gateway::ReloadResult Gateway::ApplyCredentials(
    const tunnel::v1::CredentialsFile& file) {
  absl::MutexLock lock(&reload_mu_);
  return ApplyCredentialsLocked(file);
}

Gateway::ReloadResult Gateway::ApplyCredentialsLocked(
    const tunnel::v1::CredentialsFile& file) {
  // Store first, sweep second: a Connect that registers after the sweep
  // checks its token against the new store (TunnelServiceImpl).
  credentials_.Replace(file);
  registry_.ReserveAgentSlugs(credentials_.AgentIds());
  ReloadResult r;
  r.live_tokens = credentials_.LiveTokenCount();
  core_metrics_.live_tokens->Set(static_cast<int64_t>(r.live_tokens));
  r.sessions_closed = service_->CloseSessionsWithoutLiveToken();
  core_metrics_.credential_reloads_ok->Increment();
  // The other replicas hear of new revocations at once.
  if (cluster_ != nullptr) cluster_->Changed();
  common::LogEvent(common::LogLevel::kInfo, "credentials_reloaded")
      .Str("file", options_.credentials.has_value() ? std::string("(in memory)")
                                                    : options_.credentials_path)
      .Int("live_tokens", static_cast<int64_t>(r.live_tokens))
      .Int("sessions_closed", static_cast<int64_t>(r.sessions_closed));
  return r;
}

void Gateway::HeartbeatLoop() {
  const absl::Duration interval = options_.service.heartbeat_interval;
  uint64_t nonce = 0;
  while (!stop_heartbeats_.WaitForNotificationWithTimeout(interval)) {
    absl::Time now = absl::Now();
    for (const auto& s : registry_.Sessions()) {
      if (now - s->last_seen() > options_.heartbeat_timeout) {
        TUNNEL_LOG(WARNING) << "agent " << s->agent_id() << " silent for "
                            << absl::FormatDuration(absl::Trunc(
                                   now - s->last_seen(), absl::Seconds(1)))
                            << "; closing its session";
        s->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "no heartbeat from the agent"),
                 false);
      } else {
        s->SendPing(++nonce);
      }
    }
    // Tokens that expired: checked here, so an expiry takes effect within
    // one heartbeat interval.
    service_->ExpireSessions(now, options_.drain_timeout);
    // Sessions replaced by a reconnect that had requests in flight.
    service_->CloseReplacedSessions(now, options_.drain_timeout);
  }
}

bool Gateway::Drain(absl::Duration timeout) {
  // First, so health checkers stop sending agents here before anything else
  // changes; watchers (Health.Watch) hear it at once.
  // The admin port's health too (its API keeps answering while we drain),
  // first: whoever sees the agent port change sees the admin port changed.
  for (HealthService* health : {admin_health_.get(), health_.get()}) {
    if (health != nullptr) health->SetServing(false);
  }
  draining_ = true;
  front_->SetDraining(options_.drain_retry_after);
  for (const auto& s : registry_.Sessions()) {
    s->SendGoAway("the gateway is shutting down", options_.drain_retry_after);
  }
  absl::Time deadline = absl::Now() + timeout;
  // Requests in flight finish on their own threads; look every 20 ms.
  while (registry_.stream_count() > 0) {
    if (absl::Now() >= deadline) {
      TUNNEL_LOG(WARNING) << "drain timeout: " << registry_.stream_count()
                          << " request(s) still in flight are cut";
      return false;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

void Gateway::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  stop_heartbeats_.Notify();
  if (heartbeats_.joinable()) heartbeats_.join();
  // The other replicas stop sending visitors here first.
  if (cluster_ != nullptr) cluster_->Stop();
  if (front_ != nullptr) front_->StopAccepting();
  // End every session cleanly first: what is queued (a GoAway, the end of a
  // response) is still written, then the call finishes.
  for (const auto& s : registry_.Sessions()) {
    s->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the gateway is shutting down"),
             /*drain=*/true);
  }
  // Watchers end first: the servers' shutdowns wait for every handler.
  for (HealthService* health : {admin_health_.get(), health_.get()}) {
    if (health != nullptr) health->Shutdown();
  }
  if (grpc_server_ != nullptr) {
    // Cancels agent calls; their OnDone fails every stream, which releases
    // front-door workers waiting on agents.
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           std::chrono::seconds(1));
  }
  if (front_ != nullptr) front_->Stop();
  if (grpc_server_ != nullptr) grpc_server_->Wait();
  if (service_ != nullptr) service_->StopServing();
  if (admin_server_ != nullptr) {
    admin_server_->Shutdown(std::chrono::system_clock::now() +
                            std::chrono::seconds(1));
    admin_server_->Wait();
  }
  // Last: /healthz answers "draining" until the very end.
  if (ops_ != nullptr) ops_->Stop();
}

}  // namespace tunnel::server
