#include "server/redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/socket_io.h"

namespace tunnel::server {
namespace {

RedisReply Convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) {
        out.elements.push_back(Convert(r->element[i]));
      }
      break;
    default:
      out.type = RedisReply::Type::kNil;
  }
  return out;
}

void AppendArgv(redisContext* ctx, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  redisAppendCommandArgv(ctx, static_cast<int>(args.size()), argv.data(),
                         lens.data());
}

}  // namespace

std::string RedisAddress::Describe() const {
  return absl::StrCat(host, ":", port, "/", db);
}

absl::StatusOr<RedisAddress> ParseRedisUrl(absl::string_view url) {
  const std::string original(url);
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-redis \"", original, "\": ", why,
                     " (expected redis://[:PASSWORD@]HOST[:PORT][/DB])"));
  };
  if (!absl::ConsumePrefix(&url, "redis://")) return bad("not a redis:// URL");
  RedisAddress a;
  if (size_t at = url.rfind('@'); at != absl::string_view::npos) {
    absl::string_view userinfo = url.substr(0, at);
    url.remove_prefix(at + 1);
    absl::ConsumePrefix(&userinfo, ":");
    if (userinfo.empty()) return bad("empty password");
    a.password = std::string(userinfo);
  }
  absl::string_view hostport = url;
  if (size_t slash = url.find('/'); slash != absl::string_view::npos) {
    hostport = url.substr(0, slash);
    absl::string_view db = url.substr(slash + 1);
    if (!db.empty() && (!absl::SimpleAtoi(db, &a.db) || a.db < 0)) {
      return bad("the database must be a number");
    }
  }
  if (hostport.empty()) return bad("no host");
  if (hostport.find(':') == absl::string_view::npos ||
      (hostport.front() == '[' && hostport.back() == ']')) {
    a.host =
        std::string(absl::StripPrefix(absl::StripSuffix(hostport, "]"), "["));
  } else if (absl::Status s = common::SplitHostPort(hostport, &a.host, &a.port);
             !s.ok()) {
    return bad(s.message());
  }
  if (a.host.empty()) return bad("no host");
  return a;
}

RedisClient::RedisClient(RedisAddress address, absl::Duration timeout)
    : address_(std::move(address)), timeout_(timeout) {}

RedisClient::~RedisClient() { Disconnect(); }

void RedisClient::Disconnect() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
}

absl::Status RedisClient::Fail(absl::string_view what) {
  std::string why = ctx_ != nullptr && ctx_->err != 0
                        ? std::string(ctx_->errstr)
                        : std::string("no answer");
  Disconnect();
  return absl::UnavailableError(
      absl::StrCat("redis at ", address_.Describe(), ": ", what, ": ", why));
}

absl::Status RedisClient::Connect() {
  if (ctx_ != nullptr) return absl::OkStatus();
  ctx_ = redisConnectWithTimeout(address_.host.c_str(), address_.port,
                                 absl::ToTimeval(timeout_));
  if (ctx_ == nullptr) {
    return absl::ResourceExhaustedError("redis: cannot allocate a context");
  }
  if (ctx_->err != 0) return Fail("cannot connect");
  if (redisSetTimeout(ctx_, absl::ToTimeval(timeout_)) != REDIS_OK) {
    return Fail("cannot set the timeout");
  }
  std::vector<std::vector<std::string>> hello;
  if (!address_.password.empty()) hello.push_back({"AUTH", address_.password});
  if (address_.db != 0) hello.push_back({"SELECT", absl::StrCat(address_.db)});
  for (const auto& cmd : hello) AppendArgv(ctx_, cmd);
  for (size_t i = 0; i < hello.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(ctx_, &raw) != REDIS_OK || raw == nullptr) {
      return Fail("no answer to the handshake");
    }
    RedisReply r = Convert(static_cast<redisReply*>(raw));
    freeReplyObject(raw);
    if (r.type == RedisReply::Type::kError) {
      Disconnect();
      return absl::PermissionDeniedError(
          absl::StrCat("redis at ", address_.Describe(), " refused ",
                       hello[i][0], ": ", r.str));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RedisReply>> RedisClient::Pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  for (int attempt = 0;; ++attempt) {
    const bool reused = ctx_ != nullptr;
    if (absl::Status s = Connect(); !s.ok()) return s;
    for (const auto& cmd : commands) AppendArgv(ctx_, cmd);
    std::vector<RedisReply> replies;
    replies.reserve(commands.size());
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx_, &raw) != REDIS_OK || raw == nullptr) {
        // A connection kept from before that the server closed (Redis
        // restarted, or dropped an idle client): closed before it read a
        // thing, so nothing ran; once more on a new connection.
        if (reused && attempt == 0 && i == 0 && ctx_->err == REDIS_ERR_EOF) {
          Disconnect();
          break;
        }
        return Fail(absl::StrCat("no answer to ", commands[i][0]));
      }
      replies.push_back(Convert(static_cast<redisReply*>(raw)));
      freeReplyObject(raw);
    }
    if (replies.size() == commands.size()) return replies;
  }
}

absl::StatusOr<RedisReply> RedisClient::Command(
    const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<RedisReply>> r = Pipeline({args});
  if (!r.ok()) return r.status();
  RedisReply reply = std::move(r->front());
  if (reply.type == RedisReply::Type::kError) {
    return absl::InternalError(
        absl::StrCat("redis ", args.front(), ": ", reply.str));
  }
  return reply;
}

}  // namespace tunnel::server
