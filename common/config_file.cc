#include "common/config_file.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace tunnel::common {
namespace {

using google::protobuf::FieldDescriptor;

// Collects text-format errors as "file:line:col: message" (1-based). The
// parser quotes the offending token; a long one (perhaps an unquoted
// secret) is not repeated.
class FileErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  FileErrorCollector(const std::string& path, const std::string& text)
      : path_(path), lines_(absl::StrSplit(text, '\n')) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    std::string shown = message;
    static constexpr char kGot[] = "got: ";
    size_t at = shown.find(kGot);
    if (at != std::string::npos && shown.size() - at - 5 > 12) {
      shown = absl::StrCat(shown.substr(0, at + 5), "a ", shown.size() - at - 5,
                           "-char token (not shown)");
    }
    // The parser's messages ("Expected integer, got: lots") do not say
    // which field: the line does.
    std::string field = FieldOnLine(line);
    if (!field.empty() && !absl::StrContains(shown, field)) {
      shown = absl::StrCat("field ", field, " (flag --", FlagNameOfField(field),
                           "): ", shown);
    }
    errors_.push_back(
        absl::StrCat(path_, ":", line + 1, ":", column + 1, ": ", shown));
  }

  const std::vector<std::string>& errors() const { return errors_; }

 private:
  // The field a "name: value" line sets ("" if it is not such a line).
  std::string FieldOnLine(int line) const {
    if (line < 0 || static_cast<size_t>(line) >= lines_.size()) return "";
    absl::string_view l = absl::StripLeadingAsciiWhitespace(lines_[line]);
    size_t n = 0;
    while (n < l.size() &&
           (absl::ascii_isalnum(static_cast<unsigned char>(l[n])) ||
            l[n] == '_')) {
      ++n;
    }
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(l.substr(n));
    if (n == 0 || rest.empty() || rest[0] != ':') return "";
    return std::string(l.substr(0, n));
  }

  std::string path_;
  std::vector<std::string> lines_;
  std::vector<std::string> errors_;
};

bool IsJson(const std::string& path, const std::string& text) {
  if (absl::EndsWith(path, ".json")) return true;
  for (const char* ext : {".txtpb", ".textproto", ".pb.txt", ".txt"}) {
    if (absl::EndsWith(path, ext)) return false;
  }
  absl::string_view body = absl::StripLeadingAsciiWhitespace(text);
  return absl::StartsWith(body, "{");
}

}  // namespace

std::string FlagNameOfField(const std::string& field) {
  return absl::StrReplaceAll(field, {{"_", "-"}});
}

absl::Status LoadConfigFile(const std::string& path,
                            google::protobuf::Message* message) {
  message->Clear();
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot read the config file"));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  const std::string type = message->GetDescriptor()->full_name();
  if (IsJson(path, text)) {
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    auto status =
        google::protobuf::util::JsonStringToMessage(text, message, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a valid ", type,
                       " in JSON: ", std::string(status.message())));
    }
    return absl::OkStatus();
  }
  FileErrorCollector errors(path, text);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, message)) {
    if (errors.errors().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a valid ", type, " in text format"));
    }
    // The first error is the cause; later ones are mostly its echoes.
    return absl::InvalidArgumentError(errors.errors().front());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<FlagSet::ConfigValue>> ConfigValues(
    const google::protobuf::Message& message) {
  const auto* desc = message.GetDescriptor();
  const auto* refl = message.GetReflection();
  std::vector<FlagSet::ConfigValue> out;
  for (int i = 0; i < desc->field_count(); ++i) {
    const FieldDescriptor* f = desc->field(i);
    FlagSet::ConfigValue v{FlagNameOfField(f->name()), f->name(), {}};
    if (f->is_repeated()) {
      if (f->cpp_type() != FieldDescriptor::CPPTYPE_STRING) {
        return absl::InternalError(absl::StrCat(
            desc->full_name(), ".", f->name(), ": repeated non-string field"));
      }
      int n = refl->FieldSize(message, f);
      if (n == 0) continue;
      for (int j = 0; j < n; ++j) {
        v.values.push_back(refl->GetRepeatedString(message, f, j));
      }
      out.push_back(std::move(v));
      continue;
    }
    if (!refl->HasField(message, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        v.values.push_back(refl->GetString(message, f));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        v.values.push_back(absl::StrCat(refl->GetInt64(message, f)));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        v.values.push_back(refl->GetBool(message, f) ? "true" : "false");
        break;
      default:
        return absl::InternalError(absl::StrCat(
            desc->full_name(), ".", f->name(), ": unsupported field type"));
    }
    out.push_back(std::move(v));
  }
  return out;
}

absl::Status CheckSchemaMatchesFlags(const google::protobuf::Descriptor& schema,
                                     const FlagSet& flags) {
  std::vector<std::string> problems;
  std::vector<FlagSet::Info> infos = flags.Flags();
  for (int i = 0; i < schema.field_count(); ++i) {
    const FieldDescriptor* f = schema.field(i);
    std::string name = FlagNameOfField(f->name());
    const FlagSet::Info* info = nullptr;
    for (const FlagSet::Info& fi : infos) {
      if (fi.name == name) info = &fi;
    }
    if (info == nullptr || name == "config") {
      problems.push_back(
          absl::StrCat("field ", f->name(), " has no flag --", name));
      continue;
    }
    bool ok = false;
    switch (info->kind) {
      case FlagSet::Kind::kString:
      case FlagSet::Kind::kDuration:
        ok = f->cpp_type() == FieldDescriptor::CPPTYPE_STRING;
        break;
      case FlagSet::Kind::kInt:
        ok = f->cpp_type() == FieldDescriptor::CPPTYPE_INT64;
        break;
      case FlagSet::Kind::kBool:
        ok = f->cpp_type() == FieldDescriptor::CPPTYPE_BOOL;
        break;
      case FlagSet::Kind::kRepeated:
        ok = f->cpp_type() == FieldDescriptor::CPPTYPE_STRING &&
             f->is_repeated();
        break;
    }
    if (info->kind != FlagSet::Kind::kRepeated) {
      ok = ok && !f->is_repeated() && f->has_presence();
    }
    if (!ok) {
      problems.push_back(absl::StrCat("field ", f->name(),
                                      " does not fit flag --", name,
                                      " (type, repeated or not optional)"));
    }
  }
  for (const FlagSet::Info& fi : infos) {
    if (fi.name == "config") continue;
    std::string field = absl::StrReplaceAll(fi.name, {{"-", "_"}});
    if (schema.FindFieldByName(field) == nullptr) {
      problems.push_back(absl::StrCat("flag --", fi.name, " has no field ",
                                      field, " in ", schema.full_name()));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrJoin(problems, "; "));
}

absl::Status ApplyConfigFile(const std::string& path,
                             google::protobuf::Message* message,
                             FlagSet* flags) {
  if (absl::Status s = LoadConfigFile(path, message); !s.ok()) return s;
  absl::StatusOr<std::vector<FlagSet::ConfigValue>> values =
      ConfigValues(*message);
  if (!values.ok()) return values.status();
  return flags->ApplyConfig(*values, path);
}

}  // namespace tunnel::common
