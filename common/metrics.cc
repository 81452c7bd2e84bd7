#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tunnel::common {
namespace {

bool ValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = absl::ascii_isalpha(c) || c == '_' || (allow_colon && c == ':') ||
              (i > 0 && absl::ascii_isdigit(c));
    if (!ok) return false;
  }
  return true;
}

void AppendSample(std::string* out, absl::string_view name,
                  absl::string_view labels, absl::string_view value) {
  absl::StrAppend(out, name);
  if (!labels.empty()) absl::StrAppend(out, "{", labels, "}");
  absl::StrAppend(out, " ", value, "\n");
}

}  // namespace

std::string EscapeLabelValue(absl::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string EscapeHelp(absl::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatDouble(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // The shortest of 15 or 17 significant digits that reads back exactly.
  std::string s = absl::StrFormat("%.15g", v);
  if (std::strtod(s.c_str(), nullptr) != v) s = absl::StrFormat("%.17g", v);
  return s;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
}

// --- Histogram ---

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  ABSL_RAW_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()),
                 "histogram bounds must ascend");
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  // The first bucket whose upper bound is >= v ("le" is inclusive).
  size_t i =
      std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + v, std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.cumulative.reserve(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

// --- families ---

MetricFamily::MetricFamily(std::string name, std::string help,
                           std::vector<std::string> label_names,
                           const char* type)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      type_(type) {
  ABSL_RAW_CHECK(ValidName(name_, /*allow_colon=*/true), "bad metric name");
  for (const std::string& l : label_names_) {
    ABSL_RAW_CHECK(
        ValidName(l, false) && l != "le" && !absl::StartsWith(l, "__"),
        "bad label name");
  }
}

std::string MetricFamily::LabelKey(
    const std::vector<std::string>& values) const {
  ABSL_RAW_CHECK(values.size() == label_names_.size(),
                 "label value count differs from the label names");
  std::string key;
  for (size_t i = 0; i < values.size(); ++i) {
    absl::StrAppend(&key, i > 0 ? "," : "", label_names_[i], "=\"",
                    EscapeLabelValue(values[i]), "\"");
  }
  return key;
}

void MetricFamily::Render(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n",
                  "# TYPE ", name_, " ", type_, "\n");
  RenderChildren(out);
}

CounterFamily::CounterFamily(std::string name, std::string help,
                             std::vector<std::string> label_names)
    : Family(std::move(name), std::move(help), std::move(label_names),
             "counter") {}

void CounterFamily::RenderChildren(std::string* out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, c] : children_) {
    AppendSample(out, name_, labels, absl::StrCat(c->value()));
  }
}

GaugeFamily::GaugeFamily(std::string name, std::string help,
                         std::vector<std::string> label_names)
    : Family(std::move(name), std::move(help), std::move(label_names),
             "gauge") {}

void GaugeFamily::RenderChildren(std::string* out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [labels, g] : children_) {
    AppendSample(out, name_, labels, absl::StrCat(g->value()));
  }
}

HistogramFamily::HistogramFamily(std::string name, std::string help,
                                 std::vector<std::string> label_names,
                                 std::vector<double> bounds)
    : Family(std::move(name), std::move(help), std::move(label_names),
             "histogram"),
      bounds_(std::move(bounds)) {}

Histogram* HistogramFamily::WithLabels(const std::vector<std::string>& values) {
  return GetOrCreate(values,
                     [this] { return std::make_unique<Histogram>(bounds_); });
}

void HistogramFamily::RenderChildren(std::string* out) const {
  absl::MutexLock lock(&mu_);
  const std::string bucket = absl::StrCat(name_, "_bucket");
  for (const auto& [labels, h] : children_) {
    Histogram::Snapshot s = h->Read();
    const std::string sep = labels.empty() ? "" : ",";
    for (size_t i = 0; i < s.cumulative.size(); ++i) {
      std::string le =
          i < bounds_.size() ? FormatDouble(bounds_[i]) : std::string("+Inf");
      AppendSample(out, bucket, absl::StrCat(labels, sep, "le=\"", le, "\""),
                   absl::StrCat(s.cumulative[i]));
    }
    AppendSample(out, absl::StrCat(name_, "_sum"), labels, FormatDouble(s.sum));
    AppendSample(out, absl::StrCat(name_, "_count"), labels,
                 absl::StrCat(s.count));
  }
}

// --- registry ---

void MetricsRegistry::Add(std::unique_ptr<MetricFamily> family) {
  absl::MutexLock lock(&mu_);
  for (const auto& f : families_) {
    ABSL_RAW_CHECK(f->name() != family->name(), "metric registered twice");
  }
  families_.push_back(std::move(family));
}

CounterFamily* MetricsRegistry::AddCounter(
    std::string name, std::string help, std::vector<std::string> label_names) {
  auto f = std::make_unique<CounterFamily>(std::move(name), std::move(help),
                                           std::move(label_names));
  CounterFamily* raw = f.get();
  Add(std::move(f));
  if (raw->label_count() == 0) raw->WithLabels({});
  return raw;
}

GaugeFamily* MetricsRegistry::AddGauge(std::string name, std::string help,
                                       std::vector<std::string> label_names) {
  auto f = std::make_unique<GaugeFamily>(std::move(name), std::move(help),
                                         std::move(label_names));
  GaugeFamily* raw = f.get();
  Add(std::move(f));
  if (raw->label_count() == 0) raw->WithLabels({});
  return raw;
}

HistogramFamily* MetricsRegistry::AddHistogram(
    std::string name, std::string help, std::vector<std::string> label_names,
    std::vector<double> bounds) {
  auto f = std::make_unique<HistogramFamily>(std::move(name), std::move(help),
                                             std::move(label_names),
                                             std::move(bounds));
  HistogramFamily* raw = f.get();
  Add(std::move(f));
  if (raw->label_count() == 0) raw->WithLabels({});
  return raw;
}

void MetricsRegistry::AddCollectHook(std::function<void()> hook) {
  absl::MutexLock lock(&mu_);
  hooks_.push_back(std::move(hook));
}

std::string MetricsRegistry::Render() const {
  absl::MutexLock render_lock(&render_mu_);
  std::vector<std::function<void()>> hooks;
  std::vector<const MetricFamily*> families;
  {
    absl::MutexLock lock(&mu_);
    hooks = hooks_;
    for (const auto& f : families_) families.push_back(f.get());
  }
  for (const auto& hook : hooks) hook();
  std::string out;
  for (const MetricFamily* f : families) f->Render(&out);
  return out;
}

}  // namespace tunnel::common
