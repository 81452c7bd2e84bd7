#include "agent/inspector.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/body_view.h"
#include "common/header_block.h"

namespace tunnel::agent {
namespace {

// Buffers this big are kept for reuse when their record goes.
constexpr size_t kSpareMin = 64 << 10;

// What a head's fields take, about (names, values, and per-field overhead).
size_t HeadBytes(const common::HeaderList& headers) {
  size_t n = 0;
  for (const tunnel::v1::HeaderField& h : headers) {
    n += h.name().size() + h.value().size() + 64;
  }
  return n;
}

// Heap bytes a body's buffer holds (short strings live inside the record).
size_t Held(const std::string& s) {
  static const size_t kInline = std::string().capacity();
  return s.capacity() > kInline ? s.capacity() : 0;
}

// Decompressed text shown at most: a few times the kept bytes.
size_t MaxText(size_t max_body) {
  return std::max<size_t>(max_body, 1 << 20) * 4;
}

std::string Masked(absl::string_view value) {
  return absl::StrCat("<masked: ", value.size(), " bytes>");
}

// The rightmost X-Forwarded-For entry: the gateway adds the visitor last.
std::string ClientIp(const common::HeaderList& headers) {
  std::string ip;
  for (const tunnel::v1::HeaderField& h : headers) {
    if (!absl::EqualsIgnoreCase(h.name(), "X-Forwarded-For")) continue;
    absl::string_view v = h.value();
    const size_t comma = v.rfind(',');
    if (comma != absl::string_view::npos) v = v.substr(comma + 1);
    ip = std::string(absl::StripAsciiWhitespace(v));
  }
  return ip;
}

uint64_t ContentLength(const common::HeaderList& headers) {
  const std::string* v = common::FindHeader(headers, "Content-Length");
  uint64_t n = 0;
  return v != nullptr && absl::SimpleAtoi(*v, &n) ? n : 0;
}

bool StatusMatches(absl::string_view want, uint32_t status) {
  if (want.empty()) return true;
  if (want == "error") return status == 0 || status >= 500;
  if (want.size() == 3 && absl::EndsWith(want, "xx")) {
    return status / 100 == static_cast<uint32_t>(want[0] - '0');
  }
  uint32_t exact = 0;
  return absl::SimpleAtoi(want, &exact) && exact == status;
}

}  // namespace

bool IsSecretHeader(absl::string_view name) {
  for (absl::string_view s : {"Authorization", "Proxy-Authorization", "Cookie",
                              "Set-Cookie", "X-Tunnel-Access-Code"}) {
    if (absl::EqualsIgnoreCase(name, s)) return true;
  }
  return false;
}

std::string MaskHeaderValue(absl::string_view name, absl::string_view value) {
  if (absl::EqualsIgnoreCase(name, "Cookie") ||
      absl::EqualsIgnoreCase(name, "Set-Cookie")) {
    // Names stay (they tell which cookie went), values go; Set-Cookie's
    // attributes (Path, HttpOnly, ...) after the first pair stay too.
    std::vector<std::string> parts;
    bool first = true;
    for (absl::string_view pair : absl::StrSplit(value, ';')) {
      pair = absl::StripAsciiWhitespace(pair);
      const bool mask = first || absl::EqualsIgnoreCase(name, "Cookie");
      first = false;
      const size_t eq = pair.find('=');
      if (!mask) {
        parts.emplace_back(pair);
      } else if (eq == absl::string_view::npos) {
        parts.push_back(Masked(pair));
      } else {
        parts.push_back(
            absl::StrCat(pair.substr(0, eq), "=", Masked(pair.substr(eq + 1))));
      }
    }
    return absl::StrJoin(parts, "; ");
  }
  // Authorization: the scheme stays ("Bearer <masked: 36 bytes>").
  const size_t space = value.find(' ');
  if (space != absl::string_view::npos && space > 0 &&
      (absl::EqualsIgnoreCase(name, "Authorization") ||
       absl::EqualsIgnoreCase(name, "Proxy-Authorization"))) {
    return absl::StrCat(value.substr(0, space), " ",
                        Masked(value.substr(space + 1)));
  }
  return Masked(value);
}

struct Inspector::Capture::Record {
  uint64_t id = 0;
  absl::Time time;
  absl::Time end = absl::InfiniteFuture();
  std::string tunnel;
  std::string target;
  std::string method;
  std::string path;
  std::string request_id;
  std::string client_ip;
  common::HeaderList request_headers;
  common::HeaderList response_headers;
  uint32_t status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  std::string request_body;
  std::string response_body;
  bool request_cut = false;
  bool request_done = false;  // the request body arrived whole
  bool response_cut = false;
  // Content-Length of each body, when sent: its buffer is allocated once
  // (growing a 1 MiB buffer copied it twice over and faulted in fresh
  // pages: a third of the agent's throughput at 1 MiB responses).
  uint64_t request_length = 0;
  uint64_t response_length = 0;
  bool finished = false;
  std::string outcome = "in_flight";
  std::string error;
  uint64_t replay_of = 0;
  bool upgrade = false;
  bool evicted = false;   // left the ring: bytes no longer kept
  size_t head_bytes = 0;  // its fields' names and values, as counted
  uint64_t seq = 0;       // last change
};

Inspector::Capture::Capture(Inspector* inspector,
                            std::shared_ptr<Record> record)
    : inspector_(inspector), record_(std::move(record)) {}

Inspector::Capture::~Capture() {
  Finish(Outcome::kCancelled, "the agent stopped the request");
}

uint64_t Inspector::Capture::id() const { return record_->id; }

void Inspector::Capture::RequestBody(absl::string_view bytes) {
  absl::MutexLock lock(&inspector_->mu_);
  Record* r = record_.get();
  r->bytes_in += bytes.size();
  // All of a body of known length: whole (the forwarder stops reading at
  // its length, before the stream's end marker).
  if (r->request_length > 0 && r->bytes_in >= r->request_length) {
    r->request_done = true;
  }
  inspector_->Keep(r, &r->request_body, &r->request_cut, r->request_length,
                   bytes);
}

void Inspector::Capture::RequestEnd() {
  absl::MutexLock lock(&inspector_->mu_);
  record_->request_done = true;
}

void Inspector::Capture::ResponseHead(int status,
                                      const common::HeaderList& headers) {
  absl::MutexLock lock(&inspector_->mu_);
  Record* r = record_.get();
  r->status = static_cast<uint32_t>(status);
  if (!r->evicted) {
    const size_t bytes = HeadBytes(headers);
    inspector_->MakeRoom(r, bytes);  // heads count within max_memory too
    r->head_bytes += bytes;
    inspector_->held_ += bytes;
    inspector_->head_bytes_ += bytes;
  }
  r->response_headers = headers;
  r->response_length = ContentLength(headers);
  inspector_->Changed(r);
}

void Inspector::Capture::ResponseBody(absl::string_view bytes) {
  absl::MutexLock lock(&inspector_->mu_);
  Record* r = record_.get();
  r->bytes_out += bytes.size();
  inspector_->Keep(r, &r->response_body, &r->response_cut, r->response_length,
                   bytes);
}

void Inspector::Capture::CountUpgradeBytes(uint64_t in, uint64_t out) {
  absl::MutexLock lock(&inspector_->mu_);
  record_->bytes_in += in;
  record_->bytes_out += out;
}

void Inspector::Capture::Finish(Outcome outcome, absl::string_view error) {
  absl::MutexLock lock(&inspector_->mu_);
  Record* r = record_.get();
  if (r->finished) return;
  r->finished = true;
  r->end = absl::Now();
  r->outcome = outcome == Outcome::kComplete    ? "complete"
               : outcome == Outcome::kCancelled ? "cancelled"
                                                : "local_error";
  r->error = std::string(error);
  inspector_->Changed(r);
}

Inspector::Inspector(InspectorOptions options) : options_(options) {}

Inspector::~Inspector() = default;

std::unique_ptr<Inspector::Capture> Inspector::Begin(
    const tunnel::v1::TunnelRequest& head, absl::string_view slug,
    absl::string_view target, bool upgrade, uint64_t replay_of) {
  auto r = std::make_shared<Record>();
  r->tunnel = std::string(slug);
  r->target = std::string(target);
  r->method = head.method();
  r->path = head.path();
  r->request_id = head.request_id();
  r->request_headers = common::FieldsOf(head);
  r->request_length = ContentLength(r->request_headers);
  r->client_ip = ClientIp(r->request_headers);
  r->upgrade = upgrade;
  r->replay_of = replay_of;
  return Add(std::move(r));
}

std::unique_ptr<Inspector::Capture> Inspector::BeginReplay(
    absl::string_view slug, absl::string_view target, absl::string_view method,
    absl::string_view path, const common::HeaderList& headers,
    uint64_t replay_of) {
  auto r = std::make_shared<Record>();
  r->tunnel = std::string(slug);
  r->target = std::string(target);
  r->method = std::string(method);
  r->path = std::string(path);
  r->request_headers = headers;
  r->replay_of = replay_of;
  return Add(std::move(r));
}

std::unique_ptr<Inspector::Capture> Inspector::Add(std::shared_ptr<Record> r) {
  r->time = absl::Now();
  absl::MutexLock lock(&mu_);
  r->id = next_id_++;
  while (!records_.empty() && records_.size() >= options_.max_requests) {
    EvictOldest();
  }
  r->head_bytes = HeadBytes(r->request_headers);
  MakeRoom(r.get(), r->head_bytes);
  held_ += r->head_bytes;
  head_bytes_ += r->head_bytes;
  records_.push_back(r);
  Changed(r.get());
  return std::unique_ptr<Capture>(new Capture(this, std::move(r)));
}

void Inspector::Changed(Record* r) { r->seq = ++seq_; }

void Inspector::EvictOldest() {
  Record* old = records_.front().get();
  // A request still in flight keeps its Capture; its bytes are no longer
  // kept (or counted). Big buffers are kept for the next bodies, within
  // the budget: a fresh 1 MiB buffer per response costs its page faults.
  for (std::string* body : {&old->request_body, &old->response_body}) {
    held_ -= Held(*body);
    if (body->capacity() >= kSpareMin &&
        spare_bytes_ + body->capacity() <= options_.max_memory / 8) {
      body->clear();
      spare_bytes_ += body->capacity();
      held_ += body->capacity();
      spare_.push_back(std::move(*body));
    }
    *body = std::string();
  }
  held_ -= old->head_bytes;
  head_bytes_ -= old->head_bytes;
  old->evicted = true;
  records_.pop_front();
  ++evicted_;
}

bool Inspector::TakeSpare(size_t cap, std::string* into) {
  // Only big bodies take them, and only buffers about their size: a small
  // body in a 1 MiB buffer would hold memory that keeps other records.
  if (cap < kSpareMin) return false;
  for (size_t i = 0; i < spare_.size(); ++i) {
    if (spare_[i].capacity() < cap || spare_[i].capacity() > 2 * cap) {
      continue;
    }
    spare_bytes_ -= spare_[i].capacity();
    into->swap(spare_[i]);  // held_ unchanged: a spare is counted
    spare_[i].swap(spare_.back());
    spare_.pop_back();
    return true;
  }
  return false;
}

bool Inspector::MakeRoom(const Record* r, size_t bytes) {
  while (held_ + bytes > options_.max_memory) {
    if (!spare_.empty()) {
      held_ -= spare_.back().capacity();
      spare_bytes_ -= spare_.back().capacity();
      spare_.pop_back();
    } else if (!records_.empty() && records_.front().get() != r) {
      EvictOldest();  // older records go, never `r` itself
    } else {
      return false;
    }
  }
  return true;
}

void Inspector::Keep(Record* r, std::string* into, bool* cut, uint64_t length,
                     absl::string_view bytes) {
  if (r->evicted || *cut || bytes.empty()) return;
  size_t take = std::min(bytes.size(), options_.max_body - into->size());
  const size_t need = into->size() + take;
  if (need > into->capacity()) {
    // The whole body at once when its length is known, else doubling.
    size_t cap = length > 0 ? std::min<uint64_t>(length, options_.max_body)
                            : std::min(2 * into->capacity(), options_.max_body);
    cap = std::max(cap, need);
    // A new body takes a kept buffer that fits: no allocation, no fresh
    // pages. When memory is full, the oldest record goes first and its
    // buffer is taken as it frees.
    while (into->empty() && cap >= kSpareMin && !TakeSpare(cap, into) &&
           held_ + cap > options_.max_memory) {
      if (!spare_.empty()) {
        // None fits this body (TakeSpare said so): free one.
        held_ -= spare_.back().capacity();
        spare_bytes_ -= spare_.back().capacity();
        spare_.pop_back();
      } else if (!records_.empty() && records_.front().get() != r) {
        EvictOldest();  // its buffer may fit: TakeSpare tries again
      } else {
        break;
      }
    }
    if (need > into->capacity()) {
      if (!MakeRoom(r, cap - Held(*into))) {
        // No room for the whole body: what fits, then cut.
        const size_t room =
            options_.max_memory > held_ ? options_.max_memory - held_ : 0;
        cap = std::min(cap, Held(*into) + room);
        take = cap > into->size() ? std::min(take, cap - into->size()) : 0;
      }
      if (cap > into->capacity()) {
        held_ -= Held(*into);
        into->reserve(cap);
        held_ += Held(*into);
        (void)MakeRoom(r, 0);  // the allocator may have given more
      }
    }
  }
  take = std::min(take, into->capacity() - into->size());
  into->append(bytes.data(), take);
  if (take < bytes.size()) *cut = true;
}

const Inspector::Record* Inspector::Find(uint64_t id) const {
  auto it = std::lower_bound(
      records_.begin(), records_.end(), id,
      [](const std::shared_ptr<Record>& r, uint64_t v) { return r->id < v; });
  if (it == records_.end() || (*it)->id != id) return nullptr;
  return it->get();
}

tunnel::v1::InspectedRequest Inspector::Show(const Record& r,
                                             bool whole) const {
  tunnel::v1::InspectedRequest out;
  out.set_id(r.id);
  out.set_time(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", r.time, absl::UTCTimeZone()));
  out.set_tunnel(r.tunnel);
  out.set_method(common::Utf8Text(r.method));
  out.set_path(common::Utf8Text(r.path));
  out.set_status(r.status);
  const absl::Time end = r.finished ? r.end : absl::Now();
  out.set_duration_ms(absl::ToDoubleMilliseconds(end - r.time));
  out.set_bytes_in(r.bytes_in);
  out.set_bytes_out(r.bytes_out);
  out.set_request_id(r.request_id);
  out.set_client_ip(r.client_ip);
  out.set_outcome(r.outcome);
  out.set_error(r.error);
  out.set_replay_of(r.replay_of);
  out.set_upgrade(r.upgrade);
  // The view is JSON: bytes that are not UTF-8 are shown as Latin-1.
  auto copy_headers =
      [this](const common::HeaderList& from,
             google::protobuf::RepeatedPtrField<tunnel::v1::Header>* to) {
        for (const tunnel::v1::HeaderField& h : from) {
          tunnel::v1::Header* o = to->Add();
          o->set_name(common::Utf8Text(h.name()));
          o->set_value(common::Utf8Text(
              options_.show_secrets || !IsSecretHeader(h.name())
                  ? h.value()
                  : MaskHeaderValue(h.name(), h.value())));
        }
      };
  if (whole) {
    copy_headers(r.request_headers, out.mutable_request_headers());
    copy_headers(r.response_headers, out.mutable_response_headers());
  }
  // `ended`: all of the body passed (else only its first bytes did).
  auto body = [&](const common::HeaderList& headers, const std::string& data,
                  bool cut, uint64_t size, bool ended,
                  tunnel::v1::InspectedBody* b) {
    const std::string* type = common::FindHeader(headers, "Content-Type");
    const std::string* enc = common::FindHeader(headers, "Content-Encoding");
    b->set_size(size);
    b->set_captured(data.size());
    // Cut, or it never got to its end (cancelled mid-body).
    b->set_truncated(cut || (!ended && size > 0));
    if (type != nullptr) b->set_content_type(*type);
    if (enc != nullptr) b->set_content_encoding(*enc);
    if (whole) b->set_data(data);  // viewed in Get(), outside the lock
  };
  if (!r.upgrade) {
    body(r.request_headers, r.request_body, r.request_cut, r.bytes_in,
         r.request_done || !r.finished, out.mutable_request_body());
    body(r.response_headers, r.response_body, r.response_cut, r.bytes_out,
         r.outcome == "complete" || !r.finished, out.mutable_response_body());
  }
  return out;
}

tunnel::v1::InspectedList Inspector::List(const Filter& f) const {
  tunnel::v1::InspectedList out;
  absl::ReaderMutexLock lock(&mu_);
  for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
    const Record& r = **it;
    if (!StatusMatches(f.status, r.status)) continue;
    if (!f.method.empty() && !absl::EqualsIgnoreCase(f.method, r.method)) {
      continue;
    }
    if (!f.path_contains.empty() &&
        !absl::StrContains(r.path, f.path_contains)) {
      continue;
    }
    *out.add_requests() = Show(r, /*whole=*/false);
    if (f.limit != 0 && static_cast<size_t>(out.requests_size()) >= f.limit) {
      break;
    }
  }
  *out.mutable_status() = StatusLocked();
  return out;
}

std::optional<tunnel::v1::InspectedRequest> Inspector::Get(uint64_t id) const {
  std::optional<tunnel::v1::InspectedRequest> out;
  {
    absl::ReaderMutexLock lock(&mu_);
    const Record* r = Find(id);
    if (r == nullptr) return std::nullopt;
    out = Show(*r, /*whole=*/true);
  }
  // Decompressing may take a while: not under the lock forwarders take.
  for (tunnel::v1::InspectedBody* b :
       {out->mutable_request_body(), out->mutable_response_body()}) {
    if (out->upgrade()) break;
    BodyView v = ViewBody(b->data(), b->truncated(), b->content_type(),
                          b->content_encoding(), MaxText(options_.max_body));
    b->set_kind(v.kind);
    b->set_text(std::move(v.text));
    b->set_decompressed(v.decompressed);
    b->set_decode_error(v.decode_error);
  }
  return out;
}

tunnel::v1::InspectorStatus Inspector::Status() const {
  absl::ReaderMutexLock lock(&mu_);
  return StatusLocked();
}

tunnel::v1::InspectorStatus Inspector::StatusLocked() const {
  tunnel::v1::InspectorStatus s;
  s.set_requests(records_.size());
  s.set_max_requests(options_.max_requests);
  s.set_max_body(options_.max_body);
  s.set_body_bytes(held_ - head_bytes_);
  s.set_head_bytes(head_bytes_);
  s.set_max_memory(options_.max_memory);
  s.set_evicted(evicted_);
  s.set_seen(next_id_ - 1);
  s.set_show_secrets(options_.show_secrets);
  s.set_seq(seq_);
  return s;
}

std::optional<Inspector::Original> Inspector::GetOriginal(uint64_t id) const {
  absl::ReaderMutexLock lock(&mu_);
  const Record* r = Find(id);
  if (r == nullptr) return std::nullopt;
  Original o;
  o.slug = r->tunnel;
  o.target = r->target;
  o.method = r->method;
  o.path = r->path;
  o.headers = r->request_headers;
  o.body = r->request_body;
  o.body_complete = !r->request_cut && r->request_done;
  o.upgrade = r->upgrade;
  return o;
}

std::vector<tunnel::v1::InspectedRequest> Inspector::WaitForChanges(
    uint64_t* seq, absl::Duration timeout) {
  std::vector<tunnel::v1::InspectedRequest> out;
  absl::MutexLock lock(&mu_);
  const uint64_t after = *seq;
  auto ready = [this, after]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutdown_ || seq_ > after;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (shutdown_) return out;
  std::vector<const Record*> changed;
  for (const auto& r : records_) {
    if (r->seq > after) changed.push_back(r.get());
  }
  std::sort(changed.begin(), changed.end(),
            [](const Record* a, const Record* b) { return a->seq < b->seq; });
  for (const Record* r : changed) out.push_back(Show(*r, /*whole=*/false));
  *seq = seq_;
  return out;
}

uint64_t Inspector::seq() const {
  absl::ReaderMutexLock lock(&mu_);
  return seq_;
}

bool Inspector::WaitForShutdown(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&shutdown_), timeout);
}

void Inspector::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

}  // namespace tunnel::agent
