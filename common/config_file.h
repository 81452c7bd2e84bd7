// Config files whose schema is a protobuf message (tunnel/v1/config.proto),
// feeding a FlagSet between the environment and the defaults.
//
// The format follows the file name: ".json" is JSON (proto3 JSON mapping,
// either field spelling), ".txtpb", ".textproto", ".pb.txt" and ".txt" are the
// protobuf text format. Any other name is read as JSON when its first
// non-blank character is '{', else as text. Unknown fields are errors in both.
//
// Not thread-safe; used once at startup from main().
#ifndef TUNNEL_COMMON_CONFIG_FILE_H_
#define TUNNEL_COMMON_CONFIG_FILE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/flags.h"
#include "google/protobuf/message.h"

namespace tunnel::common {

// Reads `path` into `*message` (cleared first). Errors name the file, and for
// text-format syntax errors file:line:col.
absl::Status LoadConfigFile(const std::string& path,
                            google::protobuf::Message* message);

// The fields `message` sets, as flag values: field `max_backoff` is flag
// --max-backoff. Singular fields count when present (they are `optional`),
// repeated ones when not empty. Strings pass as they are, integers in
// decimal, bools as "true"/"false".
absl::StatusOr<std::vector<FlagSet::ConfigValue>> ConfigValues(
    const google::protobuf::Message& message);

// The flag name of a field name: '_' becomes '-'.
std::string FlagNameOfField(const std::string& field);

// OK if the fields of `schema` and the flags of `flags` (but --config) match
// one to one, with matching types: string for String and Duration flags,
// int64 for Int, bool for Bool (all `optional`), repeated string for
// Repeated. Otherwise FAILED_PRECONDITION listing every mismatch. The tests
// hold each binary's flags to its config message with it.
absl::Status CheckSchemaMatchesFlags(const google::protobuf::Descriptor& schema,
                                     const FlagSet& flags);

// LoadConfigFile + ConfigValues + flags->ApplyConfig.
absl::Status ApplyConfigFile(const std::string& path,
                             google::protobuf::Message* message,
                             FlagSet* flags);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_CONFIG_FILE_H_
