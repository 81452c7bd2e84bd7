// grpc_floor: what one message each way on one gRPC bidi stream costs on
// this machine, with no tunnel code in it. With one message in flight it is
// the floor under the tunnel's latency at concurrency 1, which needs at
// least this round trip; with many in flight, and B as large as a batch of
// envelopes, it is gRPC's share of the tunnel's CPU under load.
//
//   grpc_floor [--round-trips N] [--bytes B] [--in-flight W]
//
// A generic (no .proto) echo server runs in this process on 127.0.0.1:0,
// plaintext HTTP/2, with one completion-queue thread, as the gateway's
// TunnelService does; the client keeps one read posted and writes B-byte
// messages while fewer than W await their echo, N in all on one stream
// (defaults 20000, 200, 1; a first tenth more is a warm-up, not counted).
// Prints each message's round trip (write to echo) at p50/p90/p99 in
// microseconds, the process's CPU per round trip (both ends together) and
// round trips per second:
//   grpc round trip (B bytes, W in flight): p50 X us, p90 Y us, p99 Z us;
//   CPU C us per round trip, R round trips/s
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace {

constexpr char kMethod[] = "/floor.Echo/Chat";

// Tags on the server's completion queue.
enum ServerTag : intptr_t { kNewCall = 1, kRead, kWrite, kFinish };

// Echoes every message of the one call it takes, on its own thread: one
// read always posted, and one write whenever an echo is waiting.
class EchoServer {
 public:
  EchoServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterAsyncGenericService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    service_.RequestCall(&ctx_, &stream_, cq_.get(), cq_.get(),
                         reinterpret_cast<void*>(kNewCall));
    thread_ = std::thread([this] { Run(); });
  }
  ~EchoServer() {
    {
      // No operation may start once the queue is shut down.
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    server_->Shutdown(std::chrono::system_clock::now());
    cq_->Shutdown();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  // Starts an operation on the stream unless the server is closing.
  template <typename F>
  void Start(F op) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closing_) op();
  }

  void Run() {
    void* tag;
    bool ok;
    bool writing = false, reading = false;
    auto next_write = [&] {
      if (writing || echoes_.empty()) return;
      out_ = std::move(echoes_.front());
      echoes_.pop_front();
      writing = true;
      Start([&] { stream_.Write(out_, reinterpret_cast<void*>(kWrite)); });
    };
    while (cq_->Next(&tag, &ok)) {
      switch (reinterpret_cast<intptr_t>(tag)) {
        case kNewCall:
          if (!ok) break;
          reading = true;
          Start([&] { stream_.Read(&in_, reinterpret_cast<void*>(kRead)); });
          break;
        case kRead:
          reading = false;
          if (ok) {
            echoes_.push_back(std::move(in_));
            reading = true;
            Start([&] { stream_.Read(&in_, reinterpret_cast<void*>(kRead)); });
            next_write();
          } else if (!writing) {
            Start([&] {
              stream_.Finish(grpc::Status::OK,
                             reinterpret_cast<void*>(kFinish));
            });
          }
          break;
        case kWrite:
          writing = false;
          if (!ok) break;
          next_write();
          if (!writing && !reading) {
            Start([&] {
              stream_.Finish(grpc::Status::OK,
                             reinterpret_cast<void*>(kFinish));
            });
          }
          break;
        default:
          break;
      }
    }
  }

  int port_ = 0;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_{&ctx_};
  grpc::ByteBuffer in_, out_;
  std::deque<grpc::ByteBuffer> echoes_;
  std::mutex mu_;
  bool closing_ = false;  // guarded by mu_
  std::thread thread_;
};

// Waits for the completion `want` on `cq`.
bool Await(grpc::CompletionQueue& cq, intptr_t want) {
  void* tag;
  bool ok;
  if (!cq.Next(&tag, &ok)) return false;
  if (reinterpret_cast<intptr_t>(tag) != want) {
    std::fprintf(stderr, "grpc_floor: unexpected completion %ld\n",
                 static_cast<long>(reinterpret_cast<intptr_t>(tag)));
    return false;
  }
  return ok;
}

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

bool ParseCount(const char* flag, const char* text, long max, long* out) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || v < 1 || v > max) {
    std::fprintf(stderr,
                 "grpc_floor: %s needs a number from 1 to %ld, got '%s'\n",
                 flag, max, text);
    return false;
  }
  *out = v;
  return true;
}

}  // namespace

constexpr char kUsage[] =
    "usage: grpc_floor [--round-trips N] [--bytes B] [--in-flight W]\n"
    "  one gRPC bidi stream on 127.0.0.1, no tunnel code: N round trips\n"
    "  (default 20000) of B-byte messages (200), W in flight (1); prints\n"
    "  p50/p90/p99 of a round trip, CPU per round trip, round trips/s\n";

int main(int argc, char** argv) {
  long round_trips = 20000;
  long bytes = 200;
  long in_flight = 1;
  for (int i = 1; i < argc; ++i) {
    bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!std::strcmp(argv[i], "--round-trips") && has_value) {
      if (!ParseCount(argv[i], argv[i + 1], 10000000, &round_trips)) return 2;
      ++i;
    } else if (!std::strcmp(argv[i], "--in-flight") && has_value) {
      if (!ParseCount(argv[i], argv[i + 1], 100000, &in_flight)) return 2;
      ++i;
    } else if (!std::strcmp(argv[i], "--bytes") && has_value) {
      if (!ParseCount(argv[i], argv[i + 1], 4 << 20, &bytes)) return 2;
      ++i;
    } else {
      std::fprintf(stderr,
                   "grpc_floor: unknown or incomplete argument '%s'\n%s",
                   argv[i], kUsage);
      return 2;
    }
  }

  EchoServer server;
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()),
                          grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  // The whole run's deadline: a minute, plus a millisecond and 50 ns per
  // byte for each round trip (20 times what one takes here).
  const long total = round_trips + round_trips / 10;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(1) +
                   std::chrono::microseconds(total * (1000 + bytes / 20)));
  auto call = stub.PrepareCall(&ctx, kMethod, &cq);
  // On failure: cancel, collect the status, and drain the queue before it
  // goes (gRPC requires it), then exit 1.
  auto fail = [&](const std::string& what) {
    ctx.TryCancel();
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    cq.Shutdown();
    void* tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
    }
    std::fprintf(stderr, "grpc_floor: %s (%s)\n", what.c_str(),
                 status.error_message().c_str());
    return 1;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!Await(cq, 1)) return fail("the call did not start");

  std::string payload(static_cast<size_t>(bytes), 'x');
  grpc::Slice slice(payload);
  grpc::ByteBuffer out(&slice, 1);
  grpc::ByteBuffer in;
  // The first tenth is a warm-up: neither timed nor counted for CPU.
  const long warmup = total - round_trips;
  std::vector<double> micros;
  micros.reserve(static_cast<size_t>(round_trips));
  std::deque<std::chrono::steady_clock::time_point> sent_at;
  long sent = 0, echoed = 0;
  bool writing = false;
  double cpu0 = CpuSeconds();
  auto wall0 = std::chrono::steady_clock::now();
  // One read always posted, as the tunnel's ends keep one; a write whenever
  // fewer than `in_flight` messages await their echo.
  call->Read(&in, reinterpret_cast<void*>(3));
  while (echoed < total) {
    if (!writing && sent < total && sent - echoed < in_flight) {
      sent_at.push_back(std::chrono::steady_clock::now());
      call->Write(out, reinterpret_cast<void*>(2));
      writing = true;
      ++sent;
    }
    void* tag;
    bool ok;
    if (!cq.Next(&tag, &ok) || !ok) {
      return fail("the stream failed after " + std::to_string(echoed) +
                  " echoes");
    }
    if (reinterpret_cast<intptr_t>(tag) == 2) {
      writing = false;
      continue;
    }
    if (in.Length() != static_cast<size_t>(bytes)) {
      return fail("echo " + std::to_string(echoed) + " has " +
                  std::to_string(in.Length()) + " bytes");
    }
    auto now = std::chrono::steady_clock::now();
    if (echoed >= warmup) {
      micros.push_back(
          std::chrono::duration<double, std::micro>(now - sent_at.front())
              .count());
    }
    sent_at.pop_front();
    if (++echoed == warmup) {
      cpu0 = CpuSeconds();
      wall0 = std::chrono::steady_clock::now();
    }
    if (echoed < total) call->Read(&in, reinterpret_cast<void*>(3));
  }
  double cpu = CpuSeconds() - cpu0;
  double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0)
          .count();
  // The last write's completion may not have been taken yet.
  if (writing && !Await(cq, 2)) return fail("the last write failed");
  call->WritesDone(reinterpret_cast<void*>(4));
  if (!Await(cq, 4)) return fail("closing the stream failed");
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  Await(cq, 5);
  if (!status.ok()) {
    std::fprintf(stderr, "grpc_floor: the call ended with %s\n",
                 status.error_message().c_str());
    return 1;
  }
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }

  std::sort(micros.begin(), micros.end());
  auto at = [&](double q) {
    return micros[static_cast<size_t>(q * (micros.size() - 1))];
  };
  std::printf(
      "grpc round trip (%ld bytes, %ld in flight): p50 %.1f us, p90 %.1f us, "
      "p99 %.1f us; CPU %.1f us per round trip, %.0f round trips/s\n",
      bytes, in_flight, at(0.5), at(0.9), at(0.99), cpu / round_trips * 1e6,
      round_trips / wall);
  return 0;
}
