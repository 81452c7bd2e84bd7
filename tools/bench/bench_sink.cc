// bench_sink: the local service for the upload and slow-request benchmarks
// (nginx serves the static files). Listens on 127.0.0.1 only.
//
//   POST|PUT /upload      reads the body as it streams, answers its length
//   GET /slow?ms=N        answers 100 bytes after N ms (a slow backend)
//
// Usage: bench_sink [--port N] [--threads N]; prints "port N" when ready.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "common/flags.h"
#include "httplib.h"

int main(int argc, char** argv) {
  int64_t port = 0;
  int64_t threads = 1200;
  tunnel::common::FlagSet flags("bench_sink: upload sink and slow backend\n",
                                "BENCH_SINK_");
  flags.Int("port", &port, "port on 127.0.0.1 (0: any)");
  flags.Int("threads", &threads, "worker threads");
  auto rest = flags.Parse(argc, argv);
  if (!rest.ok()) {
    std::fprintf(stderr, "bench_sink: %s\n",
                 std::string(rest.status().message()).c_str());
    return 2;
  }
  httplib::Server server;
  server.new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  server.set_keep_alive_max_count(1000000);
  server.set_read_timeout(60);
  auto upload = [](const httplib::Request&, httplib::Response& res,
                   const httplib::ContentReader& reader) {
    uint64_t n = 0;
    reader([&](const char*, size_t len) {
      n += len;
      return true;
    });
    res.set_content(std::to_string(n), "text/plain");
  };
  server.Post("/upload", upload);
  server.Put("/upload", upload);
  server.Get("/slow", [](const httplib::Request& req, httplib::Response& res) {
    int ms = 1000;
    if (req.has_param("ms")) {
      (void)absl::SimpleAtoi(req.get_param_value("ms"), &ms);
    }
    // The benchmark's subject is a backend that takes this long.
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    res.set_content(std::string(100, 's'), "text/plain");
  });
  int bound = port == 0
                  ? server.bind_to_any_port("127.0.0.1")
                  : (server.bind_to_port("127.0.0.1", static_cast<int>(port))
                         ? static_cast<int>(port)
                         : -1);
  if (bound < 0) {
    std::fprintf(stderr, "bench_sink: cannot bind\n");
    return 1;
  }
  std::printf("port %d\n", bound);
  std::fflush(stdout);
  server.listen_after_bind();
  return 0;
}
