// A small synchronous Redis client over hiredis (Debian's libhiredis-dev):
// the gateway cluster's only way to Redis (server/cluster_directory.h).
//
// Every call connects first when there is no connection, has the configured
// timeout for connecting and for each reply, and drops the connection on an
// I/O error or timeout, so the next call reconnects: a Redis that restarts
// is found again without anyone noticing but the calls that failed meanwhile.
//
// Threads: one RedisClient is used by one thread at a time (the caller
// serializes).
#ifndef TUNNEL_SERVER_REDIS_CLIENT_H_
#define TUNNEL_SERVER_REDIS_CLIENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct redisContext;

namespace tunnel::server {

// redis://[:PASSWORD@]HOST[:PORT][/DB]; PORT defaults to 6379, DB to 0.
struct RedisAddress {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string password;
  // host:port/db, never the password (for logs and errors).
  std::string Describe() const;
};
absl::StatusOr<RedisAddress> ParseRedisUrl(absl::string_view url);

struct RedisReply {
  enum class Type { kNil, kString, kInteger, kArray, kStatus, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  int64_t integer = 0;
  std::vector<RedisReply> elements;  // kArray
};

class RedisClient {
 public:
  RedisClient(RedisAddress address, absl::Duration timeout);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // One command. UNAVAILABLE naming the server when it cannot be reached or
  // does not answer in time; INTERNAL with Redis's message for an error
  // reply.
  absl::StatusOr<RedisReply> Command(const std::vector<std::string>& args);
  // Several commands in one round trip; their replies in order (an error
  // reply is a kError element, not a failure of the call).
  absl::StatusOr<std::vector<RedisReply>> Pipeline(
      const std::vector<std::vector<std::string>>& commands);

  bool connected() const { return ctx_ != nullptr; }
  const RedisAddress& address() const { return address_; }

 private:
  absl::Status Connect();
  absl::Status Fail(absl::string_view what);
  void Disconnect();

  const RedisAddress address_;
  const absl::Duration timeout_;
  redisContext* ctx_ = nullptr;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_REDIS_CLIENT_H_
