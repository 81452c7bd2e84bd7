// libFuzzer target: the gateway's parser and verifier of an agent's auth
// metadata (common/hmac_auth AuthVerifier::Verify) against a fixed
// credential store and clock, so seeds with a valid signature reach the
// nonce cache. Invariants: a verified call names the credential's agent;
// the same metadata never verifies twice (replay); a refusal's message
// never shows the secret unless the input itself held it.
//
// Input: lines "key=value" (values may hold any byte but '\n'); keys are
// the x-tunnel-* metadata names or anything else.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/hmac_auth.h"
#include "tunnel/v1/credentials.pb.h"

namespace {

// Must match tests/fuzz/make_corpus.py.
constexpr char kAgent[] = "cam-01";
constexpr char kToken[] = "tok-fuzz";
constexpr char kSecret[] = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYiE";
constexpr int64_t kNow = 1700000000;

tunnel::common::CredentialStore* Store() {
  static auto* store = [] {
    tunnel::v1::CredentialsFile file;
    auto* c = file.add_credentials();
    c->set_agent_id(kAgent);
    c->set_token_id(kToken);
    c->set_secret(kSecret);
    auto* revoked = file.add_credentials();
    revoked->set_agent_id("old-01");
    revoked->set_token_id("tok-revoked");
    revoked->set_secret(kSecret);
    revoked->set_revoked(true);
    return new tunnel::common::CredentialStore(file);
  }();
  return store;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, std::string> md;
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  for (absl::string_view line : absl::StrSplit(in, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits('=', 1));
    md.emplace(std::string(kv.first), std::string(kv.second));
  }
  // A fresh verifier per input: the nonce cache must not leak between runs.
  tunnel::common::AuthVerifier verifier(Store(), absl::Minutes(5), 4);
  const absl::Time now = absl::FromUnixSeconds(kNow);
  tunnel::common::AuthResult first = verifier.Verify(md, now);
  if (first.ok) {
    if (first.agent_id != kAgent || first.token_id != kToken) {
      __builtin_trap();
    }
    tunnel::common::AuthResult again = verifier.Verify(md, now);
    if (again.ok || again.failure != tunnel::common::AuthFailure::kReplay) {
      __builtin_trap();
    }
  } else if (first.message.find(kSecret) != std::string::npos &&
             in.find(kSecret) == absl::string_view::npos) {
    // Messages quote what the agent sent (bounded), never the store's
    // secret; only an input that holds the secret text may see it echoed.
    __builtin_trap();
  }
  return 0;
}
