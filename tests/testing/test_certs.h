// Certificates made at test time: a CA (EC P-256, self-signed) that issues
// leaf certificates valid for localhost and 127.0.0.1, for both server and
// client authentication. Nothing is checked in.
#ifndef TUNNEL_TESTS_TESTING_TEST_CERTS_H_
#define TUNNEL_TESTS_TESTING_TEST_CERTS_H_

#include <string>

#include "common/tls.h"

namespace tunnel::testing {

class TestCa {
 public:
  explicit TestCa(const std::string& name);
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  const std::string& cert_pem() const { return cert_pem_; }
  // A new key and a certificate for it, signed by this CA: CN
  // `common_name`, SAN DNS:localhost and IP:127.0.0.1, valid for a day.
  common::CertAndKey Issue(const std::string& common_name) const;

 private:
  void* key_ = nullptr;   // EVP_PKEY
  void* cert_ = nullptr;  // X509
  std::string cert_pem_;
};

// A directory that is removed with the object.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  // Writes `content` to path()/name; returns the file's path.
  std::string Write(const std::string& name, const std::string& content) const;

 private:
  std::string path_;
};

}  // namespace tunnel::testing

#endif  // TUNNEL_TESTS_TESTING_TEST_CERTS_H_
