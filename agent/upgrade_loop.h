// The agent's upgraded connections (WebSocket or any HTTP/1.1 Upgrade) once
// the local service has answered 101: one thread relays every one of them,
// waiting in an epoll for their sockets, instead of two threads per
// connection for its whole life.
//
// Per connection, both directions at once, each against its own bound:
// - service -> gateway: bytes are read only while the stream has credit and
//   the session's outbox has room (Outbox::OnRoom); otherwise the socket is
//   not read, its buffer fills and the service slows down. EOF from the
//   service ends the stream's body (half-close), the other way goes on.
// - gateway -> service: the visitor's bytes are written as the socket takes
//   them (EPOLLOUT when it is full), and the window is acknowledged as they
//   are taken; the visitor's end becomes shutdown(SHUT_WR).
// The connection ends when both directions have ended, when either side
// fails, or when no byte moved either way for `idle_timeout`.
//
// Thread-safe: Start, Wake and Cancel from any thread.
#ifndef TUNNEL_AGENT_UPGRADE_LOOP_H_
#define TUNNEL_AGENT_UPGRADE_LOOP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/agent_stream.h"
#include "agent/loop_wakeup.h"
#include "agent/origin_loop.h"

namespace tunnel::agent {

class UpgradeLoop {
 public:
  explicit UpgradeLoop(absl::Duration idle_timeout);
  // Drops what still runs (sessions are told nothing: they are gone).
  ~UpgradeLoop();

  // Relays `s` over `fd` (connected; the service's 101 head already sent
  // towards the gateway); `early`: bytes the service sent after its head.
  // Takes ownership of `fd`.
  void Start(std::shared_ptr<AgentStream> s, OriginSession session, int fd,
             std::string early);
  // Data or credit arrived for `s`.
  void Wake(std::shared_ptr<AgentStream> s);
  // The gateway cancelled `s` (already aborted): close its connection.
  void Cancel(std::shared_ptr<AgentStream> s);
  // Connections being relayed now.
  size_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  struct Relay;
  enum class Op { kStart, kWake, kCancel };
  struct Command {
    Op op;
    std::shared_ptr<AgentStream> stream;
    OriginSession session;
    int fd = -1;
    std::string early;
  };

  void Post(Command c);
  void Run();
  void Begin(Command c);
  // Moves what can move both ways; ends the relay when it is over.
  void Pump(Relay* r);
  // Service -> gateway; false when the relay failed (and was ended).
  bool FromService(Relay* r);
  // Gateway -> service; false when the relay failed (and was ended).
  bool ToService(Relay* r);
  // Sends what waits for credit and room; true once nothing waits.
  bool Flush(Relay* r);
  void Fail(Relay* r, const std::string& message);
  void End(Relay* r);
  void Watch(Relay* r);  // the socket's epoll interest, as the state needs
  void Touch(Relay* r);  // its session's writer needs waking this round

  const absl::Duration idle_timeout_;
  int epoll_fd_ = -1;  // the connections' sockets and the wakeup's eventfd
  std::atomic<size_t> size_{0};
  // Commands waiting, or room in an outbox.
  const std::shared_ptr<LoopWakeup> wakeup_ = std::make_shared<LoopWakeup>();

  absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Loop thread only.
  absl::flat_hash_map<AgentStream*, std::unique_ptr<Relay>> relays_;
  absl::flat_hash_map<int, Relay*> by_fd_;
  absl::flat_hash_map<common::Outbox*, std::shared_ptr<void>> room_asked_;
  absl::flat_hash_map<common::Outbox*, std::shared_ptr<void>> touched_;
  std::thread thread_;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_UPGRADE_LOOP_H_
