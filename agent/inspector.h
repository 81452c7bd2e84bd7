// The request inspector's memory (agent-tunnel connect --inspect): a bounded
// ring of the requests that went through the agent, with their heads and
// the first bytes of their bodies, kept on the device only.
//
// Bounds: at most `max_requests` records; of each body at most `max_body`
// bytes per direction; of all bodies and heads together at most
// `max_memory` bytes (the oldest records go first to make room; a body that
// finds no room is cut). Secrets (Authorization, Cookie, ...) are kept as they
// were, for replays, and masked whenever a record is shown unless
// `show_secrets`.
//
// Forwarders record through a Capture (one per request); the inspector's
// page and API read snapshots. Thread-safe.
#ifndef TUNNEL_AGENT_INSPECTOR_H_
#define TUNNEL_AGENT_INSPECTOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/headers.h"
#include "tunnel/v1/inspect.pb.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::agent {

struct InspectorOptions {
  size_t max_requests = 500;
  size_t max_body = 1 << 20;
  size_t max_memory = 64 << 20;
  bool show_secrets = false;
};

// Fields whose values are masked when shown: Authorization,
// Proxy-Authorization, Cookie, Set-Cookie, X-Tunnel-Access-Code.
bool IsSecretHeader(absl::string_view name);
// "Bearer <masked: 36 bytes>"; a Cookie's names stay, its values go.
std::string MaskHeaderValue(absl::string_view name, absl::string_view value);

class Inspector {
 public:
  enum class Outcome { kComplete, kCancelled, kLocalError };

  // One request being recorded. Used by one thread at a time (whoever
  // forwards the request). Destroyed unfinished: recorded as cancelled.
  class Capture {
   public:
    ~Capture();
    void RequestBody(absl::string_view bytes);
    // The request body is whole (also: a request without one). A body of
    // known Content-Length is whole once that much arrived.
    void RequestEnd();
    void ResponseHead(int status, const common::HeaderList& headers);
    void ResponseBody(absl::string_view bytes);
    // Upgraded connections: bytes relayed each way (not kept).
    void CountUpgradeBytes(uint64_t in, uint64_t out);
    // The first call counts; later ones are ignored.
    void Finish(Outcome outcome, absl::string_view error = "");
    uint64_t id() const;

   private:
    friend class Inspector;
    struct Record;
    Capture(Inspector* inspector, std::shared_ptr<Record> record);
    Inspector* const inspector_;
    const std::shared_ptr<Record> record_;
  };

  explicit Inspector(InspectorOptions options);
  ~Inspector();

  // A request arriving for the tunnel `slug` (served by the target named
  // `target`); `replay_of` non-zero for a replay made from the inspector.
  std::unique_ptr<Capture> Begin(const tunnel::v1::TunnelRequest& head,
                                 absl::string_view slug,
                                 absl::string_view target, bool upgrade,
                                 uint64_t replay_of = 0);
  // A replay: head and body given whole.
  std::unique_ptr<Capture> BeginReplay(absl::string_view slug,
                                       absl::string_view target,
                                       absl::string_view method,
                                       absl::string_view path,
                                       const common::HeaderList& headers,
                                       uint64_t replay_of);

  struct Filter {
    std::string status;  // "" / "2xx" / "404" / "error" (no status or 5xx)
    std::string method;
    std::string path_contains;
    size_t limit = 0;  // 0: all
  };
  // Newest first; without header fields, and bodies without `kind`,
  // `data` and `text` (Get has them).
  tunnel::v1::InspectedList List(const Filter& filter) const;
  // Whole, with bodies (decompressed text, raw data); nullopt: not held.
  std::optional<tunnel::v1::InspectedRequest> Get(uint64_t id) const;
  tunnel::v1::InspectorStatus Status() const;

  // What a replay needs: the request as it was, secrets included.
  struct Original {
    std::string slug;
    std::string target;  // LocalTarget::name
    std::string method;
    std::string path;
    common::HeaderList headers;
    std::string body;
    bool body_complete = true;  // false: only the first bytes were kept
    bool upgrade = false;
  };
  std::optional<Original> GetOriginal(uint64_t id) const;

  // Summaries of the records added or changed after `*seq` (which it
  // advances), oldest change first; waits up to `timeout` for one. Empty on
  // timeout or once Shutdown() was called.
  std::vector<tunnel::v1::InspectedRequest> WaitForChanges(
      uint64_t* seq, absl::Duration timeout);
  // The newest change so far (where a new watcher starts).
  uint64_t seq() const;
  // Wakes every WaitForChanges; later ones return at once.
  void Shutdown();
  // True once Shutdown() was called, waiting up to `timeout` for it.
  bool WaitForShutdown(absl::Duration timeout);

  const InspectorOptions& options() const { return options_; }

 private:
  using Record = Capture::Record;
  std::unique_ptr<Capture> Add(std::shared_ptr<Record> r);
  void Changed(Record* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps `bytes` of one of `r`'s bodies within the bounds.
  // `length`: the body's Content-Length, 0 if unknown.
  void Keep(Record* r, std::string* into, bool* cut, uint64_t length,
            absl::string_view bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictOldest() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Swaps a spare buffer of at least `cap` bytes into the empty `into`.
  bool TakeSpare(size_t cap, std::string* into)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees `bytes` within max_memory (spare buffers, then records older
  // than `r`); false if it cannot.
  bool MakeRoom(const Record* r, size_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  tunnel::v1::InspectedRequest Show(const Record& r, bool whole) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  const Record* Find(uint64_t id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  tunnel::v1::InspectorStatus StatusLocked() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const InspectorOptions options_;
  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Record>> records_ ABSL_GUARDED_BY(mu_);  // by id
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  // Memory held: the records' body buffers (their capacity), their heads'
  // fields, and the spare buffers; at most max_memory.
  size_t held_ ABSL_GUARDED_BY(mu_) = 0;
  size_t head_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // of held_: the heads
  std::vector<std::string> spare_ ABSL_GUARDED_BY(mu_);
  size_t spare_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evicted_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_INSPECTOR_H_
