#include "common/flags.h"

#include <cstdlib>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace tunnel::common {

FlagSet::FlagSet(std::string usage, std::string env_prefix)
    : usage_(std::move(usage)), env_prefix_(std::move(env_prefix)) {}

void FlagSet::Add(Flag flag) { flags_.push_back(std::move(flag)); }

FlagSet::Flag* FlagSet::Find(absl::string_view name) {
  for (Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

void FlagSet::String(std::string name, std::string* out, std::string help) {
  Add({std::move(name), std::move(help), *out, Kind::kString, false, false,
       false, [out](absl::string_view v) {
         *out = std::string(v);
         return std::string();
       }});
}

void FlagSet::Int(std::string name, int64_t* out, std::string help) {
  Add({std::move(name), std::move(help), absl::StrCat(*out), Kind::kInt, false,
       false, false, [out](absl::string_view v) {
         int64_t n;
         if (!absl::SimpleAtoi(v, &n)) return std::string("not an integer");
         *out = n;
         return std::string();
       }});
}

void FlagSet::Bool(std::string name, bool* out, std::string help) {
  Add({std::move(name), std::move(help), *out ? "true" : "false", Kind::kBool,
       true, false, false, [out](absl::string_view v) {
         bool b;
         if (!absl::SimpleAtob(v, &b)) return std::string("not a boolean");
         *out = b;
         return std::string();
       }});
}

void FlagSet::Duration(std::string name, absl::Duration* out,
                       std::string help) {
  Add({std::move(name), std::move(help), absl::FormatDuration(*out),
       Kind::kDuration, false, false, false, [out](absl::string_view v) {
         absl::Duration d;
         if (!absl::ParseDuration(v, &d) || d < absl::ZeroDuration()) {
           return std::string(
               "not a duration (use a number with a unit: 500ms, 30s, 5m)");
         }
         *out = d;
         return std::string();
       }});
}

void FlagSet::Repeated(std::string name, std::vector<std::string>* out,
                       std::string help) {
  // The first explicit value replaces the defaults; later ones append.
  auto fresh = std::make_shared<bool>(true);
  Add({std::move(name), std::move(help), absl::StrJoin(*out, ","),
       Kind::kRepeated, false, true, false, [out, fresh](absl::string_view v) {
         if (*fresh) out->clear();
         *fresh = false;
         out->emplace_back(v);
         return std::string();
       }});
}

std::string FlagSet::EnvName(absl::string_view name) const {
  return env_prefix_ +
         absl::AsciiStrToUpper(absl::StrReplaceAll(name, {{"-", "_"}}));
}

bool FlagSet::WasSet(absl::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.set;
  }
  return false;
}

std::vector<FlagSet::Info> FlagSet::Flags() const {
  std::vector<Info> out;
  for (const Flag& f : flags_) out.push_back({f.name, f.kind});
  return out;
}

absl::Status FlagSet::ApplyConfig(const std::vector<ConfigValue>& values,
                                  absl::string_view source) {
  for (const ConfigValue& v : values) {
    Flag* flag = Find(v.name);
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": field ", v.field, " is not a flag of this command"));
    }
    if (flag->set) continue;  // the command line or environment wins
    if (!flag->is_repeated && v.values.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": field ", v.field, " takes exactly one value"));
    }
    for (const std::string& value : v.values) {
      if (std::string err = flag->parse(value); !err.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": field ", v.field, " (flag --", flag->name,
                         "): invalid value \"", value, "\": ", err));
      }
    }
    flag->set = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FlagSet::Parse(int argc, char** argv,
                                                        int first) {
  std::vector<std::string> args;
  for (int i = first; i < argc; ++i) args.emplace_back(argv[i]);
  return Parse(args);
}

absl::StatusOr<std::vector<std::string>> FlagSet::Parse(
    const std::vector<std::string>& args) {
  // Command line first, remembering which flags it set; the environment then
  // fills only the rest. Repeated flags from the command line are collected
  // before the environment is consulted, so the two never mix.
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      return positional;
    }
    if (arg == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg.size() < 3 || arg[0] != '-' || arg[1] != '-') {
      positional.push_back(arg);
      continue;
    }
    absl::string_view body = absl::string_view(arg).substr(2);
    std::string name(body.substr(0, body.find('=')));
    bool has_value = body.find('=') != absl::string_view::npos;
    std::string value =
        has_value ? std::string(body.substr(name.size() + 1)) : std::string();
    Flag* flag = Find(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no-")) {
      flag = Find(name.substr(3));
      negated = flag != nullptr && flag->is_bool;
      if (!negated) flag = nullptr;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (flag->is_bool && !has_value) {
      value = negated ? "false" : "true";
    } else if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    if (std::string err = flag->parse(value); !err.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "flag --", name, ": invalid value \"", value, "\": ", err));
    }
    flag->set = true;
  }
  for (Flag& flag : flags_) {
    if (flag.set) continue;
    std::string env = EnvName(flag.name);
    const char* raw = std::getenv(env.c_str());
    if (raw == nullptr || *raw == '\0') continue;
    std::vector<std::string> values =
        flag.is_repeated ? std::vector<std::string>(
                               absl::StrSplit(raw, ',', absl::SkipWhitespace()))
                         : std::vector<std::string>{raw};
    for (const std::string& v : values) {
      if (std::string err = flag.parse(absl::StripAsciiWhitespace(v));
          !err.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("environment variable ", env, " (flag --", flag.name,
                         "): invalid value: ", err));
      }
    }
    flag.set = true;
  }
  return positional;
}

std::string FlagSet::Usage() const {
  std::string out = usage_;
  bool has_config = false;
  for (const Flag& f : flags_) has_config = has_config || f.name == "config";
  absl::StrAppend(&out, "\nFlags (each also read from the environment",
                  has_config ? ", then from the --config file" : "", "):\n");
  for (const Flag& f : flags_) {
    std::string head = absl::StrCat("  --", f.name);
    if (!f.is_bool) absl::StrAppend(&head, " VALUE");
    absl::StrAppend(&out, head, "\n      ", f.help);
    if (f.is_repeated) absl::StrAppend(&out, " (repeatable)");
    if (!f.default_text.empty()) {
      absl::StrAppend(&out, " [default: ", f.default_text, "]");
    }
    absl::StrAppend(&out, " [env: ", EnvName(f.name), "]\n");
  }
  return out;
}

}  // namespace tunnel::common
