// TLS on both gateway listeners and mTLS for agents, with real parts on
// loopback and certificates made at test time (tests/testing/test_certs.h):
// the agent verifies the gateway against a private CA, the gateway may
// require agent certificates, and visitors speak HTTPS to the front door.
#include "common/tls.h"

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/socket_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_certs.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kMiB = 1024 * 1024;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gateway_cert_ = ca_.Issue("gateway");
    cert_file_ = dir_.Write("gateway.crt", gateway_cert_.cert_pem);
    key_file_ = dir_.Write("gateway.key", gateway_cert_.key_pem);
    ca_file_ = dir_.Write("ca.crt", ca_.cert_pem());
    auto& s = svc_.server();
    s.Get("/hello", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content(
          absl::StrCat("hello ", req.get_header_value("X-Forwarded-Proto")),
          "text/plain");
    });
    s.Get("/download", ServePatternDownload);
    svc_.Start();
  }

  // A gateway with TLS on both listeners; `client_ca` (PEM) requires agent
  // certificates.
  void StartTlsGateway(TunnelHarness& h, const std::string& client_ca = "") {
    std::string client_ca_file =
        client_ca.empty() ? "" : dir_.Write("client-ca.crt", client_ca);
    h.StartGateway([&](server::GatewayOptions& o) {
      o.tls.cert_file = cert_file_;
      o.tls.key_file = key_file_;
      o.tls.client_ca_file = client_ca_file;
    });
  }

  // Agent options for TLS, trusting our CA, with a short connect timeout.
  agent::AgentOptions TlsAgent(TunnelHarness& h) {
    agent::AgentOptions o = h.AgentOptionsFor("cam-01", {svc_.url()});
    o.gateway = absl::StrCat("127.0.0.1:", h.gateway().grpc_port());
    o.insecure = false;
    o.ca_pem = ca_.cert_pem();
    o.connect_timeout = absl::Seconds(5);
    return o;
  }

  // An HTTPS visitor that verifies the front door against our CA.
  std::unique_ptr<httplib::SSLClient> Visitor(TunnelHarness& h) {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1",
                                                  h.gateway().http_port());
    c->set_ca_cert_path(ca_file_);
    c->enable_server_certificate_verification(true);
    c->set_read_timeout(std::chrono::seconds(60));
    return c;
  }

  TestCa ca_{"tunnel test CA"};
  TempDir dir_;
  common::CertAndKey gateway_cert_;
  std::string cert_file_, key_file_, ca_file_;
  LocalService svc_;
};

TEST_F(TlsTest, AgentTrustingTheCaServesHttpsVisitors) {
  TunnelHarness h;
  StartTlsGateway(h);
  RunningAgent* a = h.StartAgent(TlsAgent(h));
  ASSERT_EQ(a->agent().tunnels().size(), 1u);
  // Public URLs say https when the gateway runs TLS.
  EXPECT_THAT(a->agent().tunnels()[0].url(), StartsWith("https://"));
  EXPECT_THAT(a->agent().tunnels()[0].path_url(), StartsWith("https://"));
  auto r = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello https");
}

TEST_F(TlsTest, PlainHttpVisitorGetsNoAnswerFromTheTlsFrontDoor) {
  TunnelHarness h;
  StartTlsGateway(h);
  h.StartAgent(TlsAgent(h));
  auto plain = h.Visitor();
  plain->set_read_timeout(std::chrono::seconds(5));
  auto r = plain->Get(TunnelHarness::Path("cam-01", "/hello"));
  EXPECT_FALSE(r && r->status == 200);
}

TEST_F(TlsTest, Download16MiBOverHttpsHasMatchingSha256) {
  TunnelHarness h;
  StartTlsGateway(h);
  h.StartAgent(TlsAgent(h));
  const uint64_t size = 16 * kMiB;
  Sha256 got;
  uint64_t n = 0;
  auto r = Visitor(h)->Get(
      TunnelHarness::Path("cam-01",
                          absl::StrCat("/download?size=", size, "&seed=5")),
      [&](const char* d, size_t len) {
        got.Update(d, len);
        n += len;
        return true;
      });
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(n, size);
  EXPECT_EQ(got.HexDigest(), PatternSha256(5, size));
}

TEST_F(TlsTest, AgentWithoutTheCaStopsSayingTheCertificateIsNotTrusted) {
  TunnelHarness h;
  StartTlsGateway(h);
  agent::AgentOptions o = TlsAgent(h);
  o.ca_pem.clear();  // the system's roots do not know our CA
  RunningAgent a(o);
  absl::Status s = a.WaitForExit(absl::Seconds(30));
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("certificate not trusted"));
  EXPECT_THAT(s.message(), HasSubstr("--ca"));
  EXPECT_EQ(h.gateway().registry().session_count(), 0u);
}

TEST_F(TlsTest, AgentCheckingAnotherNameStopsSayingSo) {
  TunnelHarness h;
  StartTlsGateway(h);
  agent::AgentOptions o = TlsAgent(h);
  o.tls_server_name = "gateway.example.com";
  RunningAgent a(o);
  absl::Status s = a.WaitForExit(absl::Seconds(30));
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("not valid for \"gateway.example.com\""));
}

TEST_F(TlsTest, TlsServerNameOverrideIsChecked) {
  TunnelHarness h;
  StartTlsGateway(h);
  agent::AgentOptions o = TlsAgent(h);
  o.tls_server_name = "localhost";  // in the certificate; not the address
  h.StartAgent(o);
  auto r = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
}

TEST_F(TlsTest, MtlsAgentWithoutClientCertificateIsRefused) {
  TestCa agents_ca("agents CA");
  TunnelHarness h;
  StartTlsGateway(h, agents_ca.cert_pem());
  RunningAgent a(TlsAgent(h));
  absl::Status s = a.WaitForExit(absl::Seconds(30));
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("requires a client certificate"));
  EXPECT_EQ(h.gateway().registry().session_count(), 0u);
}

TEST_F(TlsTest, MtlsAgentWithCertificateFromTheClientCaIsAccepted) {
  TestCa agents_ca("agents CA");
  TunnelHarness h;
  StartTlsGateway(h, agents_ca.cert_pem());
  agent::AgentOptions o = TlsAgent(h);
  common::CertAndKey mine = agents_ca.Issue("cam-01");
  o.client_cert_pem = mine.cert_pem;
  o.client_key_pem = mine.key_pem;
  h.StartAgent(o);
  auto r = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->body, "hello https");
}

TEST_F(TlsTest, MtlsAgentWithCertificateFromAnotherCaIsRefused) {
  TestCa agents_ca("agents CA");
  TestCa other_ca("some other CA");
  TunnelHarness h;
  StartTlsGateway(h, agents_ca.cert_pem());
  agent::AgentOptions o = TlsAgent(h);
  common::CertAndKey theirs = other_ca.Issue("cam-01");
  o.client_cert_pem = theirs.cert_pem;
  o.client_key_pem = theirs.key_pem;
  RunningAgent a(o);
  absl::Status s = a.WaitForExit(absl::Seconds(30));
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("refused our client certificate"));
  EXPECT_EQ(h.gateway().registry().session_count(), 0u);
}

TEST_F(TlsTest, MtlsStillChecksTheHmacCredentials) {
  TestCa agents_ca("agents CA");
  TunnelHarness h;
  StartTlsGateway(h, agents_ca.cert_pem());
  agent::AgentOptions o = TlsAgent(h);
  common::CertAndKey mine = agents_ca.Issue("cam-01");
  o.client_cert_pem = mine.cert_pem;
  o.client_key_pem = mine.key_pem;
  o.secret = std::string(43, 'A');  // valid base64url, wrong secret
  RunningAgent a(o);
  absl::Status s = a.WaitForExit(absl::Seconds(30));
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
}

TEST_F(TlsTest, WrongKeyFileIsNamed) {
  TunnelHarness h;
  common::CertAndKey other = ca_.Issue("other");
  std::string other_key = dir_.Write("other.key", other.key_pem);
  server::GatewayOptions o;
  o.grpc_addr = "127.0.0.1:0";
  o.http_addr = "127.0.0.1:0";
  o.credentials = h.credentials();
  o.tls.cert_file = cert_file_;
  o.tls.key_file = other_key;
  auto gw = server::Gateway::Start(o);
  ASSERT_FALSE(gw.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(gw.status())) << gw.status();
  EXPECT_THAT(gw.status().message(), HasSubstr(other_key));
  EXPECT_THAT(gw.status().message(), HasSubstr("not the private key"));

  o.tls.key_file = cert_file_;  // a certificate where the key should be
  gw = server::Gateway::Start(o);
  ASSERT_FALSE(gw.ok());
  EXPECT_THAT(gw.status().message(), HasSubstr("--tls-key " + cert_file_));

  o.tls.key_file = key_file_;
  o.tls.cert_file = dir_.path() + "/missing.crt";
  gw = server::Gateway::Start(o);
  ASSERT_FALSE(gw.ok());
  EXPECT_THAT(gw.status().message(), HasSubstr("missing.crt"));

  o.tls.cert_file = dir_.Write("garbage.crt", "not a certificate\n");
  gw = server::Gateway::Start(o);
  ASSERT_FALSE(gw.ok());
  EXPECT_THAT(gw.status().message(), HasSubstr("garbage.crt"));
}

// A raw TLS visitor: a request whose answer never comes, then close_notify
// and FIN. The front door must see it gone (the bytes of close_notify on
// the socket are not a visitor still there) and cancel at the agent.
TEST_F(TlsTest, VisitorClosingTlsWhileWaitingCancelsTheLocalRequest) {
  // A local service that takes the request and never answers; it reports
  // when the agent closes its connection.
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(lfd, 8), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  absl::Notification request_seen, closed_by_agent;
  std::thread service([&] {
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, 20000) <= 0) return;
    int c = ::accept(lfd, nullptr, nullptr);
    char buf[4096];
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (absl::Now() < give_up) {
      ssize_t n = common::ReadSome(c, buf, sizeof(buf), absl::Seconds(1));
      if (n > 0) request_seen.Notify();
      if (n == 0) {
        closed_by_agent.Notify();
        break;
      }
    }
    ::close(c);
  });

  TunnelHarness h;
  StartTlsGateway(h);
  agent::AgentOptions o = TlsAgent(h);
  o.tunnels[0].port = port;
  h.StartAgent(o);

  absl::StatusOr<common::SslCtxPtr> ctx =
      common::NewClientContext(ca_.cert_pem(), {});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  absl::StatusOr<int> fd = common::ConnectTcp(
      "127.0.0.1", h.gateway().http_port(), absl::Seconds(5));
  ASSERT_TRUE(fd.ok()) << fd.status();
  timeval tv{5, 0};
  ::setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  SSL* ssl = SSL_new(ctx->get());
  SSL_set_fd(ssl, *fd);
  SSL_set1_host(ssl, "localhost");
  ASSERT_EQ(SSL_connect(ssl), 1);
  std::string req = "GET /t/cam-01/never HTTP/1.1\r\nHost: localhost\r\n\r\n";
  ASSERT_EQ(SSL_write(ssl, req.data(), static_cast<int>(req.size())),
            static_cast<int>(req.size()));
  EXPECT_TRUE(request_seen.WaitForNotificationWithTimeout(absl::Seconds(10)));
  SSL_shutdown(ssl);  // close_notify
  ::shutdown(*fd, SHUT_WR);
  // Well before the gateway's 30 s response timeout.
  EXPECT_TRUE(closed_by_agent.WaitForNotificationWithTimeout(absl::Seconds(5)))
      << "the local request was not cancelled";
  SSL_free(ssl);
  ::close(*fd);
  service.join();
  ::close(lfd);
}

// A connection that never finishes its TLS handshake (slowloris on TLS) is
// closed at --tls-handshake-timeout while HTTPS visitors are served.
TEST_F(TlsTest, StalledHandshakesAreClosedAtTheirTimeout) {
  TunnelHarness h;
  h.StartGateway([&](server::GatewayOptions& o) {
    o.tls.cert_file = cert_file_;
    o.tls.key_file = key_file_;
    o.front.connection.tls_handshake_timeout = absl::Milliseconds(300);
  });
  h.StartAgent(TlsAgent(h));
  // TCP only, and a ClientHello cut short.
  int silent = ConnectLoopback(h.gateway().http_port());
  int partial = ConnectLoopback(h.gateway().http_port());
  ASSERT_GE(silent, 0);
  ASSERT_GE(partial, 0);
  const char hello_start[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  ASSERT_GT(::send(partial, hello_start, sizeof(hello_start) - 1, MSG_NOSIGNAL),
            0);
  auto r = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  for (int fd : {silent, partial}) {
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[256];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
    }
    EXPECT_EQ(n, 0) << "closed by the gateway, not timed out here";
    ::close(fd);
  }
}

// Over a per-IP connection limit an HTTPS connection is closed before the
// handshake (an answer would cost one); it is counted all the same.
TEST_F(TlsTest, ConnectionOverThePerIpLimitIsClosedWithoutAHandshake) {
  TunnelHarness h;
  h.StartGateway([&](server::GatewayOptions& o) {
    o.tls.cert_file = cert_file_;
    o.tls.key_file = key_file_;
    o.front.connection.connections_per_ip_per_minute = 1;
  });
  h.StartAgent(TlsAgent(h));
  auto first = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(first) << httplib::to_string(first.error());
  EXPECT_EQ(first->status, 200);
  auto second = Visitor(h)->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), httplib::Error::SSLConnection);
  EXPECT_THAT(h.gateway().metrics().Render(),
              HasSubstr("tunnel_limit_rejections_total{limit=\"client_"
                        "connections_per_minute\"} 1\n"));
}

}  // namespace
}  // namespace tunnel::testing
