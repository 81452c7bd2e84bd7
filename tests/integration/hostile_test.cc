// Hostile input on both sides of a real gateway on loopback.
//
// Agents: a "hostile agent" authenticates like the real one (SignAuthMetadata
// and the generated TunnelService stub) and then breaks protocol rules. Each
// break is counted in tunnel_protocol_violations_total and closes the
// offending stream or session, while a healthy agent and its service keep
// serving visitors throughout.
//
// Visitors: raw TCP connections send malformed or oversized request heads;
// each gets a 4xx status line and a closed connection, and a normal request
// on another connection still works.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "agent/local_target.h"
#include "common/envelopes.h"
#include "common/header_block.h"
#include "common/hmac_auth.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

constexpr char kHealthy[] = "cam-01";
constexpr char kHostile[] = "evil-01";

// The value of one series (`name{labels}` exactly as rendered), 0 if absent.
double Metric(server::Gateway& gw, absl::string_view series) {
  return MetricValue(gw, series, 0);
}

// This process's resident memory (the gateway runs in it), in KiB.
int64_t RssKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

double Violations(server::Gateway& gw, absl::string_view kind) {
  return Metric(gw, absl::StrCat("tunnel_protocol_violations_total{kind=\"",
                                 kind, "\"}"));
}

// An agent that speaks the real protocol on the real stub, under the test's
// control.
class HostileAgent {
 public:
  // `small_window`: the channel announces a small receive window and no
  // more unless the test reads (an agent that stops reading then really
  // holds the gateway's messages back).
  // `batch_bytes`: batches offered at connect (0: none, as older agents);
  // `header_blocks`: header blocks offered (not by older agents).
  HostileAgent(TunnelHarness& h, const std::string& agent_id,
               bool small_window = false, uint32_t batch_bytes = 0,
               bool header_blocks = false) {
    grpc::ChannelArguments args;
    if (small_window) {
      args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
    }
    channel_ = grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", h.gateway().grpc_port()),
        grpc::InsecureChannelCredentials(), args);
    stub_ = tunnel::v1::TunnelService::NewStub(channel_);
    ctx_.set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(60));
    for (const auto& c : h.credentials().credentials()) {
      if (c.agent_id() != agent_id) continue;
      auto md = common::SignAuthMetadata(agent_id, c.token_id(), c.secret(),
                                         absl::Now());
      EXPECT_TRUE(md.ok()) << md.status();
      if (md.ok()) {
        for (const auto& [k, v] : *md) ctx_.AddMetadata(k, v);
      }
    }
    stream_ = stub_->Connect(&ctx_);
    Envelope hello;
    auto* c = hello.mutable_connect();
    c->set_protocol_version(tunnel::v1::PROTOCOL_VERSION_1);
    c->set_agent_id(agent_id);
    c->add_tunnels()->set_slug(agent_id);
    c->set_max_batch_bytes(batch_bytes);
    c->set_header_blocks(header_blocks);
    EXPECT_TRUE(stream_->Write(hello));
    std::optional<Envelope> answer = Next();
    EXPECT_TRUE(answer.has_value() && answer->has_accepted())
        << (answer ? answer->DebugString() : "call ended");
    if (answer.has_value()) accepted_ = answer->accepted();
  }

  const tunnel::v1::ConnectAccepted& accepted() const { return accepted_; }

  bool Send(const Envelope& e) { return stream_->Write(e); }

  // The next message that is not a ping or a window update (a batch's
  // envelopes one by one); nullopt once the gateway ended the call.
  std::optional<Envelope> Next() {
    while (true) {
      if (pending_.empty()) {
        Envelope e;
        if (!stream_->Read(&e)) return std::nullopt;
        if (e.has_batch()) {
          for (Envelope& m : *e.mutable_batch()->mutable_envelopes()) {
            pending_.push_back(std::move(m));
          }
        } else {
          pending_.push_back(std::move(e));
        }
        continue;
      }
      Envelope e = std::move(pending_.front());
      pending_.pop_front();
      if (e.has_control() &&
          (e.control().has_ping() || e.control().has_window_update())) {
        continue;
      }
      return e;
    }
  }

  // Ends the call from this side.
  void Cancel() { ctx_.TryCancel(); }

  // Reads until the gateway ends the call; its status.
  grpc::Status Finish() {
    Envelope e;
    while (stream_->Read(&e)) {
    }
    return stream_->Finish();
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tunnel::v1::TunnelService::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<Envelope, Envelope>> stream_;
  tunnel::v1::ConnectAccepted accepted_;
  std::deque<Envelope> pending_;
};

Envelope Batch(std::vector<Envelope> members) {
  Envelope e;
  auto* b = e.mutable_batch();
  for (Envelope& m : members) *b->add_envelopes() = std::move(m);
  return e;
}

Envelope Response(uint64_t id, uint32_t status, std::string body, bool end) {
  Envelope e;
  auto* r = e.mutable_response();
  r->set_stream_id(id);
  r->set_status(status);
  r->set_body(std::move(body));
  r->set_end_stream(end);
  return e;
}

// A visitor request on its own thread (the hostile agent answers it on the
// test's thread).
class PendingVisit {
 public:
  PendingVisit(TunnelHarness& h, const std::string& slug) {
    thread_ = std::thread([this, &h, slug] {
      auto cli = h.Visitor();
      cli->set_read_timeout(30, 0);
      auto res = cli->Get(TunnelHarness::Path(slug, "/x"));
      if (res) {
        status_ = res->status;
        body_ = res->body;
      }
    });
  }
  ~PendingVisit() { Join(); }
  // The status (0: no complete response).
  int Join() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }
  const std::string& body() const { return body_; }

 private:
  std::thread thread_;
  int status_ = 0;
  std::string body_;
};

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    svc_.server().Get("/hello",
                      [](const httplib::Request&, httplib::Response& res) {
                        res.set_content("hello", "text/plain");
                      });
    svc_.Start();
  }

  void Start(std::function<void(server::GatewayOptions&)> tweak = nullptr) {
    h_.StartGateway(std::move(tweak));
    h_.StartAgent(kHealthy, {svc_.url()});
    ExpectHealthyServes();
  }

  // The healthy agent's tunnel answers, on a fresh connection.
  void ExpectHealthyServes() {
    auto res = h_.Visitor()->Get(TunnelHarness::Path(kHealthy, "/hello"));
    ASSERT_TRUE(res) << "healthy tunnel did not answer";
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, "hello");
  }

  // A stream the gateway opened on `agent` for a visitor.
  uint64_t AwaitRequest(HostileAgent& agent) {
    std::optional<Envelope> e = agent.Next();
    EXPECT_TRUE(e.has_value() && e->has_request())
        << (e ? e->DebugString() : "call ended");
    return e && e->has_request() ? e->request().stream_id() : 0;
  }

  LocalService svc_;
  TunnelHarness h_{{kHealthy, kHostile}};
};

TEST_F(HostileTest, WrongKindsAfterTheHandshakeCloseOnlyThatSession) {
  Start();
  std::vector<std::pair<Envelope, std::string>> cases;
  {
    Envelope e;
    e.mutable_connect()->set_agent_id(kHostile);
    e.mutable_connect()->add_tunnels()->set_slug(kHostile);
    cases.emplace_back(e, "a second connect request");
  }
  {
    Envelope e;
    e.mutable_request()->set_stream_id(1);
    cases.emplace_back(e, "a request (only the gateway opens streams)");
  }
  {
    Envelope e;
    e.mutable_accepted()->set_session_id("x");
    cases.emplace_back(e, "an accepted message");
  }
  {
    Envelope e;
    e.mutable_connect_error()->set_message("x");
    cases.emplace_back(e, "a connect_error");
  }
  cases.emplace_back(Envelope(), "an envelope with no message set");
  double counted = 0;
  for (const auto& [envelope, what] : cases) {
    SCOPED_TRACE(what);
    HostileAgent evil(h_, kHostile);
    ASSERT_TRUE(h_.WaitForSessions(2));
    EXPECT_TRUE(evil.Send(envelope));
    grpc::Status s = evil.Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("protocol violation (unexpected_message)"));
    EXPECT_THAT(s.error_message(), HasSubstr(what));
    EXPECT_EQ(Violations(h_.gateway(), "unexpected_message"), ++counted);
    ASSERT_TRUE(h_.WaitForSessions(1));
    ExpectHealthyServes();
  }
}

TEST_F(HostileTest, StreamIdsTheGatewayNeverOpenedCloseTheSession) {
  Start();
  // Stream 1 exists (a visitor waits on it); 2 and up were never opened.
  const std::vector<std::pair<Envelope, std::string>> cases = {
      {Response(7, 200, "", true), "a response for stream 7"},
      {common::MakeData(2, "x", false), "data for stream 2"},
      {common::MakeWindowUpdate(1000, 1), "a window update for stream 1000"},
      {common::MakeClose(0, TunnelClose::LOCAL_ERROR, ""),
       "a close for stream 0"},
  };
  double counted = 0;
  for (const auto& [envelope, what] : cases) {
    SCOPED_TRACE(what);
    HostileAgent evil(h_, kHostile);
    ASSERT_TRUE(h_.WaitForSessions(2));
    PendingVisit visit(h_, kHostile);
    ASSERT_EQ(AwaitRequest(evil), 1u);
    EXPECT_TRUE(evil.Send(envelope));
    grpc::Status s = evil.Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("protocol violation (unknown_stream)"));
    EXPECT_THAT(s.error_message(),
                HasSubstr(absl::StrCat(what, ", which the gateway never")));
    EXPECT_EQ(Violations(h_.gateway(), "unknown_stream"), ++counted);
    // The session's visitor learns that its agent went away.
    EXPECT_EQ(visit.Join(), 502);
    ASSERT_TRUE(h_.WaitForSessions(1));
    ExpectHealthyServes();
  }
}

TEST_F(HostileTest, LateMessagesForAnEndedStreamAreDroppedNotPunished) {
  Start();
  HostileAgent evil(h_, kHostile);
  ASSERT_TRUE(h_.WaitForSessions(2));
  uint64_t id;
  {
    PendingVisit visit(h_, kHostile);
    id = AwaitRequest(evil);
    ASSERT_TRUE(evil.Send(Response(id, 200, "done", true)));
    ASSERT_EQ(visit.Join(), 200);
    EXPECT_EQ(visit.body(), "done");
  }
  // The visitor has its answer, so the stream is gone: these are what a
  // race leaves behind, not a broken agent.
  EXPECT_TRUE(evil.Send(common::MakeData(id, "more", true)));
  EXPECT_TRUE(evil.Send(Response(id, 200, "", true)));
  EXPECT_TRUE(evil.Send(common::MakeWindowUpdate(id, 100)));
  EXPECT_TRUE(evil.Send(common::MakeClose(id, TunnelClose::LOCAL_ERROR, "")));
  // The session still serves: a new stream gets an answer through it.
  PendingVisit next(h_, kHostile);
  uint64_t id2 = AwaitRequest(evil);
  EXPECT_GT(id2, id);
  ASSERT_TRUE(evil.Send(Response(id2, 200, "still here", true)));
  EXPECT_EQ(next.Join(), 200);
  EXPECT_EQ(next.body(), "still here");
  for (const char* kind : {"unknown_stream", "data_after_end", "flow_control",
                           "duplicate_response"}) {
    EXPECT_EQ(Violations(h_.gateway(), kind), 0) << kind;
  }
  ExpectHealthyServes();
}

TEST_F(HostileTest, StreamRuleBreaksCloseOnlyThatStream) {
  Start();
  HostileAgent evil(h_, kHostile);
  ASSERT_TRUE(h_.WaitForSessions(2));
  struct Case {
    std::string kind;
    std::vector<Envelope> (*send)(uint64_t id);
    TunnelClose::Reason reason;
    int visitor_status;  // 0: the response breaks off after its head
  };
  const std::vector<Case> cases = {
      {"invalid_status",
       [](uint64_t id) {
         return std::vector<Envelope>{Response(id, 600, "", true)};
       },
       TunnelClose::PROTOCOL_ERROR, 502},
      {"invalid_status",
       [](uint64_t id) {
         return std::vector<Envelope>{Response(id, 99, "", true)};
       },
       TunnelClose::PROTOCOL_ERROR, 502},
      {"oversized_chunk",
       [](uint64_t id) {
         return std::vector<Envelope>{
             Response(id, 200, std::string(64 * 1024 + 1, 'b'), true)};
       },
       TunnelClose::PROTOCOL_ERROR, 502},
      {"oversized_chunk",
       [](uint64_t id) {
         return std::vector<Envelope>{
             common::MakeData(id, std::string(64 * 1024 + 1, 'b'), false)};
       },
       TunnelClose::PROTOCOL_ERROR, 502},
      {"flow_control",
       [](uint64_t id) {
         return std::vector<Envelope>{common::MakeWindowUpdate(id, 0x7fffffff)};
       },
       TunnelClose::FLOW_CONTROL_ERROR, 502},
      {"invalid_header",
       [](uint64_t id) {
         // A header block whose first length runs past its end.
         Envelope e = Response(id, 200, "", true);
         e.mutable_response()->set_header_block(
             std::string("\x05"
                         "ab"));
         return std::vector<Envelope>{e};
       },
       TunnelClose::PROTOCOL_ERROR, 502},
      {"duplicate_response",
       [](uint64_t id) {
         return std::vector<Envelope>{Response(id, 200, "", false),
                                      Response(id, 200, "", false)};
       },
       TunnelClose::PROTOCOL_ERROR, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.kind);
    const double before = Violations(h_.gateway(), c.kind);
    PendingVisit visit(h_, kHostile);
    uint64_t id = AwaitRequest(evil);
    for (const Envelope& e : c.send(id)) ASSERT_TRUE(evil.Send(e));
    std::optional<Envelope> close = evil.Next();
    ASSERT_TRUE(close.has_value() && close->has_close())
        << (close ? close->DebugString() : "call ended");
    EXPECT_EQ(close->close().stream_id(), id);
    EXPECT_EQ(close->close().reason(), c.reason);
    EXPECT_EQ(Violations(h_.gateway(), c.kind), before + 1);
    int status = visit.Join();
    if (c.visitor_status != 0) {
      EXPECT_EQ(status, c.visitor_status);
    } else {
      EXPECT_NE(status, 200);
    }
    // The same session serves the next stream.
    PendingVisit next(h_, kHostile);
    uint64_t id2 = AwaitRequest(evil);
    ASSERT_TRUE(evil.Send(Response(id2, 200, "fine", true)));
    EXPECT_EQ(next.Join(), 200);
    ExpectHealthyServes();
  }
  EXPECT_EQ(h_.gateway().registry().session_count(), 2u);
}

// Reads a connection until the peer closes it (bounded by SO_RCVTIMEO);
// `*closed` tells EOF from a timeout or error.
std::string ReadUntilClosed(int fd, bool* closed) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  char buf[4096];
  *closed = false;
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) {
      *closed = true;
      break;
    }
    if (n < 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Sends `raw` on a new connection; what came back and whether it was closed.
std::string RawExchange(int port, const std::string& raw, bool* closed) {
  int fd = ConnectLoopback(port);
  EXPECT_GE(fd, 0);
  if (fd < 0) return "";
  EXPECT_EQ(send(fd, raw.data(), raw.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(raw.size()));
  std::string got = ReadUntilClosed(fd, closed);
  close(fd);
  return got;
}

TEST_F(HostileTest, UnsafeResponseHeadersFromAnAgentAreDroppedNotInjected) {
  Start();
  HostileAgent evil(h_, kHostile);
  ASSERT_TRUE(h_.WaitForSessions(2));
  std::string got;
  bool closed = false;
  std::thread visitor([&] {
    got = RawExchange(h_.gateway().http_port(),
                      absl::StrCat("GET ", TunnelHarness::Path(kHostile, "/"),
                                   " HTTP/1.1\r\nHost: localhost\r\n"
                                   "Connection: close\r\n\r\n"),
                      &closed);
  });
  uint64_t id = AwaitRequest(evil);
  Envelope e = Response(id, 200, "body", true);
  auto add = [&](std::string name, std::string value) {
    auto* hd = e.mutable_response()->add_headers();
    hd->set_name(std::move(name));
    hd->set_value(std::move(value));
  };
  add("X-Good", "1");
  add("X-Split", "a\r\nSet-Cookie: injected=1");
  add("X-Lf", "a\nX-Injected: 2");
  add("X-Nul", std::string("a\0b", 3));
  add("Bad Name", "x");
  add("X-Colon:Set-Cookie", "injected=3");
  add("", "empty name");
  ASSERT_TRUE(evil.Send(e));
  visitor.join();
  EXPECT_TRUE(closed);
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(got, HasSubstr("X-Good: 1\r\n"));
  EXPECT_THAT(got, HasSubstr("\r\n\r\nbody"));
  for (const char* bad : {"injected", "Injected", "X-Split", "X-Lf", "X-Nul",
                          "Bad Name", "empty name"}) {
    EXPECT_THAT(got, Not(HasSubstr(bad)));
  }
  // One response with unsafe fields: one violation.
  EXPECT_EQ(Violations(h_.gateway(), "invalid_header"), 1);
  EXPECT_EQ(h_.gateway().registry().session_count(), 2u);
  ExpectHealthyServes();
}

// The fields of a head, whichever form they came in.
std::vector<std::pair<std::string, std::string>> FieldsOf(
    const tunnel::v1::TunnelRequest& head) {
  std::vector<std::pair<std::string, std::string>> out;
  EXPECT_TRUE(common::ForEachField(
      head, [&](absl::string_view name, absl::string_view value) {
        out.emplace_back(std::string(name), std::string(value));
      }));
  return out;
}

TEST_F(HostileTest, AnAgentThatOffersNoHeaderBlocksGetsHeaderFields) {
  Start();
  HostileAgent old(h_, kHostile);
  ASSERT_TRUE(h_.WaitForSessions(2));
  EXPECT_FALSE(old.accepted().header_blocks());
  PendingVisit visit(h_, kHostile);
  std::optional<Envelope> e = old.Next();
  ASSERT_TRUE(e.has_value() && e->has_request());
  const tunnel::v1::TunnelRequest& r = e->request();
  EXPECT_TRUE(r.header_block().empty());
  EXPECT_NE(common::FindHeader(r.headers(), "X-Forwarded-For"), nullptr);
  EXPECT_NE(common::FindHeader(r.headers(), "X-Request-Id"), nullptr);
  ASSERT_TRUE(old.Send(Response(r.stream_id(), 200, "fine", true)));
  EXPECT_EQ(visit.Join(), 200);
}

TEST_F(HostileTest, HeaderBlocksOnceAgreedAndTheirUnsafeFieldsDropped) {
  Start();
  HostileAgent evil(h_, kHostile, /*small_window=*/false, /*batch_bytes=*/0,
                    /*header_blocks=*/true);
  ASSERT_TRUE(h_.WaitForSessions(2));
  EXPECT_TRUE(evil.accepted().header_blocks());
  std::string got;
  bool closed = false;
  std::thread visitor([&] {
    got = RawExchange(
        h_.gateway().http_port(),
        absl::StrCat("GET ", TunnelHarness::Path(kHostile, "/"),
                     " HTTP/1.1\r\nHost: localhost\r\nX-Visitor: v\r\n"
                     "Connection: close\r\nX-Hop: h\r\n"
                     "Connection: X-Hop\r\n\r\n"),
        &closed);
  });
  std::optional<Envelope> req = evil.Next();
  ASSERT_TRUE(req.has_value() && req->has_request());
  // The request's fields came packed, hop-by-hop ones left at the gateway.
  EXPECT_EQ(req->request().headers_size(), 0);
  EXPECT_FALSE(req->request().header_block().empty());
  auto fields = FieldsOf(req->request());
  auto has = [&](absl::string_view name) {
    for (const auto& [n, v] : fields) {
      if (absl::EqualsIgnoreCase(n, name)) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("X-Visitor"));
  EXPECT_TRUE(has("X-Forwarded-For"));
  EXPECT_TRUE(has("X-Request-Id"));
  EXPECT_FALSE(has("Connection"));
  EXPECT_FALSE(has("X-Hop"));

  Envelope e = Response(req->request().stream_id(), 200, "body", true);
  std::string* block = e.mutable_response()->mutable_header_block();
  common::AppendField(block, "X-Good", "1");
  common::AppendField(block, "X-Split", "a\r\nSet-Cookie: injected=1");
  common::AppendField(block, "X-Nul", std::string("a\0b", 3));
  common::AppendField(block, "Bad Name", "x");
  common::AppendField(block, "X-Also-Good", "2");
  ASSERT_TRUE(evil.Send(e));
  visitor.join();
  EXPECT_TRUE(closed);
  EXPECT_THAT(got, HasSubstr("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(got, HasSubstr("X-Good: 1\r\n"));
  EXPECT_THAT(got, HasSubstr("X-Also-Good: 2\r\n"));
  EXPECT_THAT(got, HasSubstr("\r\n\r\nbody"));
  for (const char* bad : {"injected", "X-Split", "X-Nul", "Bad Name"}) {
    EXPECT_THAT(got, Not(HasSubstr(bad)));
  }
  EXPECT_EQ(Violations(h_.gateway(), "invalid_header"), 1);
  EXPECT_EQ(h_.gateway().registry().session_count(), 2u);
  ExpectHealthyServes();
}

TEST_F(HostileTest, BadBatchesCloseOnlyThatSession) {
  Start();
  struct Case {
    uint32_t offer;
    Envelope batch;
    std::string what;
  };
  std::vector<Case> cases;
  cases.push_back({0, Batch({common::MakePing(1), common::MakePing(2)}),
                   "a batch, which it did not agree to at connect"});
  cases.push_back({64 << 10, Batch({}), "an empty batch"});
  cases.push_back({64 << 10,
                   Batch({common::MakePing(1), Batch({common::MakePing(2)})}),
                   "a batch inside a batch"});
  {
    Envelope connect;
    connect.mutable_connect()->set_agent_id(kHostile);
    cases.push_back({64 << 10, Batch({common::MakePing(1), connect}),
                     "a handshake message inside a batch"});
  }
  double counted = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    HostileAgent evil(h_, kHostile, false, c.offer);
    ASSERT_TRUE(h_.WaitForSessions(2));
    EXPECT_EQ(evil.accepted().max_batch_bytes(), c.offer);
    EXPECT_TRUE(evil.Send(c.batch));
    grpc::Status s = evil.Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("protocol violation (invalid_batch)"));
    EXPECT_THAT(s.error_message(), HasSubstr(c.what));
    EXPECT_EQ(Violations(h_.gateway(), "invalid_batch"), ++counted);
    ASSERT_TRUE(h_.WaitForSessions(1));
    ExpectHealthyServes();
  }
}

TEST_F(HostileTest, ABatchOverTheAgreedSizeEndsTheSession) {
  Start(
      [](server::GatewayOptions& o) { o.service.max_batch_bytes = 16 * 1024; });
  // The agent offers more; the smaller limit holds.
  HostileAgent evil(h_, kHostile, false, 64 << 10);
  ASSERT_TRUE(h_.WaitForSessions(2));
  EXPECT_EQ(evil.accepted().max_batch_bytes(), 16u * 1024);
  // Each member alone would be fine (far under --max-agent-message).
  EXPECT_TRUE(
      evil.Send(Batch({common::MakeData(1, std::string(10000, 'x'), false),
                       common::MakeData(2, std::string(10000, 'y'), false)})));
  grpc::Status s = evil.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("a batch of"));
  EXPECT_EQ(Violations(h_.gateway(), "oversized_message"), 1);
  EXPECT_EQ(Violations(h_.gateway(), "unknown_stream"), 0);
  ASSERT_TRUE(h_.WaitForSessions(1));
  ExpectHealthyServes();
}

TEST_F(HostileTest, EachEnvelopeInABatchIsJudgedAlone) {
  Start();
  HostileAgent evil(h_, kHostile, false, 64 << 10);
  ASSERT_TRUE(h_.WaitForSessions(2));
  PendingVisit good(h_, kHostile);
  const uint64_t good_id = AwaitRequest(evil);
  PendingVisit bad(h_, kHostile);
  const uint64_t bad_id = AwaitRequest(evil);
  ASSERT_NE(good_id, 0u);
  ASSERT_NE(bad_id, 0u);
  // One batch: a good head and body for one stream, a status out of range
  // for the other. Only the second stream is closed.
  EXPECT_TRUE(evil.Send(Batch({Response(good_id, 200, "he", false),
                               Response(bad_id, 42, "", true),
                               common::MakeData(good_id, "llo", true)})));
  EXPECT_EQ(good.Join(), 200);
  EXPECT_EQ(good.body(), "hello");
  EXPECT_EQ(bad.Join(), 502);
  EXPECT_EQ(Violations(h_.gateway(), "invalid_status"), 1);
  std::optional<Envelope> close = evil.Next();
  ASSERT_TRUE(close.has_value() && close->has_close());
  EXPECT_EQ(close->close().stream_id(), bad_id);
  EXPECT_EQ(h_.gateway().registry().session_count(), 2u);
}

TEST_F(HostileTest, OversizedMessageEndsTheSessionWithResourceExhausted) {
  Start([](server::GatewayOptions& o) {
    o.service.max_message_bytes = 256 * 1024;
  });
  HostileAgent evil(h_, kHostile);
  ASSERT_TRUE(h_.WaitForSessions(2));
  // Over the limit (under gRPC's own cap, twice it) the size is checked
  // before the envelope is applied, so it is not seen as data for a stream
  // the gateway never opened; and it is counted exactly, not inferred.
  EXPECT_TRUE(
      evil.Send(common::MakeData(1, std::string(300 * 1024, 'x'), false)));
  grpc::Status s = evil.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  ASSERT_TRUE(h_.WaitForSessions(1));  // OnDone ran, and OnCancel before it
  EXPECT_EQ(Violations(h_.gateway(), "oversized_message"), 1);
  EXPECT_EQ(Violations(h_.gateway(), "unknown_stream"), 0);
  ExpectHealthyServes();
}

TEST_F(HostileTest, MalformedRequestHeadsGet4xxAndTheirConnectionCloses) {
  Start([](server::GatewayOptions& o) {
    o.front.connection.max_request_head_bytes = 16 * 1024;
  });
  const std::string path = TunnelHarness::Path(kHealthy, "/hello");
  const std::string ok_line = absl::StrCat("GET ", path, " HTTP/1.1\r\n");
  std::string many_headers = ok_line;
  for (int i = 0; i < 40; ++i) {
    absl::StrAppend(&many_headers, "X-Filler-", i, ": ", std::string(500, 'f'),
                    "\r\n");
  }
  many_headers += "\r\n";
  struct Case {
    std::string what;
    std::string raw;
    int status;
  };
  const std::vector<Case> cases = {
      {"garbage", "GARBAGE\r\n\r\n", 400},
      {"no version", absl::StrCat("GET ", path, "\r\n\r\n"), 400},
      {"bad version", absl::StrCat("GET ", path, " HTTX/1.1\r\n\r\n"), 400},
      {"HTTP/2.0", absl::StrCat("GET ", path, " HTTP/2.0\r\n\r\n"), 505},
      {"two spaces", absl::StrCat("GET  ", path, " HTTP/1.1\r\n\r\n"), 400},
      {"unknown method", absl::StrCat("FOO ", path, " HTTP/1.1\r\n\r\n"), 501},
      // httplib would read this body whole into memory before refusing.
      {"PRI with an 8 GB body",
       absl::StrCat("PRI ", path, " HTTP/1.1\r\nContent-Length: 8000000000",
                    "\r\n\r\n", std::string(65536, 'x')),
       501},
      {"header without colon",
       absl::StrCat(ok_line, "Host: x\r\nNoColonHere\r\n\r\n"), 400},
      {"space in header name", absl::StrCat(ok_line, "Bad Name: x\r\n\r\n"),
       400},
      {"space before colon", absl::StrCat(ok_line, "Host : x\r\n\r\n"), 400},
      {"NUL in a value",
       absl::StrCat(ok_line, std::string("X-A: a\0b\r\n\r\n", 13)), 400},
      {"NUL in the target",
       absl::StrCat("GET ", path, std::string("\0 HTTP/1.1\r\n\r\n", 14)), 400},
      {"control character in a value",
       absl::StrCat(ok_line, "X-A: a\x01z\r\n\r\n"), 400},
      {"bare LF", absl::StrCat("GET ", path, " HTTP/1.1\nHost: x\n\n"), 400},
      {"bare CR", absl::StrCat(ok_line, "X-A: a\rb\r\n\r\n"), 400},
      {"obs-fold", absl::StrCat(ok_line, "X-A: a\r\n b\r\n\r\n"), 400},
      {"percent-encoded CRLF (httplib decodes header values)",
       absl::StrCat(ok_line, "X-A: a%0D%0AX-Injected: 1\r\n\r\n"), 400},
      {"request line over 8 KiB",
       absl::StrCat("GET /", std::string(9000, 'a'), " HTTP/1.1\r\n\r\n"), 414},
      {"request line over 8 KiB without an end",
       absl::StrCat("GET /", std::string(20000, 'a')), 414},
      {"header line over 8 KiB",
       absl::StrCat(ok_line, "X-Big: ", std::string(9000, 'b'), "\r\n\r\n"),
       431},
      {"head over --max-request-head", many_headers, 431},
      {"endless head without an empty line",
       absl::StrCat(ok_line, std::string(40, 'X') + ": 1\r\n",
                    std::string(20000, 'Y')),
       431},
  };
  server::Gateway& gw = h_.gateway();
  const int port = gw.http_port();
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    bool closed = false;
    std::string got = RawExchange(port, c.raw, &closed);
    EXPECT_TRUE(absl::StartsWith(got, absl::StrCat("HTTP/1.1 ", c.status, " ")))
        << got.substr(0, 200);
    EXPECT_TRUE(closed) << "connection left open";
    // One answer per connection, never a second one for the rest.
    EXPECT_EQ(got.find("\nHTTP/1."), std::string::npos) << got;
    EXPECT_THAT(got, Not(HasSubstr("hello")));
    ExpectHealthyServes();
  }
  // The gateway's own refusals are counted like any request.
  EXPECT_EQ(Metric(gw,
                   "tunnel_http_requests_total{tunnel=\"\",code=\"4xx\","
                   "error=\"request_header_too_large\"}"),
            3);
  EXPECT_EQ(Metric(gw,
                   "tunnel_http_requests_total{tunnel=\"\",code=\"4xx\","
                   "error=\"uri_too_long\"}"),
            2);
  EXPECT_EQ(Metric(gw,
                   "tunnel_http_requests_total{tunnel=\"\",code=\"5xx\","
                   "error=\"http_version_not_supported\"}"),
            1);
  EXPECT_EQ(Metric(gw,
                   "tunnel_http_requests_total{tunnel=\"\",code=\"5xx\","
                   "error=\"method_not_implemented\"}"),
            2);
  // A valid head just under the limit still works, on a keep-alive
  // connection that serves a second request after it.
  int fd = ConnectLoopback(port);
  ASSERT_GE(fd, 0);
  std::string pad;
  for (int i = 0; i < 3; ++i) {
    absl::StrAppend(&pad, "X-Pad-", i, ": ", std::string(4000, 'p'), "\r\n");
  }
  const std::string two =
      absl::StrCat(ok_line, "Host: localhost\r\n", pad, "\r\n", ok_line,
                   "Host: localhost\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(send(fd, two.data(), two.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(two.size()));
  bool closed = false;
  std::string got = ReadUntilClosed(fd, &closed);
  close(fd);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 200 OK\r\n")) << got;
  EXPECT_NE(got.find("HTTP/1.1 200 OK\r\n", 10), std::string::npos) << got;
}

TEST_F(HostileTest, AnUnreadRequestBodyIsNeverParsedAsTheNextRequest) {
  // A body the gateway refuses without reading (no such tunnel) must not be
  // taken for a request: here it is one, for the healthy tunnel.
  Start();
  const std::string smuggled =
      absl::StrCat("GET ", TunnelHarness::Path(kHealthy, "/hello"),
                   " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  const std::string raw = absl::StrCat(
      "POST ", TunnelHarness::Path("no-such-tunnel", "/upload"),
      " HTTP/1.1\r\nHost: localhost\r\nContent-Length: ", smuggled.size(),
      "\r\n\r\n", smuggled);
  bool closed = false;
  std::string got = RawExchange(h_.gateway().http_port(), raw, &closed);
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 404 ")) << got;
  EXPECT_TRUE(closed) << "connection left open";
  EXPECT_EQ(got.find("\nHTTP/1."), std::string::npos) << got;
  EXPECT_THAT(got, Not(HasSubstr("hello")));
  // The same with a chunked body.
  const std::string chunked = absl::StrCat(
      "POST ", TunnelHarness::Path("no-such-tunnel", "/upload"),
      " HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
      absl::StrCat(absl::Hex(smuggled.size())), "\r\n", smuggled,
      "\r\n0\r\n\r\n", smuggled);
  got = RawExchange(h_.gateway().http_port(), chunked, &closed);
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 404 ")) << got;
  EXPECT_TRUE(closed) << "connection left open";
  EXPECT_THAT(got, Not(HasSubstr("hello")));
  ExpectHealthyServes();
}

// An agent that pings and never reads the pongs: the pongs cannot pile up
// without bound in the gateway; its session ends RESOURCE_EXHAUSTED, and
// the healthy tunnel goes on.
TEST_F(HostileTest, PingsFromAnAgentThatNeverReadsEndItsSession) {
  Start();
  const int64_t rss_before = RssKib();
  HostileAgent evil(h_, kHostile, /*small_window=*/true);
  Envelope ping;
  ping.mutable_control()->mutable_ping()->set_nonce(1);
  int sent = 0;
  for (; sent < 200000 && evil.Send(ping); ++sent) {
  }
  grpc::Status st = evil.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << st.error_message() << " after " << sent << " pings";
  EXPECT_THAT(st.error_message(), HasSubstr("does not read its stream"));
  EXPECT_EQ(Violations(h_.gateway(), "unread_stream"), 1);
  ExpectHealthyServes();
  // What the gateway held for it is bounded (4096 pongs, a few hundred KiB);
  // the margin is for the allocator and the test's own threads.
  EXPECT_LT(RssKib() - rss_before, 32 * 1024) << sent << " pings";
}

// Request heads for an agent that reads nothing: past the send queue's bound
// visitors get 503 at once instead of the gateway queuing their heads.
TEST_F(HostileTest, RequestHeadsForAnAgentThatNeverReadsAreBounded) {
  Start([](server::GatewayOptions& o) {
    o.service.limits.max_queued_bytes = 256 * 1024;
    o.front.response_timeout = absl::Seconds(20);
  });
  // Connected, and never reads again.
  HostileAgent evil(h_, kHostile, /*small_window=*/true);
  // 21 KiB of fields per head (a field line may hold 8 KiB).
  const std::string big(7 * 1024, 'h');
  std::atomic<int> busy{0};
  std::vector<std::thread> visitors;
  for (int i = 0; i < 60; ++i) {
    visitors.emplace_back([&] {
      auto cli = h_.Visitor();
      cli->set_read_timeout(30, 0);
      auto res =
          cli->Get(TunnelHarness::Path(kHostile, "/x"),
                   {{"X-Big-1", big}, {"X-Big-2", big}, {"X-Big-3", big}});
      if (res && res->status == 503 &&
          res->get_header_value("X-Tunnel-Error") == "gateway_busy") {
        ++busy;
      }
    });
  }
  // The first visitors' heads fill the HTTP/2 window and the queue; later
  // ones are refused at once. Ending the hostile call fails the rest.
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (Metric(h_.gateway(),
                "tunnel_capacity_rejections_total{limit=\"send_queue\"}") ==
             0 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GT(Metric(h_.gateway(),
                   "tunnel_capacity_rejections_total{limit=\"send_queue\"}"),
            0);
  ExpectHealthyServes();
  evil.Cancel();
  for (auto& t : visitors) t.join();
  EXPECT_GT(busy.load(), 0);
}

// A gateway that breaks the header-block rule: the real one never sends a
// malformed block, so this one is scripted (an implementation of the
// generated gRPC service) and runs against the real agent. It sends a
// request whose block runs past its end and then a good one, and records
// what the agent sends.
class ScriptedGateway final : public tunnel::v1::TunnelService::Service {
 public:
  // `accept_blocks`: whether it agrees to header blocks (a gateway of an
  // older release does not know them).
  explicit ScriptedGateway(bool accept_blocks)
      : accept_blocks_(accept_blocks) {}

  grpc::Status Connect(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<Envelope, Envelope>* stream) override {
    Envelope hello;
    if (!stream->Read(&hello) || !hello.has_connect()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no connect");
    }
    offered_blocks = hello.connect().header_blocks();
    Envelope accepted;
    auto* a = accepted.mutable_accepted();
    a->set_session_id("scripted");
    a->set_stream_window(256 << 10);
    a->set_max_chunk_bytes(64 << 10);
    a->set_heartbeat_interval_ms(60000);
    a->set_header_blocks(accept_blocks_);
    auto* t = a->add_tunnels();
    t->set_slug(kSlug);
    stream->Write(accepted);

    Envelope bad;
    auto* r = bad.mutable_request();
    r->set_stream_id(1);
    r->set_tunnel_slug(kSlug);
    r->set_method("GET");
    r->set_path("/echo");
    r->set_end_stream(true);
    r->set_header_block(
        std::string("\x05"
                    "ab"));
    stream->Write(bad);
    Envelope good = bad;
    r = good.mutable_request();
    r->set_stream_id(3);
    r->clear_header_block();
    common::AppendField(r->mutable_header_block(), "Host", "localhost");
    common::AppendField(r->mutable_header_block(), "X-Test", "packed");
    stream->Write(good);

    Envelope e;
    while (!(close_of_1.has_value() && end_of_3) && stream->Read(&e)) {
      if (e.has_close() && e.close().stream_id() == 1) close_of_1 = e.close();
      if (e.has_response() && e.response().stream_id() == 3) {
        response_of_3 = e.response();
        body_of_3 += e.response().body();
        end_of_3 = e.response().end_stream();
      }
      if (e.has_data() && e.data().stream_id() == 3) {
        body_of_3 += e.data().data();
        end_of_3 = e.data().end_stream();
      }
    }
    done.Notify();
    // Holds the call until the test stops the agent.
    while (stream->Read(&e)) {
    }
    return grpc::Status::OK;
  }

  static constexpr char kSlug[] = "dev-01";
  bool offered_blocks = false;
  std::optional<TunnelClose> close_of_1;
  std::optional<tunnel::v1::TunnelResponse> response_of_3;
  std::string body_of_3;
  bool end_of_3 = false;
  absl::Notification done;

 private:
  const bool accept_blocks_;
};

// Runs the real agent, serving /echo (its X-Test field as the body),
// against `gateway` until the gateway saw both streams end.
void RunAgentAgainst(ScriptedGateway& gateway) {
  LocalService svc;
  svc.server().Get(
      "/echo", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(req.get_header_value("X-Test"), "text/plain");
      });
  svc.Start();
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&gateway);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_GT(port, 0);

  agent::AgentOptions o;
  o.gateway = absl::StrCat("127.0.0.1:", port);
  o.agent_id = ScriptedGateway::kSlug;
  o.token_id = "tok_scripted";
  o.secret = "scripted";
  o.insecure = true;
  auto targets = agent::ParseTargets({svc.url()}, ScriptedGateway::kSlug);
  ASSERT_TRUE(targets.ok()) << targets.status();
  o.tunnels = *targets;
  o.health.interval = absl::ZeroDuration();
  RunningAgent agent(std::move(o));
  EXPECT_TRUE(gateway.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  agent.Stop();
  server->Shutdown(std::chrono::system_clock::now());
}

TEST(HostileGatewayTest, AMalformedHeaderBlockEndsOnlyItsStreamAtTheAgent) {
  ScriptedGateway gateway(/*accept_blocks=*/true);
  RunAgentAgainst(gateway);
  EXPECT_TRUE(gateway.offered_blocks);
  ASSERT_TRUE(gateway.close_of_1.has_value());
  EXPECT_EQ(gateway.close_of_1->reason(), TunnelClose::PROTOCOL_ERROR);
  EXPECT_THAT(gateway.close_of_1->message(), HasSubstr("header block"));
  // The next stream on the same session is served, its packed fields sent
  // to the service, the answer's fields packed too.
  ASSERT_TRUE(gateway.response_of_3.has_value());
  EXPECT_EQ(gateway.response_of_3->status(), 200u);
  EXPECT_EQ(gateway.body_of_3, "packed");
  EXPECT_EQ(gateway.response_of_3->headers_size(), 0);
  absl::string_view type;
  EXPECT_TRUE(common::FindField(*gateway.response_of_3, "Content-Type", &type));
  EXPECT_EQ(type, "text/plain");
}

TEST(HostileGatewayTest, AGatewayThatTakesNoBlocksGetsHeaderFields) {
  ScriptedGateway gateway(/*accept_blocks=*/false);
  RunAgentAgainst(gateway);
  EXPECT_TRUE(gateway.offered_blocks);
  // A block that does not parse is refused whoever sent it.
  ASSERT_TRUE(gateway.close_of_1.has_value());
  EXPECT_EQ(gateway.close_of_1->reason(), TunnelClose::PROTOCOL_ERROR);
  // The answer's fields come as HeaderFields, which such a gateway reads.
  ASSERT_TRUE(gateway.response_of_3.has_value());
  EXPECT_EQ(gateway.body_of_3, "packed");
  EXPECT_TRUE(gateway.response_of_3->header_block().empty());
  const std::string* type =
      common::FindHeader(gateway.response_of_3->headers(), "Content-Type");
  ASSERT_NE(type, nullptr);
  EXPECT_EQ(*type, "text/plain");
}

}  // namespace
}  // namespace tunnel::testing
