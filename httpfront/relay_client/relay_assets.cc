#include "httpfront/relay_client/relay_assets.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace tunnel::httpfront {

std::string RelayScriptIntegrity() {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  const absl::string_view js = RelayJs();
  SHA256(reinterpret_cast<const unsigned char*>(js.data()), js.size(), digest);
  // Standard base64 with padding, as SRI wants it.
  unsigned char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
  EVP_EncodeBlock(b64, digest, SHA256_DIGEST_LENGTH);
  return absl::StrCat("sha256-", reinterpret_cast<const char*>(b64));
}

std::string RelayIndexPage() {
  return absl::StrReplaceAll(
      RelayIndexHtml(), {{"{{RELAY_JS_INTEGRITY}}", RelayScriptIntegrity()}});
}

}  // namespace tunnel::httpfront
