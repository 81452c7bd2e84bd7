// gRPC's own log lines (its core library logs handshake failures and the
// like as "E1204 12:00:00.000 ssl_transport_security.cc:…") go through our
// logger: one format (text or JSON), our levels, our --log-level.
//
// Threads: call once at start, before gRPC is used; the hook itself is
// thread-safe.
#ifndef TUNNEL_COMMON_GRPC_LOG_H_
#define TUNNEL_COMMON_GRPC_LOG_H_

namespace tunnel::common {

// gRPC's errors become warnings (the events they describe are ours to
// report: a refused connection, a failed handshake), its info and debug
// lines debug.
void RouteGrpcLogs();

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_GRPC_LOG_H_
