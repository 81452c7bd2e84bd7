// Session rules that a live agent cannot hit deterministically (the front
// door may release a stream before the next message arrives): data beyond
// the credit and after end_stream. The Session runs as in the gateway; its
// EnvelopeWriter (the gRPC reactor's side) records what the agent would get.
#include "server/session.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/envelopes.h"
#include "common/metrics.h"
#include "common/round_end.h"
#include "gtest/gtest.h"

namespace tunnel::server {
namespace {

using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

// Completes each write at once, as a healthy connection would.
class RecordingWriter : public EnvelopeWriter {
 public:
  void Write(const Envelope* e, bool) override {
    written.push_back(*e);
    pending = true;
  }
  void End(grpc::Status s) override { ended = s; }
  std::vector<Envelope> written;
  bool pending = false;
  grpc::Status ended;
};

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    limits_.gateway_receive_window = 64 * 1024;
    session_ = std::make_shared<Session>("s1", "cam-01", "tok_1", "peer",
                                         limits_, &writer_, &metrics_);
  }
  ~SessionTest() override { session_->OnDone(); }

  void Flush() {
    while (writer_.pending) {
      writer_.pending = false;
      session_->OnWriteDone(true);
    }
  }

  double Violations(absl::string_view kind) {
    const std::string series =
        absl::StrCat("tunnel_protocol_violations_total{kind=\"", kind, "\"} ");
    for (absl::string_view line : absl::StrSplit(registry_.Render(), '\n')) {
      double v;
      if (absl::ConsumePrefix(&line, series) && absl::SimpleAtod(line, &v)) {
        return v;
      }
    }
    return -1;
  }

  // The last TunnelClose the agent got, if any.
  const TunnelClose* LastClose() {
    Flush();
    for (auto it = writer_.written.rbegin(); it != writer_.written.rend();
         ++it) {
      if (it->has_close()) return &it->close();
    }
    return nullptr;
  }

  std::unique_ptr<TunnelStream> Open() {
    tunnel::v1::TunnelRequest head;
    head.set_method("GET");
    auto s = session_->OpenStream(std::move(head));
    EXPECT_TRUE(s.ok()) << s.status();
    Envelope e;
    auto* r = e.mutable_response();
    r->set_stream_id((*s)->id());
    r->set_status(200);
    session_->OnEnvelope(e);
    return *std::move(s);
  }

  common::MetricsRegistry registry_;
  CoreMetrics metrics_{&registry_};
  SessionLimits limits_;
  RecordingWriter writer_;
  std::shared_ptr<Session> session_;
};

TEST_F(SessionTest, DataBeyondTheCreditClosesTheStreamOnly) {
  std::unique_ptr<TunnelStream> s = Open();
  const std::string chunk(limits_.max_chunk, 'x');
  session_->OnEnvelope(common::MakeData(s->id(), chunk, false));
  EXPECT_EQ(LastClose(), nullptr);
  // 64 KiB window, 64 KiB sent: one more byte is over the credit.
  session_->OnEnvelope(common::MakeData(s->id(), "y", false));
  const TunnelClose* c = LastClose();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->stream_id(), s->id());
  EXPECT_EQ(c->reason(), TunnelClose::FLOW_CONTROL_ERROR);
  EXPECT_EQ(Violations("flow_control"), 1);
  EXPECT_FALSE(s->ReadBody(absl::InfinitePast()).ok());
  EXPECT_FALSE(session_->closing());
  // Another stream of the same session is untouched.
  std::unique_ptr<TunnelStream> other = Open();
  session_->OnEnvelope(common::MakeData(other->id(), "fine", true));
  auto chunk2 = other->ReadBody(absl::InfinitePast());
  ASSERT_TRUE(chunk2.ok()) << chunk2.status();
  EXPECT_EQ(chunk2->data, "fine");
}

TEST_F(SessionTest, DataAfterEndOfStreamClosesTheStreamOnly) {
  std::unique_ptr<TunnelStream> s = Open();
  session_->OnEnvelope(common::MakeData(s->id(), "all", true));
  EXPECT_EQ(LastClose(), nullptr);
  session_->OnEnvelope(common::MakeData(s->id(), "more", false));
  const TunnelClose* c = LastClose();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->stream_id(), s->id());
  EXPECT_EQ(c->reason(), TunnelClose::FLOW_CONTROL_ERROR);
  EXPECT_EQ(Violations("data_after_end"), 1);
  EXPECT_EQ(Violations("flow_control"), 0);
  EXPECT_FALSE(session_->closing());
}

// On a front-door loop's thread, what a round's requests send to the agent
// is written when the round ends, as one message; elsewhere at once.
TEST_F(SessionTest, ARoundsRequestsLeaveInOneMessageWhenTheRoundEnds) {
  session_->EnableBatching(64 * 1024);
  common::RoundEnd round;
  common::RoundEnd::InstallOnThisThread(&round);
  std::vector<absl::StatusOr<std::unique_ptr<TunnelStream>>> streams;
  for (int i = 0; i < 5; ++i) {
    tunnel::v1::TunnelRequest head;
    head.set_method("GET");
    head.set_path(absl::StrCat("/", i));
    streams.push_back(session_->OpenStream(std::move(head)));
    ASSERT_TRUE(streams.back().ok());
  }
  EXPECT_TRUE(writer_.written.empty());  // not yet: the round runs on
  round.Run();
  common::RoundEnd::InstallOnThisThread(nullptr);
  Flush();
  ASSERT_EQ(writer_.written.size(), 1u);
  ASSERT_TRUE(writer_.written[0].has_batch());
  EXPECT_EQ(writer_.written[0].batch().envelopes_size(), 5);
  // Off a loop: written at once.
  tunnel::v1::TunnelRequest head;
  head.set_method("GET");
  ASSERT_TRUE(session_->OpenStream(std::move(head)).ok());
  EXPECT_EQ(writer_.written.size(), 2u);
}

TEST(RoundEndTest, WorkDeferredWhileTheRoundEndsRunsToo) {
  EXPECT_EQ(common::RoundEnd::Current(), nullptr);
  common::RoundEnd round;
  common::RoundEnd::InstallOnThisThread(&round);
  EXPECT_EQ(common::RoundEnd::Current(), &round);
  std::vector<int> ran;
  round.Defer([&] {
    ran.push_back(1);
    round.Defer([&] { ran.push_back(2); });
  });
  EXPECT_TRUE(ran.empty());
  round.Run();
  EXPECT_EQ(ran, (std::vector<int>{1, 2}));
  common::RoundEnd::InstallOnThisThread(nullptr);
  EXPECT_EQ(common::RoundEnd::Current(), nullptr);
}

}  // namespace
}  // namespace tunnel::server
