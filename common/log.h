// Minimal leveled logging to stderr (Abseil 20220623 has no absl/log).
//
//   TUNNEL_LOG(INFO) << "agent " << id << " connected";
//
// Thread-safe: each statement is written with one write(2). Never log secrets.
#ifndef TUNNEL_COMMON_LOG_H_
#define TUNNEL_COMMON_LOG_H_

#include <signal.h>

#include <sstream>
#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::common {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug", "info", "warning", "error"; false if unknown.
bool ParseLogLevel(absl::string_view text, LogLevel* out);
// ParseLogLevel + SetLogLevel for a --log-level flag; false if unknown.
bool SetLogLevelByName(absl::string_view text);

// For main(), before any thread starts: blocks SIGINT and SIGTERM in every
// thread (the caller takes them with sigwait on the returned set) and
// ignores SIGPIPE (a peer that hangs up is an error return, not a crash).
sigset_t BlockTerminationSignals();

// For main(): turns off absl::Mutex's debug deadlock detection, which the
// distribution's Abseil build leaves on and which costs a graph update on
// every lock (seen at 2-3 % of CPU in the request path).
void DisableMutexDeadlockDetection();

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace tunnel::common

#define TUNNEL_LOG_LEVEL_DEBUG ::tunnel::common::LogLevel::kDebug
#define TUNNEL_LOG_LEVEL_INFO ::tunnel::common::LogLevel::kInfo
#define TUNNEL_LOG_LEVEL_WARNING ::tunnel::common::LogLevel::kWarning
#define TUNNEL_LOG_LEVEL_ERROR ::tunnel::common::LogLevel::kError

#define TUNNEL_LOG(level)                                                      \
  if (TUNNEL_LOG_LEVEL_##level < ::tunnel::common::GetLogLevel())              \
    ;                                                                          \
  else                                                                         \
    ::tunnel::common::LogMessage(TUNNEL_LOG_LEVEL_##level, __FILE__, __LINE__) \
        .stream()

#endif  // TUNNEL_COMMON_LOG_H_
