// Builders for the Envelope messages both sides send, so the wire shape of
// each lives in one place.
#ifndef TUNNEL_COMMON_ENVELOPES_H_
#define TUNNEL_COMMON_ENVELOPES_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::common {

tunnel::v1::Envelope MakeData(uint64_t stream_id, std::string data, bool end);
tunnel::v1::Envelope MakeClose(uint64_t stream_id,
                               tunnel::v1::TunnelClose::Reason reason,
                               absl::string_view message);
tunnel::v1::Envelope MakeWindowUpdate(uint64_t stream_id, uint32_t increment);
tunnel::v1::Envelope MakePing(uint64_t nonce);
tunnel::v1::Envelope MakePong(uint64_t nonce);
tunnel::v1::Envelope MakeGoAway(absl::string_view reason,
                                absl::Duration retry_after);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ENVELOPES_H_
