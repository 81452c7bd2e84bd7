#include "httpfront/upgrade_relay.h"

#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "httpfront/front_server.h"

namespace tunnel::httpfront {

void RelayUpgrade(server::TunnelStream& stream,
                  const tunnel::v1::TunnelResponse& resp, RequestRecord* record,
                  const UpgradeOptions& options) {
  FrontServer::Hijacked hijacked = FrontServer::HijackCurrentConnection();
  Connection* conn = hijacked.conn;
  if (conn == nullptr) {
    stream.Cancel("no connection to upgrade");
    return;
  }
  const absl::Duration idle = options.idle_timeout;
  std::string head = "HTTP/1.1 101 Switching Protocols\r\n";
  auto add = [&](absl::string_view name, absl::string_view value) {
    if (!common::IsValidHeaderName(name) ||
        !common::IsValidHeaderValue(value) ||
        absl::EqualsIgnoreCase(name, "X-Request-Id")) {
      return;
    }
    absl::StrAppend(&head, name, ": ", value, "\r\n");
  };
  common::ForEachField(resp, add);
  if (!options.request_id.empty()) {
    absl::StrAppend(&head, "X-Request-Id: ", options.request_id, "\r\n");
  }
  head += "\r\n";
  if (!conn->WriteAll(head, options.write_timeout) ||
      (!hijacked.buffered.empty() &&
       !stream.SendBody(hijacked.buffered, absl::Now() + idle).ok())) {
    stream.Cancel("the visitor's upgraded connection failed");
    record->cut = true;
    return;
  }
  record->AddIn(hijacked.buffered.size());
  // Service -> visitor on a second fiber; visitor -> service here.
  std::unique_ptr<FrontServer::Sibling> down =
      FrontServer::RunOnSiblingFiber([&stream, conn, idle, record] {
        while (true) {
          absl::StatusOr<common::Chunk> c = stream.ReadBody(absl::Now() + idle);
          if (!c.ok() || (!c->data.empty() && !conn->WriteAll(c->data, idle))) {
            conn->ShutdownBoth();  // ends the other direction too
            return;
          }
          record->AddOut(c->data.size());
          if (c->end) {
            conn->ShutdownWrite();  // the service half-closed
            return;
          }
        }
      });
  if (down == nullptr) {
    stream.Cancel("the gateway cannot relay this connection now");
    record->cut = true;
    return;
  }
  // On the fiber's stack: 16 KiB per read is plenty for interactive traffic.
  char buf[16 * 1024];
  while (true) {
    ssize_t n = conn->Read(buf, sizeof(buf), idle);
    if (n == 0) {
      (void)stream.FinishBody();  // the visitor half-closed
      break;
    }
    if (n < 0 ||
        !stream.SendBody(absl::string_view(buf, n), absl::Now() + idle).ok()) {
      stream.Cancel("the upgraded connection closed or went idle");
      conn->ShutdownBoth();
      break;
    }
    record->AddIn(static_cast<size_t>(n));
  }
  down->Join();
}

}  // namespace tunnel::httpfront
