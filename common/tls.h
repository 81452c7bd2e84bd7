// TLS material shared by the gateway and the agent: reading and checking PEM
// files so that a wrong file is reported by name before any listener or
// channel exists, OpenSSL contexts built from PEM text, and the system's
// root certificates.
//
// Thread-safe (stateless); the contexts are OpenSSL's (SSL_CTX is safe to
// share once set up).
#ifndef TUNNEL_COMMON_TLS_H_
#define TUNNEL_COMMON_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace tunnel::common {

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const;
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

// A certificate chain and its private key, as PEM text.
struct CertAndKey {
  std::string cert_pem;
  std::string key_pem;
};

// Reads `path` (named `what` in errors, e.g. "--tls-cert"). Errors name the
// flag and the file.
absl::StatusOr<std::string> ReadPemFile(absl::string_view what,
                                        const std::string& path);

// Checks that `pem` holds at least one certificate.
absl::Status CheckCertificates(absl::string_view what, const std::string& path,
                               const std::string& pem);

// Reads a certificate chain and its key and checks that they parse and
// belong together. `cert_flag`/`key_flag` name the flags in errors.
absl::StatusOr<CertAndKey> LoadCertAndKey(absl::string_view cert_flag,
                                          const std::string& cert_path,
                                          absl::string_view key_flag,
                                          const std::string& key_path);

// The system's trusted roots (OpenSSL's default file, SSL_CERT_FILE when
// set), as PEM; empty if there is none.
std::string SystemRootsPem();

// A TLS server context (TLS 1.2+, no renegotiation) for `pair`.
absl::StatusOr<SslCtxPtr> NewServerContext(const CertAndKey& pair);

// A TLS client context (TLS 1.2+) that verifies the peer against the roots in
// `roots_pem` and presents `client` if it has a certificate.
absl::StatusOr<SslCtxPtr> NewClientContext(const std::string& roots_pem,
                                           const CertAndKey& client);

// OpenSSL's error queue as text (emptied), for messages.
std::string DrainSslErrors();

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_TLS_H_
