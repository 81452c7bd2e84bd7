// The agent's side of an end-to-end encrypted share (agent-tunnel share,
// docs/RELAY.md): the host role of the protocol for every browser the
// gateway relays to it, and their HTTP requests to the local service.
//
// A browser's frames arrive on the session's reader thread (OnFrame). Each
// is opened and checked (key, session, direction, connection nonce,
// sequence) before anything is done with it; a frame that fails is dropped
// and counted. A paired browser's REQUEST becomes an ordinary AgentStream
// run by the agent's OriginLoop, as a tunnel request would be, except that
// its answer goes to a per-browser Outbox; one pump thread (for every
// browser) seals what lands there (RESPONSE, DATA, WINDOW, CLOSE) into
// frames for the gateway. The per-stream credit works as in the tunnel: the
// browser grants WINDOW as its reader takes bytes, and the OriginLoop pauses
// the service when none is left.
//
// Threads: OnFrame, Attach and Detach from the session's reader thread;
// the pump runs its own thread; counters from any thread.
#ifndef TUNNEL_AGENT_RELAY_HOST_H_
#define TUNNEL_AGENT_RELAY_HOST_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/local_target.h"
#include "common/flow_control.h"
#include "common/relay_protocol.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::agent {

class OriginLoop;

struct ShareOptions {
  common::relay::ShareSecrets secrets;
  LocalTarget target;  // --to
  // Initial credit per stream and direction, told to browsers in HELLO_ACK.
  uint32_t window = common::kDefaultStreamWindow;
  // Largest DATA body either way (further bounded by the gateway's frame
  // limit, see Attach).
  uint32_t max_chunk = common::kMaxChunkBytes;
  // Body bytes queued towards one browser before the service is paused.
  size_t max_queued_bytes = 2 << 20;
  // Events for the person who started the share (a browser paired, a wrong
  // code, the share locked); called on the reader thread.
  std::function<void(const std::string&)> on_event;
};

// How frames reach the gateway.
struct RelaySink {
  // Queues a frame at once; false when the session is gone.
  std::function<bool(tunnel::v1::Envelope e)> send;
  // Before a body frame: waits (bounded) for room in the session's send
  // queue; false on the deadline or when the session is gone. Null: there
  // is always room. It is called without any of the host's locks held: the
  // thread that reads the session's messages takes them too, and it is the
  // one that learns that writes completed, i.e. that makes the room.
  std::function<bool()> room;
};

struct RelayHostCounts {
  uint64_t dropped[6] = {};  // by common::relay::Drop
  uint64_t pre_hello = 0;    // frames before a HELLO (ignored)
  uint64_t not_paired = 0;   // requests before PAIR_OK (answered ERROR)
  uint64_t wrong_codes = 0;
  uint64_t paired = 0;
  uint64_t requests = 0;
  uint64_t unknown_client = 0;      // frames of a browser never announced
  uint64_t malformed_payloads = 0;  // accepted frames whose payload was bad
  bool locked = false;
};

class RelayHost {
 public:
  // Browsers at once, all shares' connections together (the gateway allows
  // --relay-max-clients-per-session, 8 by default).
  static constexpr size_t kMaxClients = 1024;

  RelayHost(ShareOptions options, OriginLoop* loop);
  // Detaches and joins the pump.
  ~RelayHost();

  const ShareOptions& options() const { return options_; }

  // A session with the gateway began: frames go to `sink`; DATA bodies are
  // at most what `max_frame_bytes` leaves room for.
  void Attach(RelaySink sink, uint32_t max_frame_bytes);
  // The session ended: every browser is forgotten (its streams cancelled);
  // browsers come back with a new HELLO through the next session.
  void Detach();
  // A RelayFrame from the gateway (reader thread).
  void OnFrame(tunnel::v1::RelayFrame* f);

  RelayHostCounts counts() const;

 private:
  class Client;
  std::shared_ptr<Client> Find(uint64_t id);
  // A browser the gateway announced (or one starting over: `replaces` is
  // its old object, shut down). Null when detached or at kMaxClients.
  std::shared_ptr<Client> Add(
      uint64_t id, const std::shared_ptr<Client>& replaces = nullptr);
  void Remove(uint64_t id);
  void Event(const std::string& what);
  void Pump();

  const ShareOptions options_;
  OriginLoop* const loop_;
  mutable absl::Mutex mu_;
  RelaySink sink_ ABSL_GUARDED_BY(mu_);  // no `send`: detached
  uint32_t max_chunk_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Client>> clients_
      ABSL_GUARDED_BY(mu_);
  // Browsers whose Outbox has something for the pump, in order. Shared
  // with the Outboxes' wake callbacks, which the OriginLoop may still call
  // while it winds a cancelled stream down after this host is gone.
  struct ReadyQueue {
    absl::Mutex mu;
    std::deque<std::weak_ptr<Client>> clients ABSL_GUARDED_BY(mu);
    bool stopping ABSL_GUARDED_BY(mu) = false;
  };
  const std::shared_ptr<ReadyQueue> ready_ = std::make_shared<ReadyQueue>();
  // The share: wrong codes so far (all browsers), locked at the limit.
  int wrong_codes_ ABSL_GUARDED_BY(mu_) = 0;
  bool locked_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> dropped_[6] = {};
  std::atomic<uint64_t> pre_hello_{0};
  std::atomic<uint64_t> not_paired_{0};
  std::atomic<uint64_t> paired_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> unknown_client_{0};
  std::atomic<uint64_t> malformed_payloads_{0};
  std::thread pump_;  // last: started once everything above exists
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_RELAY_HOST_H_
