// The small state file a running agent keeps for `agent-tunnel status`: a
// tunnel.v1.AgentState in JSON, replaced atomically (write + rename) on start,
// connect, disconnect and exit.
//
// Not thread-safe: the agent writes it from one thread at a time.
#ifndef TUNNEL_AGENT_STATE_FILE_H_
#define TUNNEL_AGENT_STATE_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tunnel/v1/agent_state.pb.h"

namespace tunnel::agent {

// Where agents keep their state files by default: $XDG_RUNTIME_DIR/
// agent-tunnel; else, for root, /run/agent-tunnel; else
// ~/.local/state/agent-tunnel.
std::string DefaultStateDir();
// The default state file of agent `agent_id`: DefaultStateDir()/<id>.json,
// so two agents on one machine keep apart.
std::string DefaultStateFilePath(const std::string& agent_id);
// The state files in `dir` (*.json), sorted.
std::vector<std::string> StateFilesIn(const std::string& dir);

// Writes `state` to `path` (creating its directory, mode 0700) through a
// temporary file renamed over it, so readers never see half a file.
absl::Status WriteStateFile(const std::string& path,
                            const tunnel::v1::AgentState& state);

// NOT_FOUND if there is no file; INVALID_ARGUMENT if it does not parse.
absl::StatusOr<tunnel::v1::AgentState> ReadStateFile(const std::string& path);

// True if a process with this pid exists (signal 0 reaches it or EPERM) and
// is not a zombie. A reused pid reads as running.
bool ProcessAlive(int64_t pid);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_STATE_FILE_H_
