// Command-line flags with environment fallbacks, shared by all binaries.
//
// Every flag --some-name can also come from the environment variable
// <prefix>SOME_NAME (prefix "TUNNEL_" in our binaries), so secrets need not
// appear in `ps`. A config file (ApplyConfig, fed by common/config_file)
// sits between the environment and the defaults. Precedence: command line,
// then environment, then config file, then default.
// Repeated flags (--to a --to b) collect every value; their environment
// variable holds a comma-separated list. Durations take Abseil syntax
// ("30s", "5m", "1h30m"). Both "--name value" and "--name=value" work.
//
// Not thread-safe; used once at startup from main().
#ifndef TUNNEL_COMMON_FLAGS_H_
#define TUNNEL_COMMON_FLAGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tunnel::common {

class FlagSet {
 public:
  enum class Kind { kString, kInt, kBool, kDuration, kRepeated };
  struct Info {
    std::string name;
    Kind kind;
  };
  // One flag's values from a config file: `name` is the flag's name (with
  // '-'), `field` what the file calls it (for errors).
  struct ConfigValue {
    std::string name;
    std::string field;
    std::vector<std::string> values;
  };

  // `usage` is printed above the flag list by Usage().
  FlagSet(std::string usage, std::string env_prefix = "TUNNEL_");

  // Each registration binds a flag to a variable whose current value is the
  // default. The variable must outlive Parse().
  void String(std::string name, std::string* out, std::string help);
  void Int(std::string name, int64_t* out, std::string help);
  void Bool(std::string name, bool* out, std::string help);
  void Duration(std::string name, absl::Duration* out, std::string help);
  void Repeated(std::string name, std::vector<std::string>* out,
                std::string help);

  // Parses args (argv without the program name and subcommand). Returns the
  // positional arguments. Unknown flags, missing or malformed values fail with
  // INVALID_ARGUMENT naming the flag (and the variable, for the environment).
  // "--help"/"-h" sets help_requested() and stops parsing.
  absl::StatusOr<std::vector<std::string>> Parse(
      const std::vector<std::string>& args);
  absl::StatusOr<std::vector<std::string>> Parse(int argc, char** argv,
                                                 int first = 1);

  // Fills the flags that Parse() left unset (neither command line nor
  // environment) from a config file named `source`. A value for no
  // registered flag, or one that does not parse, fails with INVALID_ARGUMENT
  // naming `source` and the field. Call after Parse().
  absl::Status ApplyConfig(const std::vector<ConfigValue>& values,
                           absl::string_view source);

  bool help_requested() const { return help_requested_; }
  // True if the flag was given on the command line, in the environment or in
  // the config file.
  bool WasSet(absl::string_view name) const;
  // The registered flags, in registration order.
  std::vector<Info> Flags() const;
  std::string EnvName(absl::string_view name) const;
  std::string Usage() const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    Kind kind = Kind::kString;
    bool is_bool = false;
    bool is_repeated = false;
    bool set = false;
    // Parses one value into the bound variable; returns an error text or "".
    std::function<std::string(absl::string_view)> parse;
  };
  void Add(Flag flag);
  Flag* Find(absl::string_view name);

  std::string usage_;
  std::string env_prefix_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_FLAGS_H_
