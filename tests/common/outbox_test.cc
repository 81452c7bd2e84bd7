#include "common/outbox.h"

#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using tunnel::v1::Envelope;

Envelope Ping(uint64_t n) {
  Envelope e;
  e.mutable_control()->mutable_ping()->set_nonce(n);
  return e;
}

Envelope Head(uint64_t id, bool end) {
  Envelope e;
  e.mutable_response()->set_stream_id(id);
  e.mutable_response()->set_status(200);
  e.mutable_response()->set_end_stream(end);
  return e;
}

TEST(OutboxTest, ControlJumpsAheadOfData) {
  Outbox box(64);
  box.PushData(1, "a", false);
  box.PushControl(Ping(7));
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_TRUE(e.has_control());
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().data(), "a");
  EXPECT_FALSE(box.TryPop(&e));
}

TEST(OutboxTest, CoalescesQueuedDataPerStreamUpToTheChunkLimit) {
  Outbox box(8);
  box.PushData(1, "abc", false);
  box.PushData(2, "xy", false);
  box.PushData(1, "def", false);
  box.PushData(1, "ghi", false);  // would exceed 8: new message
  box.PushData(2, "", true);
  EXPECT_EQ(box.size(), 3u);
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().stream_id(), 1u);
  EXPECT_EQ(e.data().data(), "abcdef");
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().stream_id(), 2u);
  EXPECT_EQ(e.data().data(), "xy");
  EXPECT_TRUE(e.data().end_stream());
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().data(), "ghi");
}

TEST(OutboxTest, DataJoinsAQueuedHeadAndEndsIt) {
  Outbox box(64);
  box.Push(Head(3, false));
  box.PushData(3, "hello", false);
  box.PushData(3, "", true);
  ASSERT_EQ(box.size(), 1u);
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.response().body(), "hello");
  EXPECT_TRUE(e.response().end_stream());
}

TEST(OutboxTest, NothingIsAppendedToAMessageAlreadyTaken) {
  Outbox box(64);
  box.PushData(1, "a", false);
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  box.PushData(1, "b", false);
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().data(), "b");
}

TEST(OutboxTest, PopWaitWakesOnPushAndOnClose) {
  Outbox box(64);
  std::thread t([&] { box.PushControl(Ping(1)); });
  Envelope e;
  EXPECT_TRUE(box.PopWait(&e, absl::Now() + absl::Seconds(10)));
  t.join();
  std::thread c([&] { box.Close(); });
  EXPECT_FALSE(box.PopWait(&e, absl::Now() + absl::Seconds(10)));
  c.join();
  box.PushControl(Ping(2));  // dropped after close
  EXPECT_TRUE(box.empty());
}

TEST(OutboxTest, WaitForRoomHoldsProducersUntilTheWriterDrains) {
  Outbox box(64);
  box.PushData(1, std::string(60, 'a'), false);
  box.PushData(2, std::string(60, 'b'), false);
  EXPECT_EQ(box.queued_bytes(), 120u);
  // Over a 100-byte limit: a producer would wait, and times out here.
  EXPECT_FALSE(box.WaitForRoom(100, absl::Now() - absl::Seconds(1)));
  std::thread writer([&] {
    Envelope e;
    ASSERT_TRUE(box.TryPop(&e));
  });
  EXPECT_TRUE(box.WaitForRoom(100, absl::Now() + absl::Seconds(10)));
  writer.join();
  EXPECT_EQ(box.queued_bytes(), 60u);
  box.Clear();
  EXPECT_EQ(box.queued_bytes(), 0u);
}

TEST(OutboxTest, OnRoomCallsOnceWhenTheWriterDrainsBelowTheLimit) {
  Outbox box(64);
  int calls = 0;
  box.OnRoom(100, [&] { ++calls; });  // room already: called at once
  EXPECT_EQ(calls, 1);

  box.PushData(1, std::string(60, 'a'), false);
  box.PushData(2, std::string(60, 'b'), false);
  box.PushData(3, std::string(60, 'c'), false);
  box.OnRoom(100, [&] { ++calls; });
  EXPECT_EQ(calls, 1);  // 180 bytes queued: waits
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(calls, 1);  // 120 still over the limit
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(calls, 2);  // 60: called
  box.PushData(4, std::string(60, 'd'), false);
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(calls, 2);  // once only

  // A later call replaces one that has not run; Close runs it.
  box.PushData(5, std::string(60, 'e'), false);
  box.PushData(6, std::string(60, 'f'), false);
  int replaced = 0;
  box.OnRoom(10, [&] { ++replaced; });
  box.OnRoom(10, [&] { ++calls; });
  box.Close();
  EXPECT_EQ(replaced, 0);
  EXPECT_EQ(calls, 3);
}

TEST(OutboxTest, ClearRunsTheRoomCallback) {
  Outbox box(64);
  box.PushData(1, std::string(60, 'a'), false);
  bool called = false;
  box.OnRoom(10, [&] { called = true; });
  EXPECT_FALSE(called);
  box.Clear();
  EXPECT_TRUE(called);
}

TEST(OutboxTest, OneWriterRoleAtATimeDrainsEverythingQueued) {
  Outbox box(64);
  Envelope e;
  bool more = false;
  EXPECT_FALSE(box.TryClaim(&e, &more));  // nothing to write
  box.PushData(1, "a", true);
  box.PushData(2, "b", true);
  ASSERT_TRUE(box.TryClaim(&e, &more));
  EXPECT_TRUE(more);
  // Another producer's message goes to the holder, not to a second writer.
  box.PushData(3, "c", true);
  Envelope other;
  EXPECT_FALSE(box.TryClaim(&other, &more));
  ASSERT_TRUE(box.NextOrRelease(&e, &more));
  EXPECT_EQ(e.data().stream_id(), 2u);
  ASSERT_TRUE(box.NextOrRelease(&e, &more));
  EXPECT_EQ(e.data().stream_id(), 3u);
  EXPECT_FALSE(more);
  EXPECT_FALSE(box.NextOrRelease(&e, &more));  // released
  box.PushData(4, "d", true);
  ASSERT_TRUE(box.TryClaim(&e, &more));
  EXPECT_EQ(e.data().stream_id(), 4u);
  EXPECT_FALSE(box.NextOrRelease(&e, &more));
}

TEST(OutboxTest, ClaimNextHandsOutWhatWasQueuedEvenAfterClose) {
  Outbox box(64);
  Envelope e;
  bool more = false;
  EXPECT_FALSE(box.ClaimNext(&e, &more));  // nothing to write
  box.PushControl(Ping(1));
  box.PushControl(Ping(2));
  ASSERT_TRUE(box.ClaimNext(&e, &more));
  EXPECT_EQ(e.control().ping().nonce(), 1u);
  EXPECT_TRUE(more);
  // One write at a time: the role is held until its completion gives it up.
  Envelope other;
  EXPECT_FALSE(box.ClaimNext(&other, &more));
  // A drain closes the outbox: what was queued still goes out, then the
  // writer may half-close.
  box.Close();
  EXPECT_FALSE(box.Finished());
  ASSERT_TRUE(box.NextOrRelease(&e, &more));
  EXPECT_EQ(e.control().ping().nonce(), 2u);
  EXPECT_FALSE(more);
  EXPECT_FALSE(box.Finished());  // the last write is still in flight
  EXPECT_FALSE(box.NextOrRelease(&e, &more));
  EXPECT_TRUE(box.Finished());
  box.PushControl(Ping(3));  // dropped: the outbox is closed
  EXPECT_FALSE(box.ClaimNext(&e, &more));
  EXPECT_TRUE(box.Finished());
}

TEST(OutboxTest, WakeWriterRunsTheWakeCallback) {
  Outbox box(64);
  int wakes = 0;
  box.SetWakeCallback([&] { ++wakes; });
  box.PushControl(Ping(1));
  box.WakeWriter();
  box.WakeWriter();
  EXPECT_EQ(wakes, 2);
}

TEST(OutboxTest, BatchesEverythingQueuedControlFirstInOrder) {
  Outbox box(1024);
  box.EnableBatching(4096);
  box.PushData(1, "one", false);
  box.Push(Head(2, false));
  box.PushControl(Ping(7));
  box.PushData(2, "two", true);  // joins the queued head of stream 2
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  ASSERT_TRUE(e.has_batch());
  const auto& m = e.batch().envelopes();
  ASSERT_EQ(m.size(), 3);
  EXPECT_EQ(m[0].control().ping().nonce(), 7u);
  EXPECT_EQ(m[1].data().data(), "one");
  EXPECT_EQ(m[2].response().stream_id(), 2u);
  EXPECT_EQ(m[2].response().body(), "two");
  EXPECT_TRUE(m[2].response().end_stream());
  EXPECT_FALSE(box.TryPop(&e));  // one message carried all three
  // A lone envelope stays plain.
  box.PushControl(Ping(8));
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.control().ping().nonce(), 8u);
}

TEST(OutboxTest, BatchesNeverExceedTheBudgetAndBigMessagesGoAlone) {
  Outbox box(64 << 10);
  const size_t budget = 8192;
  box.EnableBatching(budget);
  // Streams of assorted sizes, some larger than the budget.
  size_t sent = 0;
  for (uint64_t id = 1; id <= 200; ++id) {
    size_t n = (id * 7919) % 12000;
    box.PushData(id, std::string(n, 'x'), true);
    sent += n;
  }
  size_t received = 0;
  size_t envelopes = 0;
  size_t messages = 0;
  Envelope e;
  while (box.TryPop(&e)) {
    ++messages;
    if (e.has_batch()) {
      EXPECT_LE(e.ByteSizeLong(), budget);
      EXPECT_GE(e.batch().envelopes_size(), 2);
      for (const Envelope& m : e.batch().envelopes()) {
        received += m.data().data().size();
        ++envelopes;
      }
    } else {
      received += e.data().data().size();
      ++envelopes;
    }
  }
  EXPECT_EQ(received, sent);
  EXPECT_EQ(envelopes, 200u);
  EXPECT_LT(messages, 200u);  // some were batched
}

TEST(OutboxTest, LargeChunksTravelAloneBetweenBatches) {
  Outbox box(64 << 10);
  box.EnableBatching(256 << 10);
  box.PushData(1, "a", false);
  box.PushData(2, "b", false);
  box.PushData(3, std::string(20 << 10, 'x'), false);  // over 16 KiB
  box.PushData(4, std::string(20 << 10, 'y'), false);
  box.PushData(5, "c", false);
  box.PushData(6, "d", false);
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.batch().envelopes_size(), 2);
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().stream_id(), 3u);
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.data().stream_id(), 4u);
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.batch().envelopes_size(), 2);
  EXPECT_FALSE(box.TryPop(&e));
}

TEST(OutboxTest, HandshakeMessagesTravelAlone) {
  Outbox box(64);
  box.EnableBatching(4096);
  Envelope accepted;
  accepted.mutable_accepted()->set_session_id("s");
  box.Push(accepted);
  box.PushData(1, "a", false);
  box.PushData(2, "b", false);
  Envelope e;
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_TRUE(e.has_accepted());
  ASSERT_TRUE(box.TryPop(&e));
  EXPECT_EQ(e.batch().envelopes_size(), 2);
}

}  // namespace
}  // namespace tunnel::common
