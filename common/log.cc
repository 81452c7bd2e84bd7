#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tunnel::common {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};

std::string Now() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                          absl::UTCTimeZone());
}

void WriteLine(std::string* s) {
  *s += '\n';
  // One write per message so concurrent lines never interleave.
  ssize_t ignored = ::write(STDERR_FILENO, s->data(), s->size());
  (void)ignored;
}

const char* JsonLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

// A text-format value: bare when it is a plain token, else quoted.
std::string TextValue(absl::string_view v) {
  bool plain = !v.empty();
  for (char c : v) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '"' || c == '=' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) return std::string(v);
  return absl::StrCat("\"", JsonEscape(v), "\"");
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARN";
    case LogLevel::kError:
      return "ERROR";
  }
  return "?";
}
}  // namespace

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }

bool ParseLogLevel(absl::string_view text, LogLevel* out) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "debug")
    *out = LogLevel::kDebug;
  else if (t == "info")
    *out = LogLevel::kInfo;
  else if (t == "warning" || t == "warn")
    *out = LogLevel::kWarning;
  else if (t == "error")
    *out = LogLevel::kError;
  else
    return false;
  return true;
}

bool SetLogLevelByName(absl::string_view text) {
  LogLevel level;
  if (!ParseLogLevel(text, &level)) return false;
  SetLogLevel(level);
  return true;
}

void DisableMutexDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return signals;
}

void SetLogFormat(LogFormat format) { g_format = static_cast<int>(format); }
LogFormat GetLogFormat() { return static_cast<LogFormat>(g_format.load()); }

bool SetLogFormatByName(absl::string_view text) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "text") {
    SetLogFormat(LogFormat::kText);
  } else if (t == "json") {
    SetLogFormat(LogFormat::kJson);
  } else {
    return false;
  }
  return true;
}

std::string JsonEscape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (u < 0x20 || u >= 0x7f) {
      out += absl::StrFormat("\\u%04x", u);
    } else {
      out += c;
    }
  }
  return out;
}

LogMessage::LogMessage(LogLevel level, const char* file, int line)
    : level_(level), file_(file), line_(line) {}

LogMessage::~LogMessage() {
  const char* base = std::strrchr(file_, '/');
  base = base ? base + 1 : file_;
  std::string s;
  if (GetLogFormat() == LogFormat::kJson) {
    s = absl::StrCat("{\"time\":\"", Now(), "\",\"level\":\"",
                     JsonLevelName(level_), "\",\"src\":\"", base, ":", line_,
                     "\",\"msg\":\"", JsonEscape(stream_.str()), "\"}");
  } else {
    s = absl::StrCat(Now(), " ", LevelName(level_), " ", base, ":", line_, "] ",
                     stream_.str());
  }
  WriteLine(&s);
}

LogEvent::LogEvent(LogLevel level, absl::string_view event)
    : enabled_(level >= GetLogLevel()), level_(level) {
  if (!enabled_) return;
  if (GetLogFormat() == LogFormat::kJson) {
    line_ = absl::StrCat("{\"time\":\"", Now(), "\",\"level\":\"",
                         JsonLevelName(level_), "\",\"event\":\"",
                         JsonEscape(event), "\"");
  } else {
    line_ = absl::StrCat(Now(), " ", LevelName(level_), " ", event);
  }
}

LogEvent::~LogEvent() {
  if (!enabled_) return;
  if (GetLogFormat() == LogFormat::kJson) line_ += '}';
  WriteLine(&line_);
}

void LogEvent::Raw(absl::string_view key, absl::string_view json_value,
                   absl::string_view text_value) {
  if (!enabled_) return;
  if (GetLogFormat() == LogFormat::kJson) {
    absl::StrAppend(&line_, ",\"", key, "\":", json_value);
  } else {
    absl::StrAppend(&line_, " ", key, "=", text_value);
  }
}

LogEvent& LogEvent::Str(absl::string_view key, absl::string_view value) {
  if (enabled_) {
    Raw(key, absl::StrCat("\"", JsonEscape(value), "\""), TextValue(value));
  }
  return *this;
}

LogEvent& LogEvent::Int(absl::string_view key, int64_t value) {
  if (enabled_) {
    std::string v = absl::StrCat(value);
    Raw(key, v, v);
  }
  return *this;
}

LogEvent& LogEvent::Num(absl::string_view key, double value, int decimals) {
  if (enabled_) {
    std::string v = absl::StrFormat("%.*f", decimals, value);
    Raw(key, v, v);
  }
  return *this;
}

}  // namespace tunnel::common
