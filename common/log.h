// Minimal leveled logging to stderr (Abseil 20220623 has no absl/log).
//
//   TUNNEL_LOG(INFO) << "agent " << id << " connected";
//   LogEvent(LogLevel::kInfo, "access").Str("path", p).Int("status", 200);
//
// Two formats (SetLogFormat): text lines for people, or JSON lines (one
// object per line: "time", "level", then "src" and "msg" for TUNNEL_LOG, or
// "event" and the event's fields for LogEvent) for log shippers.
//
// Thread-safe: each statement is written with one write(2). Never log secrets.
#ifndef TUNNEL_COMMON_LOG_H_
#define TUNNEL_COMMON_LOG_H_

#include <signal.h>

#include <cstdint>
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

enum class LogFormat { kText = 0, kJson = 1 };
void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();
// "text" or "json" for a --log-format flag; false if unknown.
bool SetLogFormatByName(absl::string_view text);

// JSON string body for `s` (no quotes): ", \, control characters and bytes
// >= 0x80 are escaped as \uXXXX, so the output is valid JSON even for
// bytes that are not UTF-8.
std::string JsonEscape(absl::string_view s);

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
  const char* file_;
  int line_;
  std::ostringstream stream_;
};

// One structured event, written when the object is destroyed (use it as a
// temporary). Text: `<time> INFO <event> key=value ...`, values quoted when
// they contain spaces, quotes, '=' or control characters. Nothing is written
// below the current log level. Keys are ours; values may come from the
// network and are escaped.
class LogEvent {
 public:
  LogEvent(LogLevel level, absl::string_view event);
  ~LogEvent();
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;

  LogEvent& Str(absl::string_view key, absl::string_view value);
  LogEvent& Int(absl::string_view key, int64_t value);
  // Fixed-point with `decimals` places (durations in ms, say).
  LogEvent& Num(absl::string_view key, double value, int decimals = 3);

 private:
  void Raw(absl::string_view key, absl::string_view json_value,
           absl::string_view text_value);
  const bool enabled_;
  const LogLevel level_;
  std::string line_;
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
