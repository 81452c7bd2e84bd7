#include "common/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tunnel::common {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in `pem`, added to `store` (or counted when null).
int ForEachCert(const std::string& pem, const std::function<void(X509*)>& fn) {
  BioPtr bio = MemBio(pem);
  int n = 0;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    fn(x);
    X509_free(x);
    ++n;
  }
  ERR_clear_error();  // the read that ends the loop leaves "no start line"
  return n;
}

}  // namespace

void SslCtxDeleter::operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }

std::string DrainSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

absl::StatusOr<std::string> ReadPemFile(absl::string_view what,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, ": cannot read the file"));
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::Status CheckCertificates(absl::string_view what, const std::string& path,
                               const std::string& pem) {
  if (ForEachCert(pem, [](X509*) {}) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path,
                     ": no PEM certificate in it (\"-----BEGIN "
                     "CERTIFICATE-----\")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CertAndKey> LoadCertAndKey(absl::string_view cert_flag,
                                          const std::string& cert_path,
                                          absl::string_view key_flag,
                                          const std::string& key_path) {
  CertAndKey pair;
  absl::StatusOr<std::string> cert = ReadPemFile(cert_flag, cert_path);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(key_flag, key_path);
  if (!key.ok()) return key.status();
  BioPtr cert_bio = MemBio(*cert);
  X509* leaf = PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr);
  if (leaf == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        cert_flag, " ", cert_path,
        ": no PEM certificate in it (\"-----BEGIN CERTIFICATE-----\")"));
  }
  BioPtr key_bio = MemBio(*key);
  EVP_PKEY* pkey =
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr);
  if (pkey == nullptr) {
    ERR_clear_error();
    X509_free(leaf);
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, " ", key_path,
                     ": no unencrypted PEM private key in it (\"-----BEGIN "
                     "PRIVATE KEY-----\")"));
  }
  bool match = X509_check_private_key(leaf, pkey) == 1;
  ERR_clear_error();
  X509_free(leaf);
  EVP_PKEY_free(pkey);
  if (!match) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, " ", key_path,
                     " is not the private key of the certificate in ",
                     cert_flag, " ", cert_path));
  }
  pair.cert_pem = *std::move(cert);
  pair.key_pem = *std::move(key);
  return pair;
}

std::string SystemRootsPem() {
  const char* env = std::getenv(X509_get_default_cert_file_env());
  std::string path =
      env != nullptr && *env != '\0' ? env : X509_get_default_cert_file();
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

namespace {

absl::Status UseCertAndKey(SSL_CTX* ctx, const CertAndKey& pair) {
  BioPtr cert_bio = MemBio(pair.cert_pem);
  X509* leaf = PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr);
  if (leaf == nullptr || SSL_CTX_use_certificate(ctx, leaf) != 1) {
    X509_free(leaf);
    return absl::InvalidArgumentError(
        absl::StrCat("unusable certificate: ", DrainSslErrors()));
  }
  X509_free(leaf);
  // The rest of the file is the chain sent with it.
  while (X509* x =
             PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, x) != 1) X509_free(x);
  }
  ERR_clear_error();
  BioPtr key_bio = MemBio(pair.key_pem);
  EVP_PKEY* pkey =
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr);
  bool ok = pkey != nullptr && SSL_CTX_use_PrivateKey(ctx, pkey) == 1 &&
            SSL_CTX_check_private_key(ctx) == 1;
  EVP_PKEY_free(pkey);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("unusable private key: ", DrainSslErrors()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SslCtxPtr> NewServerContext(const CertAndKey& pair) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return absl::InternalError(DrainSslErrors());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  // A bare FIN ends the stream like close_notify: HTTP bodies are framed
  // (Content-Length, chunked), and plain TCP visitors are treated alike.
  SSL_CTX_set_options(ctx.get(),
                      SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // Writes may be retried with a moved buffer after WANT_WRITE. Idle
  // connections give their read and write buffers (about 34 KiB) back: a
  // gateway holds thousands of idle visitors.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_RELEASE_BUFFERS);
  if (absl::Status s = UseCertAndKey(ctx.get(), pair); !s.ok()) return s;
  return ctx;
}

absl::StatusOr<SslCtxPtr> NewClientContext(const std::string& roots_pem,
                                           const CertAndKey& client) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) return absl::InternalError(DrainSslErrors());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
  ForEachCert(roots_pem, [store](X509* x) { X509_STORE_add_cert(store, x); });
  ERR_clear_error();  // duplicates in a bundle are not an error
  if (!client.cert_pem.empty()) {
    if (absl::Status s = UseCertAndKey(ctx.get(), client); !s.ok()) return s;
  }
  return ctx;
}

}  // namespace tunnel::common
