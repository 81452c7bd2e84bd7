#include "agent/state_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace tunnel::agent {
namespace {

// mkdir -p with mode 0700 for the parts it creates.
void MakeDirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      (void)mkdir(dir.substr(0, i).c_str(), 0700);
    }
  }
}

}  // namespace

std::string DefaultStateDir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && *xdg == '/') return absl::StrCat(xdg, "/agent-tunnel");
  if (geteuid() == 0) return "/run/agent-tunnel";
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr && *home != '\0' ? home : ".",
                      "/.local/state/agent-tunnel");
}

std::string DefaultStateFilePath(const std::string& agent_id) {
  std::string name = agent_id;
  for (char& c : name) {
    if (c == '/' || c == '\0') c = '_';
  }
  if (name.empty() || name[0] == '.') name = "_" + name;
  return absl::StrCat(DefaultStateDir(), "/", name, ".json");
}

std::vector<std::string> StateFilesIn(const std::string& dir) {
  std::vector<std::string> files;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return files;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0 &&
        name[0] != '.') {
      files.push_back(absl::StrCat(dir, "/", name));
    }
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  return files;
}

absl::Status WriteStateFile(const std::string& path,
                            const tunnel::v1::AgentState& state) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(state, &json, options)
           .ok()) {
    return absl::InternalError("cannot serialize the agent state");
  }
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) MakeDirs(path.substr(0, slash));
  std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < json.size()) {
    ssize_t n = write(fd, json.data() + done, json.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return absl::UnavailableError(
          absl::StrCat(tmp, ": cannot write: ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat(path, ": cannot replace: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<tunnel::v1::AgentState> ReadStateFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": no agent state"));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  tunnel::v1::AgentState state;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // written by a newer agent
  if (!google::protobuf::util::JsonStringToMessage(buf.str(), &state, options)
           .ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an agent state file"));
  }
  return state;
}

bool ProcessAlive(int64_t pid) {
  if (pid <= 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  // A zombie (exited, not yet reaped) still answers signal 0. Its state is
  // the field after the parenthesised command name in /proc/PID/stat.
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (std::getline(stat, line)) {
    size_t close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() &&
        line[close + 2] == 'Z') {
      return false;
    }
  }
  return true;
}

}  // namespace tunnel::agent
