#include "agent/tls_probe.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/socket_io.h"

namespace tunnel::agent {
namespace {

bool IsIpAddress(const std::string& host) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// A TLS alert from the gateway about our (missing) client certificate.
bool IsClientCertAlert(int reason) {
  switch (reason) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
      return true;
    default:
      return false;
  }
}

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};

}  // namespace

bool SplitGateway(const std::string& addr, std::string* host, int* port) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos) return false;
  std::string h = addr.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  }
  *host = h;
  return absl::SimpleAtoi(addr.substr(colon + 1), port);
}

absl::Status ProbeTls(const TlsProbeOptions& o) {
  const std::string prefix =
      absl::StrCat("TLS handshake with ", o.gateway, " failed: ");
  std::string host;
  int port = 0;
  if (!SplitGateway(o.gateway, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gateway address \"", o.gateway, "\" needs the form HOST:PORT"));
  }
  const std::string name = o.server_name.empty() ? host : o.server_name;
  absl::StatusOr<common::SslCtxPtr> ctx =
      common::NewClientContext(o.roots_pem, o.client);
  if (!ctx.ok()) return ctx.status();
  absl::StatusOr<int> fd = common::ConnectTcp(host, port, o.timeout);
  if (!fd.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot reach the gateway at ",
                                               o.gateway, ": ",
                                               fd.status().message()));
  }
  timeval tv = absl::ToTimeval(std::max(o.timeout, absl::Milliseconds(1)));
  ::setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx->get()));
  SSL_set_fd(ssl.get(), *fd);
  static const unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_set_alpn_protos(ssl.get(), kAlpn, sizeof(kAlpn));
  // Whether the gateway asked for a client certificate (CertificateRequest).
  // gRPC's server closes without an alert when it refuses one, so this is
  // how a refusal is told from other failures.
  bool cert_requested = false;
  SSL_set_cert_cb(
      ssl.get(),
      [](SSL*, void* arg) {
        *static_cast<bool*>(arg) = true;
        return 1;
      },
      &cert_requested);
  if (IsIpAddress(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), name.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), name.c_str());
    SSL_set1_host(ssl.get(), name.c_str());
  }

  // Classifies a failed handshake or first read.
  auto diagnose = [&](int ret) -> absl::Status {
    int err = SSL_get_error(ssl.get(), ret);
    long verify = SSL_get_verify_result(ssl.get());
    unsigned long e = ERR_peek_last_error();
    int reason = ERR_GET_REASON(e);
    std::string detail = common::DrainSslErrors();
    if (verify != X509_V_OK) {
      const char* why = X509_verify_cert_error_string(verify);
      switch (verify) {
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
          return absl::FailedPreconditionError(absl::StrCat(
              prefix, "its certificate is not valid for \"", name,
              "\" (use --tls-server-name to check the name the certificate "
              "has)"));
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
          return absl::FailedPreconditionError(
              absl::StrCat(prefix, "its certificate is not valid now (", why,
                           "; check the gateway's certificate and our clock)"));
        default:
          return absl::FailedPreconditionError(
              absl::StrCat(prefix, "certificate not trusted (", why,
                           "; use --ca FILE to trust the CA that signed it)"));
      }
    }
    if ((ERR_GET_LIB(e) == ERR_LIB_SSL && IsClientCertAlert(reason)) ||
        cert_requested) {
      if (o.client.cert_pem.empty()) {
        return absl::PermissionDeniedError(
            absl::StrCat(prefix,
                         "the gateway requires a client certificate (use "
                         "--client-cert FILE --client-key FILE)"));
      }
      return absl::PermissionDeniedError(absl::StrCat(
          prefix,
          "the gateway refused our client certificate (is it signed by a "
          "CA the gateway trusts with --client-ca, and valid now?)"));
    }
    if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN ||
        reason == SSL_R_WRONG_VERSION_NUMBER ||
        reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
        reason == SSL_R_PACKET_LENGTH_TOO_LONG) {
      return absl::UnavailableError(
          absl::StrCat(prefix,
                       "the gateway did not answer in TLS (if it runs with "
                       "--insecure, pass --insecure too)"));
    }
    return absl::UnavailableError(
        absl::StrCat(prefix, detail.empty() ? "unknown error" : detail));
  };

  ERR_clear_error();
  int r = SSL_connect(ssl.get());
  absl::Status result;
  if (r != 1) {
    result = diagnose(r);
  } else {
    // TLS 1.3: the gateway checks our certificate after the client side
    // finished; a refusal arrives on the first read (an alert, or from gRPC
    // just the end of the connection). A gateway that accepts sends its
    // HTTP/2 settings first.
    char c;
    size_t got = 0;
    ERR_clear_error();
    r = SSL_peek_ex(ssl.get(), &c, 1, &got);
    if (r != 1) {
      int err = SSL_get_error(ssl.get(), r);
      unsigned long e = ERR_peek_last_error();
      if (cert_requested ||
          (err == SSL_ERROR_SSL && ERR_GET_LIB(e) == ERR_LIB_SSL &&
           IsClientCertAlert(ERR_GET_REASON(e)))) {
        result = diagnose(r);
      }
    }
    ERR_clear_error();
    SSL_shutdown(ssl.get());
  }
  ERR_clear_error();
  ssl.reset();
  ::close(*fd);
  return result;
}

}  // namespace tunnel::agent
