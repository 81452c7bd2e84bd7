// The request inspector's memory (its bounds, masking, filters, live
// changes), how bodies are shown (decompressed, classified), and replays
// against a real HTTP service on 127.0.0.1.
#include "agent/inspector.h"

#include <brotli/encode.h>
#include <zlib.h>

#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/body_view.h"
#include "agent/replay.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace tunnel::agent {
namespace {

tunnel::v1::TunnelRequest Head(const std::string& method,
                               const std::string& path) {
  tunnel::v1::TunnelRequest h;
  h.set_method(method);
  h.set_path(path);
  h.set_request_id(absl::StrCat("req-", path));
  common::AddHeader(h.mutable_headers(), "Host", "cam.example.com");
  common::AddHeader(h.mutable_headers(), "X-Forwarded-For",
                    "10.0.0.1, 203.0.113.7");
  return h;
}

std::string Gzip(const std::string& in) {
  z_stream z{};
  deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, in.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string Brotli(const std::string& in) {
  size_t n = BrotliEncoderMaxCompressedSize(in.size());
  std::string out(n, '\0');
  BrotliEncoderCompress(BROTLI_DEFAULT_QUALITY, BROTLI_DEFAULT_WINDOW,
                        BROTLI_MODE_GENERIC, in.size(),
                        reinterpret_cast<const uint8_t*>(in.data()), &n,
                        reinterpret_cast<uint8_t*>(out.data()));
  out.resize(n);
  return out;
}

const tunnel::v1::Header* FindField(
    const google::protobuf::RepeatedPtrField<tunnel::v1::Header>& list,
    const std::string& name) {
  for (const auto& h : list) {
    if (h.name() == name) return &h;
  }
  return nullptr;
}

TEST(InspectorTest, RecordsARequestWithItsBodiesAndOutcome) {
  Inspector ins({});
  auto c = ins.Begin(Head("POST", "/hook?x=1"), "cam", "", false);
  c->RequestBody("{\"a\":");
  c->RequestBody("1}");
  c->RequestEnd();
  common::HeaderList response;
  common::AddHeader(&response, "Content-Type", "text/plain");
  c->ResponseHead(201, response);
  c->ResponseBody("made");
  c->Finish(Inspector::Outcome::kComplete);
  c->Finish(Inspector::Outcome::kLocalError, "ignored: the first counts");

  auto r = ins.Get(c->id());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->method(), "POST");
  EXPECT_EQ(r->path(), "/hook?x=1");
  EXPECT_EQ(r->tunnel(), "cam");
  EXPECT_EQ(r->status(), 201u);
  EXPECT_EQ(r->outcome(), "complete");
  EXPECT_EQ(r->client_ip(), "203.0.113.7");  // the gateway's, the last entry
  EXPECT_EQ(r->request_id(), "req-/hook?x=1");
  EXPECT_EQ(r->bytes_in(), 7u);
  EXPECT_EQ(r->bytes_out(), 4u);
  EXPECT_EQ(r->request_body().data(), "{\"a\":1}");
  EXPECT_EQ(r->response_body().text(), "made");
  EXPECT_EQ(r->response_body().kind(), "text");
  EXPECT_FALSE(r->response_body().truncated());
  EXPECT_FALSE(r->request_body().truncated());
  EXPECT_TRUE(ins.GetOriginal(c->id())->body_complete);
}

TEST(InspectorTest, AnUploadThatBrokeOffIsMarkedAndNotReplayedAsIfWhole) {
  Inspector ins({});
  auto c = ins.Begin(Head("POST", "/up"), "cam", "", false);
  c->RequestBody("first half");
  c->Finish(Inspector::Outcome::kCancelled, "the visitor went away");
  EXPECT_TRUE(ins.Get(c->id())->request_body().truncated());
  EXPECT_FALSE(ins.GetOriginal(c->id())->body_complete);
  // A whole upload whose service failed afterwards is not cut.
  auto d = ins.Begin(Head("POST", "/up"), "cam", "", false);
  d->RequestBody("all of it");
  d->RequestEnd();
  d->Finish(Inspector::Outcome::kLocalError, "the service broke off");
  EXPECT_FALSE(ins.Get(d->id())->request_body().truncated());
  EXPECT_TRUE(ins.GetOriginal(d->id())->body_complete);
  // Content-Length bytes arrived: whole, with or without the end marker
  // (the forwarder stops reading there).
  tunnel::v1::TunnelRequest sized = Head("POST", "/up");
  common::AddHeader(sized.mutable_headers(), "Content-Length", "9");
  auto e = ins.Begin(sized, "cam", "", false);
  e->RequestBody("all ");
  EXPECT_FALSE(ins.GetOriginal(e->id())->body_complete);
  e->RequestBody("of it");
  e->Finish(Inspector::Outcome::kComplete);
  EXPECT_FALSE(ins.Get(e->id())->request_body().truncated());
  EXPECT_TRUE(ins.GetOriginal(e->id())->body_complete);
}

TEST(InspectorTest, UnfinishedCaptureIsRecordedCancelled) {
  Inspector ins({});
  uint64_t id;
  {
    auto c = ins.Begin(Head("GET", "/big"), "cam", "", false);
    id = c->id();
    common::HeaderList none;
    c->ResponseHead(200, none);
    c->ResponseBody("part");
  }
  auto r = ins.Get(id);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->outcome(), "cancelled");
  // The body never got to its end: marked cut.
  EXPECT_TRUE(r->response_body().truncated());
}

TEST(InspectorTest, KeepsAtMostMaxRequests) {
  InspectorOptions o;
  o.max_requests = 3;
  Inspector ins(o);
  for (int i = 1; i <= 5; ++i) {
    ins.Begin(Head("GET", absl::StrCat("/", i)), "cam", "", false)
        ->Finish(Inspector::Outcome::kComplete);
  }
  tunnel::v1::InspectedList list = ins.List({});
  ASSERT_EQ(list.requests_size(), 3);
  EXPECT_EQ(list.requests(0).path(), "/5");  // newest first
  EXPECT_EQ(list.requests(2).path(), "/3");
  EXPECT_EQ(list.status().evicted(), 2u);
  EXPECT_EQ(list.status().seen(), 5u);
  EXPECT_FALSE(ins.Get(1).has_value());
  EXPECT_TRUE(ins.Get(3).has_value());
}

TEST(InspectorTest, CutsBodiesAtMaxBodyAndAllBodiesAtMaxMemory) {
  InspectorOptions o;
  o.max_body = 1000;
  o.max_memory = 2500;
  Inspector ins(o);
  auto a = ins.Begin(Head("POST", "/a"), "cam", "", false);
  a->RequestBody(std::string(1600, 'a'));  // 1000 kept
  a->Finish(Inspector::Outcome::kComplete);
  auto ra = ins.Get(a->id());
  EXPECT_EQ(ra->request_body().size(), 1600u);
  EXPECT_EQ(ra->request_body().captured(), 1000u);
  EXPECT_TRUE(ra->request_body().truncated());

  auto b = ins.Begin(Head("POST", "/b"), "cam", "", false);
  b->RequestBody(std::string(1000, 'b'));  // 2000 held
  auto c = ins.Begin(Head("POST", "/c"), "cam", "", false);
  c->RequestBody(std::string(1000, 'c'));  // 3000 > 2500: the oldest goes
  EXPECT_FALSE(ins.Get(a->id()).has_value());
  EXPECT_GE(ins.Status().body_bytes(), 2000u);
  EXPECT_LE(ins.Status().body_bytes(), o.max_memory);
  // `b` is in flight; it still may be evicted for room, and `c` keeps on.
  c->ResponseBody(std::string(1000, 'r'));
  EXPECT_LE(ins.Status().body_bytes(), o.max_memory);
  EXPECT_FALSE(ins.Get(b->id()).has_value());
  auto rc = ins.Get(c->id());
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(rc->request_body().data(), std::string(1000, 'c'));
  EXPECT_EQ(rc->response_body().data(), std::string(1000, 'r'));
  // Past max_body: nothing more is kept, the bytes are still counted.
  c->ResponseBody(std::string(1000, 'r'));
  EXPECT_EQ(ins.Get(c->id())->response_body().captured(), 1000u);
  EXPECT_EQ(ins.Get(c->id())->bytes_out(), 2000u);
}

TEST(InspectorTest, MemoryStaysBoundedAsBigBodiesComeAndGo) {
  InspectorOptions o;
  o.max_body = 100 << 10;
  o.max_memory = 1 << 20;
  Inspector ins(o);
  const std::string body(150 << 10, 'x');
  for (int i = 0; i < 50; ++i) {
    tunnel::v1::TunnelRequest head = Head("POST", absl::StrCat("/", i));
    common::AddHeader(head.mutable_headers(), "Content-Length",
                      absl::StrCat(body.size()));
    auto c = ins.Begin(head, "cam", "", false);
    // In pieces, as bodies arrive.
    for (size_t off = 0; off < body.size(); off += 16 << 10) {
      c->RequestBody(absl::string_view(body).substr(off, 16 << 10));
      ASSERT_LE(ins.Status().body_bytes(), o.max_memory) << i;
    }
    c->Finish(Inspector::Outcome::kComplete);
    auto r = ins.Get(c->id());
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->request_body().captured(), o.max_body) << i;
    EXPECT_TRUE(r->request_body().truncated());
  }
  // Ten 100 KiB bodies fit in 1 MiB (less what is kept for reuse).
  EXPECT_GE(ins.Status().requests(), 8u);
  EXPECT_LE(ins.Status().requests(), 10u);
}

TEST(InspectorTest, SmallBodiesDoNotTakeTheBigBuffersKeptForReuse) {
  InspectorOptions o;
  o.max_body = 512 << 10;
  o.max_memory = 4 << 20;
  Inspector ins(o);
  // Big bodies fill memory; the oldest go, and some of their buffers stay.
  for (int i = 0; i < 12; ++i) {
    auto c = ins.Begin(Head("POST", absl::StrCat("/big", i)), "cam", "", false);
    c->RequestBody(std::string(o.max_body, 'b'));
    c->Finish(Inspector::Outcome::kComplete);
  }
  const uint64_t before = ins.Status().body_bytes();
  // A hundred small bodies: each holds its own few bytes, not 512 KiB.
  for (int i = 0; i < 100; ++i) {
    auto c =
        ins.Begin(Head("POST", absl::StrCat("/small", i)), "cam", "", false);
    c->RequestBody(std::string(100, 's'));
    c->Finish(Inspector::Outcome::kComplete);
  }
  EXPECT_LE(ins.Status().body_bytes(), before + 100 * 256);
  // Memory was full with 8 big bodies: the first small one made room by
  // evicting one (and dropping its buffer), the others fit beside 7.
  EXPECT_EQ(ins.Status().requests(), 107u);
}

TEST(InspectorTest, MaxBodyZeroKeepsNoBodiesButCountsThem) {
  InspectorOptions o;
  o.max_body = 0;
  Inspector ins(o);
  auto c = ins.Begin(Head("POST", "/a"), "cam", "", false);
  c->RequestBody("hello");
  c->Finish(Inspector::Outcome::kComplete);
  auto r = ins.Get(c->id());
  EXPECT_EQ(r->bytes_in(), 5u);
  EXPECT_EQ(r->request_body().captured(), 0u);
  EXPECT_TRUE(r->request_body().truncated());
}

TEST(InspectorTest, HeadsCountWithinMaxMemoryToo) {
  InspectorOptions o;
  o.max_memory = 1 << 20;
  Inspector ins(o);
  tunnel::v1::TunnelRequest head = Head("GET", "/");
  common::AddHeader(head.mutable_headers(), "X-Big", std::string(10000, 'h'));
  common::HeaderList response;
  common::AddHeader(&response, "X-Big", std::string(10000, 'r'));
  for (int i = 0; i < 200; ++i) {
    auto c = ins.Begin(head, "cam", "", false);
    c->ResponseHead(200, response);
    c->Finish(Inspector::Outcome::kComplete);
    const auto st = ins.Status();
    ASSERT_LE(st.head_bytes() + st.body_bytes(), o.max_memory) << i;
  }
  // About 20 KB a record: some 50 fit, not 200 (nor max_requests).
  EXPECT_GT(ins.Status().requests(), 40u);
  EXPECT_LT(ins.Status().requests(), 60u);
  EXPECT_GT(ins.Status().evicted(), 100u);
}

TEST(InspectorTest, MasksSecretsUnlessAskedToShowThem) {
  auto head = Head("GET", "/");
  common::AddHeader(head.mutable_headers(), "Authorization",
                    "Bearer abcdefghij");
  common::AddHeader(head.mutable_headers(), "Cookie", "sid=s3cr3t; theme=dark");
  common::AddHeader(head.mutable_headers(), "X-Tunnel-Access-Code", "1234 5");
  common::HeaderList response;
  common::AddHeader(&response, "Set-Cookie", "sid=n3w; Path=/; HttpOnly");
  for (bool show : {false, true}) {
    InspectorOptions o;
    o.show_secrets = show;
    Inspector ins(o);
    auto c = ins.Begin(head, "cam", "", false);
    c->ResponseHead(200, response);
    c->Finish(Inspector::Outcome::kComplete);
    auto r = ins.Get(c->id());
    const auto& req = r->request_headers();
    if (show) {
      EXPECT_EQ(FindField(req, "Authorization")->value(), "Bearer abcdefghij");
      EXPECT_EQ(FindField(req, "Cookie")->value(), "sid=s3cr3t; theme=dark");
      continue;
    }
    EXPECT_EQ(FindField(req, "Authorization")->value(),
              "Bearer <masked: 10 bytes>");
    EXPECT_EQ(FindField(req, "Cookie")->value(),
              "sid=<masked: 6 bytes>; theme=<masked: 4 bytes>");
    EXPECT_EQ(FindField(req, "X-Tunnel-Access-Code")->value(),
              "<masked: 6 bytes>");
    EXPECT_EQ(FindField(r->response_headers(), "Set-Cookie")->value(),
              "sid=<masked: 3 bytes>; Path=/; HttpOnly");
    EXPECT_EQ(FindField(req, "Host")->value(), "cam.example.com");
    // The original stays for replays.
    auto o2 = ins.GetOriginal(c->id());
    EXPECT_EQ(common::FindHeader(o2->headers, "Authorization")->c_str(),
              std::string("Bearer abcdefghij"));
  }
}

// The inspector's view is JSON: a path or field bytes that are not UTF-8
// show there as Latin-1, and a replay sends the bytes as they came.
TEST(InspectorTest, BytesThatAreNotUtf8ShowAsLatin1AndReplayAsTheyCame) {
  Inspector ins({});
  auto head = Head("GET", "/caf\xe9");
  common::AddHeader(head.mutable_headers(), "X-Name", "caf\xe9");
  common::AddHeader(head.mutable_headers(), "Cookie", "caf\xe9=1");
  auto c = ins.Begin(head, "cam", "", false);
  common::HeaderList response;
  common::AddHeader(&response, "Content-Disposition", "filename=\"caf\xe9\"");
  c->ResponseHead(200, response);
  c->Finish(Inspector::Outcome::kComplete);
  auto r = ins.Get(c->id());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->path(), "/caf\xc3\xa9");
  EXPECT_EQ(FindField(r->request_headers(), "X-Name")->value(), "caf\xc3\xa9");
  EXPECT_EQ(FindField(r->response_headers(), "Content-Disposition")->value(),
            "filename=\"caf\xc3\xa9\"");
  // Masked, the cookie's name is still shown.
  EXPECT_EQ(FindField(r->request_headers(), "Cookie")->value(),
            "caf\xc3\xa9=<masked: 1 bytes>");
  std::string json;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(*r, &json).ok());
  EXPECT_NE(json.find("caf\xc3\xa9"), std::string::npos) << json;
  auto o = ins.GetOriginal(c->id());
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->path, "/caf\xe9");
  EXPECT_EQ(*common::FindHeader(o->headers, "X-Name"), "caf\xe9");
}

TEST(InspectorTest, FiltersByStatusMethodAndPath) {
  Inspector ins({});
  common::HeaderList none;
  for (auto [m, p, st] : std::vector<std::tuple<const char*, const char*, int>>{
           {"GET", "/a", 200},
           {"POST", "/hook", 201},
           {"GET", "/b", 404},
           {"GET", "/c", 502},
           {"POST", "/hook/2", 500}}) {
    auto c = ins.Begin(Head(m, p), "cam", "", false);
    c->ResponseHead(st, none);
    c->Finish(Inspector::Outcome::kComplete);
  }
  ins.Begin(Head("GET", "/failed"), "cam", "", false)
      ->Finish(Inspector::Outcome::kLocalError, "refused");
  auto count = [&](Inspector::Filter f) { return ins.List(f).requests_size(); };
  EXPECT_EQ(count({"2xx", "", "", 0}), 2);
  EXPECT_EQ(count({"404", "", "", 0}), 1);
  EXPECT_EQ(count({"5xx", "", "", 0}), 2);
  EXPECT_EQ(count({"error", "", "", 0}), 3);  // 5xx and no answer
  EXPECT_EQ(count({"", "post", "", 0}), 2);
  EXPECT_EQ(count({"", "", "hook", 0}), 2);
  EXPECT_EQ(count({"", "", "", 4}), 4);
  // Summaries leave out fields and body data.
  auto s = ins.List({}).requests(0);
  EXPECT_EQ(s.request_headers_size(), 0);
  EXPECT_TRUE(s.response_body().data().empty());
}

TEST(InspectorTest, WatchersSeeEachChangeAndWakeOnShutdown) {
  Inspector ins({});
  uint64_t seq = ins.seq();
  auto c = ins.Begin(Head("GET", "/a"), "cam", "", false);
  auto changes = ins.WaitForChanges(&seq, absl::Seconds(5));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].outcome(), "in_flight");
  std::thread finisher([&] { c->Finish(Inspector::Outcome::kComplete); });
  changes = ins.WaitForChanges(&seq, absl::Seconds(5));
  finisher.join();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].outcome(), "complete");
  // Nothing new: the wait ends at its timeout, empty.
  EXPECT_TRUE(ins.WaitForChanges(&seq, absl::Milliseconds(20)).empty());
  std::thread stopper([&] { ins.Shutdown(); });
  EXPECT_TRUE(ins.WaitForChanges(&seq, absl::Seconds(30)).empty());
  stopper.join();
  EXPECT_TRUE(ins.WaitForShutdown(absl::ZeroDuration()));
}

TEST(BodyViewTest, DecompressesAndClassifies) {
  const std::string json = "{\"event\":\"paid\",\"amount\":42}";
  BodyView v = ViewBody(Gzip(json), false, "application/json; charset=utf-8",
                        "gzip", 1 << 20);
  EXPECT_EQ(v.kind, "json");
  EXPECT_TRUE(v.decompressed);
  EXPECT_EQ(v.text, json);
  EXPECT_EQ(v.decode_error, "");

  v = ViewBody(Brotli("hello brotli"), false, "text/plain", "br", 1 << 20);
  EXPECT_EQ(v.kind, "text");
  EXPECT_EQ(v.text, "hello brotli");

  v = ViewBody("a=1&b=two", false, "application/x-www-form-urlencoded", "",
               1 << 20);
  EXPECT_EQ(v.kind, "form");
  v = ViewBody(std::string("\x89PNG\r\n\x1a\n\0\0", 10), false, "image/png", "",
               1 << 20);
  EXPECT_EQ(v.kind, "binary");
  EXPECT_EQ(v.text, "");
  v = ViewBody("", false, "", "", 1 << 20);
  EXPECT_EQ(v.kind, "empty");
  // Not valid gzip: shown as binary, with the reason.
  v = ViewBody("not gzip at all", false, "text/plain", "gzip", 1 << 20);
  EXPECT_EQ(v.kind, "binary");
  EXPECT_NE(v.decode_error.find("not valid compressed data"),
            std::string::npos);
}

TEST(BodyViewTest, CutAndHugeCompressedBodiesAreBounded) {
  const std::string text(200000, 'x');
  const std::string gz = Gzip(text);
  // A cut-off body: what its first bytes hold, and why it stops.
  BodyView v = ViewBody(gz.substr(0, gz.size() / 2), true, "text/plain", "gzip",
                        1 << 20);
  EXPECT_EQ(v.kind, "text");
  EXPECT_GT(v.text.size(), 0u);
  EXPECT_LT(v.text.size(), text.size());
  EXPECT_EQ(v.decode_error, "the compressed body ends early");
  // 200 kB inflated, shown at most 1000 bytes.
  v = ViewBody(gz, false, "text/plain", "gzip", 1000);
  EXPECT_EQ(v.text.size(), 1000u);
  EXPECT_TRUE(v.text_truncated);
}

TEST(ReplayEditsTest, ChecksEditsAndKeepsMaskedSecrets) {
  Inspector::Original o;
  o.method = "POST";
  o.path = "/hook";
  common::AddHeader(&o.headers, "Authorization", "Bearer abcdefghij");
  common::AddHeader(&o.headers, "Content-Type", "application/json");
  o.body = "{}";

  struct Bad {
    std::string json_field;
    tunnel::v1::ReplayRequest edits;
    std::string says;
  };
  tunnel::v1::ReplayRequest bad_method;
  bad_method.set_method("GE T");
  tunnel::v1::ReplayRequest bad_path;
  bad_path.set_path("hook");
  tunnel::v1::ReplayRequest bad_path2;
  bad_path2.set_path("/a b");
  tunnel::v1::ReplayRequest bad_field;
  auto* h = bad_field.add_headers();
  h->set_name("X-Evil");
  h->set_value("a\r\nInjected: yes");
  for (const auto& [edits, says] :
       std::vector<std::pair<tunnel::v1::ReplayRequest, std::string>>{
           {bad_method, "is not an HTTP token"},
           {bad_path, "must start with '/'"},
           {bad_path2, "spaces or control characters"},
           {bad_field, "is not a valid HTTP field"}}) {
    Inspector::Original copy = o;
    absl::Status s = ApplyReplayEdits(edits, &copy);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << says;
    EXPECT_NE(s.message().find(says), std::string::npos) << s;
  }

  tunnel::v1::ReplayRequest edits;
  edits.set_method("PUT");
  edits.set_body_text("{\"changed\":true}");
  edits.set_replace_headers(true);
  auto* masked = edits.add_headers();
  masked->set_name("Authorization");
  masked->set_value(MaskHeaderValue("Authorization", "Bearer abcdefghij"));
  auto* added = edits.add_headers();
  added->set_name("X-Added");
  added->set_value("1");
  Inspector::Original copy = o;
  ASSERT_TRUE(ApplyReplayEdits(edits, &copy).ok());
  EXPECT_EQ(copy.method, "PUT");
  EXPECT_EQ(copy.path, "/hook");
  EXPECT_EQ(copy.body, "{\"changed\":true}");
  ASSERT_EQ(copy.headers.size(), 2);
  EXPECT_EQ(copy.headers[0].value(), "Bearer abcdefghij");  // kept
  EXPECT_EQ(copy.headers[1].name(), "X-Added");

  Inspector::Original cut = o;
  cut.body_complete = false;
  EXPECT_EQ(ApplyReplayEdits({}, &cut).code(),
            absl::StatusCode::kFailedPrecondition);
  tunnel::v1::ReplayRequest with_body;
  with_body.set_body("whole");
  EXPECT_TRUE(ApplyReplayEdits(with_body, &cut).ok());
  Inspector::Original upgrade = o;
  upgrade.upgrade = true;
  EXPECT_EQ(ApplyReplayEdits({}, &upgrade).code(),
            absl::StatusCode::kFailedPrecondition);
}

// A real HTTP service on 127.0.0.1 that remembers what it got.
class EchoService {
 public:
  EchoService() {
    auto remember = [this](const httplib::Request& req,
                           httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        method_ = req.method;
        body_ = req.body;
        auth_ = req.get_header_value("Authorization");
        type_ = req.has_header("Content-Type")
                    ? req.get_header_value("Content-Type")
                    : "(none)";
        target_ = req.target;
      }
      res.set_content("{\"ok\":true}", "application/json");
    };
    server_.Post("/hook", remember);
    server_.Get("/hook", remember);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (!server_.is_running() && absl::Now() < give_up) {
      std::this_thread::yield();
    }
  }
  ~EchoService() {
    server_.stop();
    thread_.join();
  }
  LocalTarget Target() const {
    LocalTarget t;
    t.slug = "cam";
    t.scheme = "http";
    t.host = "127.0.0.1";
    t.port = port_;
    t.url = absl::StrCat("http://127.0.0.1:", port_);
    return t;
  }
  std::string method() {
    std::lock_guard<std::mutex> lock(mu_);
    return method_;
  }
  std::string body() {
    std::lock_guard<std::mutex> lock(mu_);
    return body_;
  }
  std::string auth() {
    std::lock_guard<std::mutex> lock(mu_);
    return auth_;
  }
  std::string target() {
    std::lock_guard<std::mutex> lock(mu_);
    return target_;
  }
  std::string type() {
    std::lock_guard<std::mutex> lock(mu_);
    return type_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::string method_, body_, auth_, target_, type_;
};

TEST(ReplayTest, SendsTheRequestAgainAndRecordsItAsAReplay) {
  EchoService service;
  Inspector ins({});
  Inspector::Original o;
  o.slug = "cam";
  o.method = "POST";
  o.path = "/hook?try=2";
  common::AddHeader(&o.headers, "Authorization", "Bearer abcdefghij");
  common::AddHeader(&o.headers, "Content-Type", "application/json");
  common::AddHeader(&o.headers, "Content-Length", "9");
  o.body = "{\"n\": 1}\n";
  absl::StatusOr<uint64_t> id = Replay(ins, service.Target(), o, 7, {});
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(service.method(), "POST");
  EXPECT_EQ(service.target(), "/hook?try=2");
  EXPECT_EQ(service.body(), o.body);
  EXPECT_EQ(service.auth(), "Bearer abcdefghij");
  auto r = ins.Get(*id);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->replay_of(), 7u);
  EXPECT_EQ(r->status(), 200u);
  EXPECT_EQ(r->outcome(), "complete");
  EXPECT_EQ(r->response_body().kind(), "json");
  EXPECT_EQ(r->request_body().text(), o.body);
}

TEST(ReplayTest, KeepsTheMethodAndAddsNoFieldsOfItsOwn) {
  EchoService service;
  Inspector ins({});
  Inspector::Original o;
  o.method = "GET";
  o.path = "/hook";
  common::AddHeader(&o.headers, "Content-Length", "0");  // an empty body
  ASSERT_TRUE(Replay(ins, service.Target(), o, 1, {}).ok());
  EXPECT_EQ(service.method(), "GET");   // not POST, as a body makes curl do
  EXPECT_EQ(service.type(), "(none)");  // no form Content-Type of curl's
  o.method = "POST";
  o.body = "raw";
  ASSERT_TRUE(Replay(ins, service.Target(), o, 1, {}).ok());
  EXPECT_EQ(service.method(), "POST");
  EXPECT_EQ(service.body(), "raw");
  EXPECT_EQ(service.type(), "(none)");
}

TEST(ReplayTest, AServiceThatIsDownIsRecordedAsALocalError) {
  LocalTarget gone;
  {
    EchoService service;
    gone = service.Target();
  }
  Inspector ins({});
  Inspector::Original o;
  o.method = "GET";
  o.path = "/";
  absl::StatusOr<uint64_t> id = Replay(ins, gone, o, 1, {});
  ASSERT_TRUE(id.ok());
  auto r = ins.Get(*id);
  EXPECT_EQ(r->outcome(), "local_error");
  EXPECT_NE(r->error().find("failed the replay"), std::string::npos)
      << r->error();
}

}  // namespace
}  // namespace tunnel::agent
