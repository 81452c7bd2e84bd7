#include "common/flow_control.h"

#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

absl::Time Past() { return absl::Now() - absl::Seconds(1); }
absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

TEST(StreamChannelTest, SenderStopsAtTheWindowAndResumesOnUpdate) {
  StreamChannel ch(/*send_window=*/100, /*receive_window=*/100);
  EXPECT_EQ(*ch.AcquireSendCredit(60, Past()), 60u);
  EXPECT_EQ(*ch.AcquireSendCredit(60, Past()), 40u);  // only what is left
  EXPECT_TRUE(
      absl::IsDeadlineExceeded(ch.AcquireSendCredit(1, Past()).status()));
  ASSERT_TRUE(ch.AddSendCredit(30).ok());
  EXPECT_EQ(*ch.AcquireSendCredit(100, Past()), 30u);
}

TEST(StreamChannelTest, BlockedSenderWakesOnUpdateFromAnotherThread) {
  StreamChannel ch(10, 10);
  ASSERT_EQ(*ch.AcquireSendCredit(10, Past()), 10u);
  std::thread t([&] { ASSERT_TRUE(ch.AddSendCredit(5).ok()); });
  EXPECT_EQ(*ch.AcquireSendCredit(10, Soon()), 5u);
  t.join();
}

TEST(StreamChannelTest, SendStalledOnlyWhileAProducerWaitsWithoutCredit) {
  StreamChannel ch(10, 10);
  EXPECT_FALSE(ch.send_stalled());
  ASSERT_EQ(*ch.AcquireSendCredit(10, Past()), 10u);
  EXPECT_FALSE(ch.send_stalled());  // out of credit, but nobody waits
  std::thread waiter([&] { EXPECT_EQ(*ch.AcquireSendCredit(4, Soon()), 4u); });
  // Poll (bounded) until the waiter is parked.
  absl::Time give_up = Soon();
  while (!ch.send_stalled() && absl::Now() < give_up) std::this_thread::yield();
  EXPECT_TRUE(ch.send_stalled());
  ASSERT_TRUE(ch.AddSendCredit(4).ok());
  waiter.join();
  EXPECT_FALSE(ch.send_stalled());
}

TEST(StreamChannelTest, ReceiveWindowFullUntilTheConsumerAcks) {
  StreamChannel ch(100, 100);
  ASSERT_TRUE(ch.PushData(std::string(60, 'a'), false).ok());
  EXPECT_FALSE(ch.receive_window_full());
  ASSERT_TRUE(ch.PushData(std::string(40, 'b'), false).ok());
  EXPECT_TRUE(ch.receive_window_full());
  uint32_t ack = 0;
  ASSERT_TRUE(ch.PopData(Past(), &ack).ok());
  EXPECT_GT(ack, 0u);  // 60 >= a quarter window: the credit goes back
  EXPECT_FALSE(ch.receive_window_full());
}

TEST(StreamChannelTest, ReceiverRejectsDataBeyondTheWindow) {
  StreamChannel ch(100, 100);
  EXPECT_TRUE(ch.PushData(std::string(100, 'x'), false).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(ch.PushData("y", false)));
}

TEST(StreamChannelTest, AcksAreBatchedAndRestoreTheWindow) {
  StreamChannel ch(1000, 1000);
  ASSERT_TRUE(ch.PushData(std::string(200, 'a'), false).ok());
  ASSERT_TRUE(ch.PushData(std::string(100, 'b'), false).ok());
  uint32_t ack = 99;
  auto c = ch.PopData(Past(), &ack);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->data, std::string(200, 'a'));
  EXPECT_EQ(ack, 0u);  // below a quarter window: not yet
  c = ch.PopData(Past(), &ack);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ack, 300u);  // now a quarter or more: everything consumed
  // The peer may send a full window again.
  EXPECT_TRUE(ch.PushData(std::string(1000, 'c'), false).ok());
  EXPECT_FALSE(ch.PushData("d", false).ok());
}

TEST(StreamChannelTest, EndIsDeliveredAndDataAfterItIsRefused) {
  StreamChannel ch(100, 100);
  ASSERT_TRUE(ch.PushData("last", true).ok());
  EXPECT_FALSE(ch.PushData("more", false).ok());
  uint32_t ack;
  auto c = ch.PopData(Past(), &ack);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->data, "last");
  EXPECT_TRUE(c->end);
  EXPECT_TRUE(ch.receive_finished());
}

TEST(StreamChannelTest, AbortWakesWaitersAndDiscardsUnreadData) {
  StreamChannel ch(0, 100);
  ASSERT_TRUE(ch.PushData("partial", false).ok());
  std::thread t([&] { ch.Abort(absl::AbortedError("service died")); });
  auto credit = ch.AcquireSendCredit(1, Soon());
  t.join();
  EXPECT_TRUE(absl::IsAborted(credit.status()));
  uint32_t ack;
  auto c = ch.PopData(Soon(), &ack);
  EXPECT_TRUE(absl::IsAborted(c.status()));
  EXPECT_EQ(c.status().message(), "service died");
  ch.Abort(absl::CancelledError("second"));  // first abort wins
  EXPECT_TRUE(absl::IsAborted(ch.status()));
}

TEST(StreamChannelTest, AbortIfIncompleteKeepsAWholeBody) {
  StreamChannel whole(100, 100), partial(100, 100);
  ASSERT_TRUE(whole.PushData("all of it", true).ok());
  ASSERT_TRUE(partial.PushData("some of it", false).ok());
  whole.AbortIfIncomplete(absl::UnavailableError("gone"));
  partial.AbortIfIncomplete(absl::UnavailableError("gone"));
  uint32_t ack;
  auto c = whole.PopData(Past(), &ack);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->data, "all of it");
  EXPECT_TRUE(absl::IsUnavailable(partial.PopData(Past(), &ack).status()));
}

TEST(StreamChannelTest, HeadArrivesOnceAndTimesOut) {
  StreamChannel ch(100, 100);
  EXPECT_TRUE(absl::IsDeadlineExceeded(ch.AwaitHead(Past()).status()));
  tunnel::v1::TunnelResponse r;
  r.set_status(201);
  ASSERT_TRUE(ch.SetHead(r).ok());
  EXPECT_FALSE(ch.SetHead(r).ok());
  EXPECT_EQ(ch.AwaitHead(Past())->status(), 201u);
  // The head was moved to its reader: it is not handed out twice, and a
  // second head from the peer is still refused.
  EXPECT_TRUE(absl::IsFailedPrecondition(ch.AwaitHead(Past()).status()));
  EXPECT_FALSE(ch.SetHead(r).ok());
}

TEST(StreamChannelTest, OverflowingWindowUpdateIsAnError) {
  StreamChannel ch(100, 100);
  EXPECT_FALSE(ch.AddSendCredit(uint64_t{1} << 32).ok());
}

}  // namespace
}  // namespace tunnel::common
