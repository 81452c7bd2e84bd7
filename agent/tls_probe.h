// Says why a TLS connection to the gateway fails. gRPC reports a failed
// handshake only as "failed to connect"; this repeats the handshake with
// OpenSSL and the same settings (roots, client certificate, name checked)
// to name the cause and what to change.
//
// Thread-safe (stateless).
#ifndef TUNNEL_AGENT_TLS_PROBE_H_
#define TUNNEL_AGENT_TLS_PROBE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/tls.h"

namespace tunnel::agent {

struct TlsProbeOptions {
  std::string gateway;      // host:port
  std::string server_name;  // name to check; empty: the host of `gateway`
  std::string roots_pem;    // trusted roots
  common::CertAndKey client;
  absl::Duration timeout = absl::Seconds(10);
};

// OK if a TLS session comes up and the gateway keeps it (the failure lies
// elsewhere). Otherwise the status says what went wrong:
//   FAILED_PRECONDITION  the gateway's certificate is not trusted, expired,
//                        or not valid for the name (permanent);
//   PERMISSION_DENIED    the gateway requires a client certificate or
//                        refused ours (permanent);
//   UNAVAILABLE          not reachable, or no TLS answer (retryable).
absl::Status ProbeTls(const TlsProbeOptions& options);

// "host:port" or "[v6]:port" (the --gateway form) -> parts; false if it is
// not of that form.
bool SplitGateway(const std::string& addr, std::string* host, int* port);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_TLS_PROBE_H_
