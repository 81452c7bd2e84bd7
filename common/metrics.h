// A small metrics registry rendered in the Prometheus text exposition format
// 0.0.4 (no Prometheus C++ client is packaged for Debian bookworm).
//
//   MetricsRegistry registry;
//   CounterFamily* requests = registry.AddCounter(
//       "tunnel_http_requests_total", "Visitor requests.", {"tunnel", "code"});
//   Counter* ok = requests->WithLabels({"cam-01", "2xx"});  // once
//   ok->Increment();                                         // hot path
//   std::string text = registry.Render();
//
// Hot path: Counter::Increment, Gauge::Set/Add and Histogram::Observe are
// lock-free atomics. WithLabels takes the family's mutex (a hash lookup):
// call it once per request or at set-up and keep the pointer, never per
// chunk. Children are never removed, so callers must keep label values
// bounded (never put raw visitor input in a label).
//
// Threads: everything is thread-safe. Pointers returned by Add* and
// WithLabels stay valid for the registry's lifetime. Registration errors
// (bad names, duplicates, wrong label count) are programming errors and
// abort.
#ifndef TUNNEL_COMMON_METRICS_H_
#define TUNNEL_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tunnel::common {

// Monotonically increasing count.
class Counter {
 public:
  void Increment(uint64_t n = 1) {
    value_.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Observations counted into fixed buckets (upper bounds, ascending; +Inf is
// implicit).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);

  void Observe(double v);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    uint64_t count = 0;                // == cumulative.back()
    double sum = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Request-duration buckets in seconds, 5 ms to 5 min.
std::vector<double> DefaultLatencyBuckets();

// Label-value, HELP and number formatting of the text format (exposed for
// tests).
std::string EscapeLabelValue(absl::string_view v);
std::string EscapeHelp(absl::string_view v);
std::string FormatDouble(double v);

// One named metric with a fixed list of label names and one child per
// distinct list of label values.
class MetricFamily {
 public:
  virtual ~MetricFamily() = default;
  const std::string& name() const { return name_; }
  size_t label_count() const { return label_names_.size(); }
  // Appends "# HELP", "# TYPE" and every child's samples to `out`.
  void Render(std::string* out) const;

 protected:
  MetricFamily(std::string name, std::string help,
               std::vector<std::string> label_names, const char* type);
  // Checks the label count; returns the rendered `a="x",b="y"` key.
  std::string LabelKey(const std::vector<std::string>& values) const;
  virtual void RenderChildren(std::string* out) const = 0;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const char* const type_;
  mutable absl::Mutex mu_;
};

template <typename T>
class Family : public MetricFamily {
 public:
  // The child for these label values (one per label name), created at 0 on
  // first use. Takes a lock; keep the pointer.
  T* WithLabels(const std::vector<std::string>& values) {
    return GetOrCreate(values, [] { return std::make_unique<T>(); });
  }

 protected:
  using MetricFamily::MetricFamily;
  template <typename Make>
  T* GetOrCreate(const std::vector<std::string>& values, Make make) {
    std::string key = LabelKey(values);
    absl::MutexLock lock(&mu_);
    std::unique_ptr<T>& child = children_[key];
    if (child == nullptr) child = make();
    return child.get();
  }
  // Sorted by rendered labels so the output is stable.
  std::map<std::string, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

class CounterFamily final : public Family<Counter> {
 public:
  CounterFamily(std::string name, std::string help,
                std::vector<std::string> label_names);

 private:
  void RenderChildren(std::string* out) const override;
};

class GaugeFamily final : public Family<Gauge> {
 public:
  GaugeFamily(std::string name, std::string help,
              std::vector<std::string> label_names);

 private:
  void RenderChildren(std::string* out) const override;
};

class HistogramFamily final : public Family<Histogram> {
 public:
  HistogramFamily(std::string name, std::string help,
                  std::vector<std::string> label_names,
                  std::vector<double> bounds);
  Histogram* WithLabels(const std::vector<std::string>& values);

 private:
  void RenderChildren(std::string* out) const override;
  const std::vector<double> bounds_;
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // A family without labels gets its single child at once (rendered as 0).
  CounterFamily* AddCounter(std::string name, std::string help,
                            std::vector<std::string> label_names = {});
  GaugeFamily* AddGauge(std::string name, std::string help,
                        std::vector<std::string> label_names = {});
  HistogramFamily* AddHistogram(std::string name, std::string help,
                                std::vector<std::string> label_names,
                                std::vector<double> bounds);

  // Runs before every Render (under the render lock, so hooks of concurrent
  // scrapes never interleave), e.g. to set gauges from a snapshot of state
  // that is cheaper to read at scrape time than to track on the data path.
  // What the hook reads must outlive the registry's last Render.
  void AddCollectHook(std::function<void()> hook);

  // The whole registry in text format 0.0.4, families in registration order.
  std::string Render() const;

 private:
  void Add(std::unique_ptr<MetricFamily> family);

  mutable absl::Mutex render_mu_;
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(render_mu_);
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> hooks_ ABSL_GUARDED_BY(mu_);
};

// The content type of Render()'s output.
inline constexpr char kMetricsContentType[] =
    "text/plain; version=0.0.4; charset=utf-8";

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_METRICS_H_
