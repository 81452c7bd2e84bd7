#include "tests/testing/test_certs.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace tunnel::testing {
namespace {

std::atomic<long> next_serial{1000};

std::string ToPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  return pem;
}

std::string ToPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  return pem;
}

void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << "extension " << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, issued by `issuer` (null: itself).
X509* NewCert(EVP_PKEY* key, const std::string& cn, X509* issuer) {
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), next_serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()),
                             -1, -1, 0);
  X509_set_issuer_name(
      x, issuer != nullptr ? X509_get_subject_name(issuer) : name);
  return x;
}

}  // namespace

TestCa::TestCa(const std::string& name) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  X509* x = NewCert(key, name, nullptr);
  AddExt(x, x, NID_basic_constraints, "critical,CA:TRUE");
  AddExt(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExt(x, x, NID_subject_key_identifier, "hash");
  X509_sign(x, key, EVP_sha256());
  key_ = key;
  cert_ = x;
  cert_pem_ = ToPem(x);
}

TestCa::~TestCa() {
  X509_free(static_cast<X509*>(cert_));
  EVP_PKEY_free(static_cast<EVP_PKEY*>(key_));
}

common::CertAndKey TestCa::Issue(const std::string& common_name) const {
  X509* ca = static_cast<X509*>(cert_);
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  X509* x = NewCert(key, common_name, ca);
  AddExt(x, ca, NID_basic_constraints, "critical,CA:FALSE");
  AddExt(x, ca, NID_key_usage, "critical,digitalSignature");
  AddExt(x, ca, NID_ext_key_usage, "serverAuth,clientAuth");
  AddExt(x, ca, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  AddExt(x, ca, NID_authority_key_identifier, "keyid");
  X509_sign(x, static_cast<EVP_PKEY*>(key_), EVP_sha256());
  common::CertAndKey out{ToPem(x), ToPem(key)};
  X509_free(x);
  EVP_PKEY_free(key);
  return out;
}

TempDir::TempDir() {
  std::string tmpl =
      (std::filesystem::temp_directory_path() / "tunnel-tls.XXXXXX").string();
  if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  EXPECT_FALSE(path_.empty()) << "mkdtemp failed";
}

TempDir::~TempDir() {
  std::error_code ignored;
  if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::Write(const std::string& name,
                           const std::string& content) const {
  std::string p = path_ + "/" + name;
  std::ofstream(p, std::ios::binary) << content;
  return p;
}

}  // namespace tunnel::testing
