// The front door's access gate for tunnels with a visitor access code
// (AccessGate), and its pieces: the signed cookie a correct code earns, the
// per-(client IP, tunnel) limit on wrong codes, and the parsing of where a
// visitor may present a code (a form field, `?code=`, X-Tunnel-Access-Code,
// the cookie).
#ifndef TUNNEL_HTTPFRONT_ACCESS_GATE_H_
#define TUNNEL_HTTPFRONT_ACCESS_GATE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/attempt_limiter.h"
#include "httpfront/blocking_pool.h"
#include "httpfront/request_log.h"
#include "httpfront/routing.h"
#include "httplib.h"
#include "server/tunnel_router.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::httpfront {

// Name of the cookie that admits a visitor to a gated tunnel.
inline constexpr char kAccessCookieName[] = "tunnel_access";

// Issues and checks access cookies: "<expiry unix s>.<base64url HMAC>", the
// HMAC-SHA256 (with a random key made at construction, so a gateway restart
// invalidates every cookie) over the expiry, the tunnel slug and the code's
// hash, so a cookie opens one tunnel only and dies when its code changes.
// Thread-safe (immutable after construction).
class AccessCookieSigner {
 public:
  // `key` empty: a random one (cookies die with the process); the replicas
  // of a gateway cluster share one, so a cookie earned at one passes all.
  explicit AccessCookieSigner(std::string key = "");
  std::string Issue(absl::string_view slug,
                    const tunnel::v1::AccessCodeHash& code,
                    absl::Time expires) const;
  // Cheap: one HMAC, compared in constant time.
  bool Valid(absl::string_view cookie, absl::string_view slug,
             const tunnel::v1::AccessCodeHash& code, absl::Time now) const;

 private:
  std::string Mac(int64_t expires, absl::string_view slug,
                  const tunnel::v1::AccessCodeHash& code) const;
  const std::string key_;
};

// Basic-auth credentials the gate has verified, so an API client that sends
// them with every request pays one HMAC per request, not one slow hash. An
// entry's key is an HMAC (random key made at construction) of the tunnel,
// its user set's id and the whole Authorization value: no password is kept,
// and a changed user set (an agent reconnecting with other users) misses.
// Bounded: at `capacity`, expired entries go first, then the one nearest
// its expiry. Thread-safe.
class VerifiedCredentials {
 public:
  VerifiedCredentials(absl::Duration ttl, size_t capacity);
  bool Contains(absl::string_view slug, uint64_t set_id,
                absl::string_view authorization, absl::Time now);
  void Add(absl::string_view slug, uint64_t set_id,
           absl::string_view authorization, absl::Time now);
  size_t size() const;

 private:
  std::string Key(absl::string_view slug, uint64_t set_id,
                  absl::string_view authorization) const;
  const absl::Duration ttl_;
  const size_t capacity_;
  const std::string key_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> expiry_ ABSL_GUARDED_BY(mu_);
};

// The user and password of an `Authorization: Basic` value (the scheme
// case-insensitive, standard base64, split at the first ':'). False if it
// is not one.
bool ParseBasicAuthorization(absl::string_view value, std::string* user,
                             std::string* password);

// Wrong codes per (client IP, slug) key: the shared limiter in common.
using common::AttemptLimiter;

// Removes every `name` parameter from the query of `target`; `*value` gets
// the last one's value (percent-decoded, '+' as space). False if there was
// none.
bool TakeQueryParam(std::string* target, absl::string_view name,
                    std::string* value);
// Decodes application/x-www-form-urlencoded `body` and returns field `name`.
bool FormField(absl::string_view body, absl::string_view name,
               std::string* value);
// The Cookie header without the cookies called `name` ("" if nothing else
// is left); `*values` gets their values in order.
std::string TakeCookie(absl::string_view cookie_header, absl::string_view name,
                       std::vector<std::string>* values);

struct AccessGateOptions {
  // How long the cookie a correct code earns is valid.
  absl::Duration cookie_ttl = absl::Hours(24);
  // Wrong codes one client IP may try per tunnel and minute before 429.
  int attempts_per_minute = 5;
  // "https": the cookie is Secure.
  std::string scheme = "http";
  // Key of the cookies' HMAC; empty: random per process (see
  // AccessCookieSigner).
  std::string cookie_key;
  // Basic auth: how long a verified user and password pass without being
  // hashed again, and how many such credentials are remembered. ttl 0:
  // every request is verified.
  absl::Duration basic_auth_cache_ttl = absl::Minutes(5);
  size_t basic_auth_cache_entries = 10000;
};

// Decides whether a visitor may pass a tunnel's code or basic auth.
// Threads: any; the slow hash of a presented code or password runs on a
// pool, so a loop thread never spends tens of milliseconds on it. Wrong codes
// and wrong passwords share one limit per (client IP, tunnel).
class AccessGate {
 public:
  AccessGate(const AccessGateOptions& options, FrontMetrics* metrics);

  // True: the visitor may pass (`*target` lost its `code` parameter,
  // `*cookie_out` is the Cookie header to forward, without ours). False:
  // `res` holds the answer: 401 with a form or JSON, 429, or 303 with the
  // access cookie after a correct code. `*body_read` is set when the gate
  // read the request body (a form).
  bool Admit(const httplib::Request& req, httplib::Response& res,
             const Route& route, const tunnel::v1::AccessCodeHash& code,
             const httplib::ContentReader* reader, std::string* target,
             std::string* cookie_out, bool* body_read);

  // True: the Authorization header holds one of `users` with its password
  // (the caller strips the header before the service). False: `res` holds
  // 401 with WWW-Authenticate (missing, malformed or wrong credentials) or
  // 429 after too many wrong ones.
  bool AdmitBasicAuth(const httplib::Request& req, httplib::Response& res,
                      const Route& route, const server::BasicAuthUsers& users);

 private:
  void Deny(absl::string_view reason);
  // True (and `res` is a 429 with Retry-After and X-Tunnel-Error `code`)
  // while `key` has used up its wrong attempts this minute.
  bool TooManyAttempts(const httplib::Request& req, httplib::Response& res,
                       const std::string& key, absl::Time now,
                       absl::string_view code, absl::string_view message);

  const AccessGateOptions options_;
  FrontMetrics* const metrics_;
  const AccessCookieSigner cookie_signer_;
  AttemptLimiter attempts_;
  VerifiedCredentials verified_;
  // Resolved once: an API client's every request counts here.
  common::Counter* const basic_auth_grants_;
  BlockingPool slow_work_{2};
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_ACCESS_GATE_H_
