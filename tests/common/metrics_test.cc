#include "common/metrics.h"

#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CounterWithoutLabelsRendersAtZeroThenCounts) {
  MetricsRegistry r;
  CounterFamily* f = r.AddCounter("x_total", "Things.");
  EXPECT_EQ(r.Render(),
            "# HELP x_total Things.\n# TYPE x_total counter\n"
            "x_total 0\n");
  f->WithLabels({})->Increment();
  f->WithLabels({})->Increment(41);
  EXPECT_THAT(r.Render(), HasSubstr("\nx_total 42\n"));
}

TEST(MetricsTest, LabelledChildrenAreDistinctAndSorted) {
  MetricsRegistry r;
  CounterFamily* f = r.AddCounter("req_total", "Requests.", {"tunnel", "code"});
  Counter* b = f->WithLabels({"b", "2xx"});
  Counter* a = f->WithLabels({"a", "5xx"});
  EXPECT_EQ(f->WithLabels({"b", "2xx"}), b);  // same child, same pointer
  b->Increment(2);
  a->Increment();
  EXPECT_EQ(r.Render(),
            "# HELP req_total Requests.\n# TYPE req_total counter\n"
            "req_total{tunnel=\"a\",code=\"5xx\"} 1\n"
            "req_total{tunnel=\"b\",code=\"2xx\"} 2\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeHelp("a\"b\\c\nd"), "a\"b\\\\c\\nd");
  MetricsRegistry r;
  r.AddGauge("g", "Line one\nback\\slash", {"v"})
      ->WithLabels({"q\"uote"})
      ->Set(-3);
  EXPECT_EQ(r.Render(),
            "# HELP g Line one\\nback\\\\slash\n# TYPE g gauge\n"
            "g{v=\"q\\\"uote\"} -3\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry r;
  HistogramFamily* f =
      r.AddHistogram("d_seconds", "Durations.", {"t"}, {0.1, 1, 2.5});
  Histogram* h = f->WithLabels({"x"});
  h->Observe(0.05);
  h->Observe(0.1);  // "le" is inclusive
  h->Observe(2);
  h->Observe(100);
  EXPECT_EQ(r.Render(),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n"
            "d_seconds_bucket{t=\"x\",le=\"0.1\"} 2\n"
            "d_seconds_bucket{t=\"x\",le=\"1\"} 2\n"
            "d_seconds_bucket{t=\"x\",le=\"2.5\"} 3\n"
            "d_seconds_bucket{t=\"x\",le=\"+Inf\"} 4\n"
            "d_seconds_sum{t=\"x\"} 102.15\n"
            "d_seconds_count{t=\"x\"} 4\n");
}

TEST(MetricsTest, HistogramWithoutLabels) {
  MetricsRegistry r;
  HistogramFamily* f = r.AddHistogram("h", "H.", {}, {1});
  f->WithLabels({})->Observe(0.5);
  EXPECT_THAT(r.Render(), HasSubstr("h_bucket{le=\"1\"} 1\n"
                                    "h_bucket{le=\"+Inf\"} 1\n"
                                    "h_sum 0.5\nh_count 1\n"));
}

TEST(MetricsTest, FormatsDoublesExactlyAndSpecials) {
  EXPECT_EQ(FormatDouble(0.005), "0.005");
  EXPECT_EQ(FormatDouble(300), "300");
  EXPECT_EQ(FormatDouble(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatDouble(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatDouble(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatDouble(0.0 / 0.0), "NaN");
}

TEST(MetricsTest, CollectHooksRunBeforeEachRender) {
  MetricsRegistry r;
  Gauge* g = r.AddGauge("sessions", "Sessions.")->WithLabels({});
  int calls = 0;
  r.AddCollectHook([&] { g->Set(++calls * 10); });
  EXPECT_THAT(r.Render(), HasSubstr("\nsessions 10\n"));
  EXPECT_THAT(r.Render(), HasSubstr("\nsessions 20\n"));
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  MetricsRegistry r;
  CounterFamily* f = r.AddCounter("c_total", "C.", {"k"});
  Histogram* h = r.AddHistogram("h", "H.", {}, {1})->WithLabels({});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter* c = f->WithLabels({t % 2 == 0 ? "even" : "odd"});
      for (int i = 0; i < kPerThread; ++i) {
        c->Increment();
        h->Observe(0.5);
      }
    });
  }
  // Scrapes while writers run must not block them or crash.
  for (int i = 0; i < 20; ++i) (void)r.Render();
  for (auto& t : threads) t.join();
  EXPECT_EQ(f->WithLabels({"even"})->value(), kThreads / 2 * kPerThread);
  EXPECT_EQ(f->WithLabels({"odd"})->value(), kThreads / 2 * kPerThread);
  Histogram::Snapshot s = h->Read();
  EXPECT_EQ(s.count, kThreads * kPerThread);
  EXPECT_DOUBLE_EQ(s.sum, 0.5 * kThreads * kPerThread);
}

TEST(MetricsDeathTest, WrongLabelCountAborts) {
  MetricsRegistry r;
  CounterFamily* f = r.AddCounter("c_total", "C.", {"a", "b"});
  EXPECT_DEATH(f->WithLabels({"only-one"}), "label value count");
}

TEST(MetricsDeathTest, DuplicateNameAborts) {
  MetricsRegistry r;
  r.AddCounter("c_total", "C.");
  EXPECT_DEATH(r.AddGauge("c_total", "again"), "registered twice");
}

}  // namespace
}  // namespace tunnel::common
