// The agent's host role of an encrypted share (agent/relay_host.h) with a
// real OriginLoop and a real local HTTP service; the test plays the browser
// with the protocol library and reads what the host would send to the
// gateway. Each rejection rule of docs/RELAY.md is shown to drop the frame
// without acting on it (a request that would reach the service does not).
#include "agent/relay_host.h"

#include <google/protobuf/util/json_util.h>

#include <atomic>
#include <deque>
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/local_target.h"
#include "agent/origin_loop.h"
#include "common/random.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tunnel/v1/relay.pb.h"

namespace tunnel::agent {
namespace {

namespace relay = common::relay;
using tunnel::v1::Envelope;
using tunnel::v1::RelayFrame;

constexpr uint64_t kClient = 7;

// A real local service: /hello, /count (counts POSTs), /big (1 MiB).
class Service {
 public:
  Service() {
    server_.Get("/hello", [](const httplib::Request&, httplib::Response& r) {
      r.set_content("hello", "text/plain");
    });
    server_.Post(
        "/count", [this](const httplib::Request& req, httplib::Response& r) {
          posts_.fetch_add(1);
          r.set_content(absl::StrCat("got ", req.body.size()), "text/plain");
        });
    server_.Get("/redirect", [this](const httplib::Request&,
                                    httplib::Response& r) {
      r.set_redirect(absl::StrCat("http://127.0.0.1:", port_, "/hello?x=1"));
    });
    server_.Get(
        "/encoding", [](const httplib::Request& req, httplib::Response& r) {
          r.set_content(req.get_header_value("Accept-Encoding"), "text/plain");
        });
    server_.Get("/big", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(std::string(1 << 20, 'b'), "application/octet-stream");
    });
    // Listening once bound: connections queue until the thread serves.
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // Running before the test goes on: a stop() before the thread reached
    // its accept loop did nothing, and the destructor's join then waited
    // forever (seen once in Bazel, and under load).
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (!server_.is_running() && absl::Now() < give_up) {
      std::this_thread::yield();
    }
  }
  ~Service() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  int posts() const { return posts_.load(); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::atomic<int> posts_{0};
  std::thread thread_;
};

// What the host sent, opened as the browser would open it.
class Browser {
 public:
  explicit Browser(const relay::ShareSecrets& s) : secrets_(s) {}

  // The session's send queue as the host sees it: room for body frames
  // while `room` is true (when false, the agent's bounded wait for room
  // gave up).
  RelaySink Sink() {
    return {[this](Envelope e) {
              absl::MutexLock lock(&mu_);
              out_.push_back(std::move(*e.mutable_relay()));
              return true;
            },
            [this] { return room_.load(); }};
  }
  void set_room(bool room) { room_ = room; }
  // Another browser connection (the gateway's id for it).
  void set_client(uint64_t client) { client_ = client; }

  // The next envelope from the host, frame or event (fails the test after
  // 10 s).
  RelayFrame NextEnvelope() {
    absl::MutexLock lock(&mu_);
    auto some = [this]()
                    ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !out_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&some), absl::Seconds(10))) {
      ADD_FAILURE() << "the host sent nothing";
      return {};
    }
    RelayFrame f = std::move(out_.front());
    out_.pop_front();
    return f;
  }

  // The next message from the host (fails the test after 10 s).
  relay::Message Next() {
    RelayFrame f = NextEnvelope();
    EXPECT_EQ(f.session(), secrets_.session);
    EXPECT_EQ(f.client(), client_);
    relay::Message m;
    EXPECT_EQ(relay::OpenMessage(secrets_.key, secrets_.session,
                                 relay::Dir::kH2C, f.frame(), &m),
              relay::Drop::kNone);
    EXPECT_EQ(m.seq, rx_seq_++) << "the host's sequence counts up by one";
    return m;
  }

  // A frame as the browser sends it; `seq` and `conn` default to the next
  // ones of the connection.
  std::string Frame(relay::Type type, const std::string& payload,
                    int64_t seq = -1, const std::string& conn = "") {
    relay::Message m;
    m.type = type;
    m.dir = relay::Dir::kC2H;
    m.seq = seq >= 0 ? static_cast<uint64_t>(seq) : tx_seq_++;
    m.conn = conn.empty() ? conn_ : conn;
    m.payload = payload;
    return relay::SealFrame(secrets_.key, secrets_.session, relay::Dir::kC2H,
                            relay::EncodeMessage(m));
  }

  RelayFrame Wrap(std::string frame) {
    RelayFrame f;
    f.set_session(secrets_.session);
    f.set_client(client_);
    f.set_frame(std::move(frame));
    return f;
  }

  // HELLO → HELLO_ACK; then the host's nonce is the connection's.
  tunnel::v1::RelayHelloAck Hello(RelayHost& host) {
    client_nonce_ = common::RandomBytes(relay::kNonceBytes);
    tx_seq_ = 0;
    rx_seq_ = 0;
    RelayFrame f = Wrap(
        Frame(relay::Type::kHello, R"({"client":"test"})", 0, client_nonce_));
    host.OnFrame(&f);
    relay::Message m = Next();
    EXPECT_EQ(m.type, relay::Type::kHelloAck);
    EXPECT_EQ(m.conn, client_nonce_) << "HELLO_ACK echoes the browser's nonce";
    tunnel::v1::RelayHelloAck ack;
    EXPECT_TRUE(
        google::protobuf::util::JsonStringToMessage(m.payload, &ack).ok());
    conn_ = *common::Base64UrlDecode(ack.host());
    tx_seq_ = 1;
    return ack;
  }

  void Send(RelayHost& host, relay::Type type, const std::string& payload) {
    RelayFrame f = Wrap(Frame(type, payload));
    host.OnFrame(&f);
  }

  const std::string& conn() const { return conn_; }
  const std::string& client_nonce() const { return client_nonce_; }
  uint64_t tx_seq() const { return tx_seq_; }

 private:
  const relay::ShareSecrets secrets_;
  absl::Mutex mu_;
  std::deque<RelayFrame> out_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> room_{true};
  uint64_t client_ = kClient;
  std::string client_nonce_;
  std::string conn_;
  uint64_t tx_seq_ = 0;
  uint64_t rx_seq_ = 0;
};

class RelayHostTest : public ::testing::Test {
 protected:
  RelayHostTest()
      : loop_(16, absl::Seconds(30)),
        secrets_(relay::NewShareSecrets()),
        browser_(secrets_) {
    ShareOptions o;
    o.secrets = secrets_;
    o.target = *ParseTarget(absl::StrCat("http://127.0.0.1:", service_.port()));
    host_ = std::make_unique<RelayHost>(o, &loop_);
    host_->Attach(browser_.Sink(), 256 << 10);
    Event(kClient, RelayFrame::CLIENT_CONNECTED);
  }
  // What the gateway tells the host about a browser's connection.
  void Event(uint64_t client, RelayFrame::Event event) {
    RelayFrame f;
    f.set_session(secrets_.session);
    f.set_client(client);
    f.set_event(event);
    host_->OnFrame(&f);
  }
  ~RelayHostTest() override { host_->Detach(); }

  void Pair() {
    browser_.Send(*host_, relay::Type::kPair,
                  absl::StrCat(R"({"code":")", secrets_.code, R"("})"));
    EXPECT_EQ(browser_.Next().type, relay::Type::kPairOk);
  }

  // GET /hello on `stream`: RESPONSE 200 then DATA "hello" (end).
  void ExpectHello(uint32_t stream) {
    browser_.Send(
        *host_, relay::Type::kRequest,
        absl::StrCat(R"({"stream":)", stream,
                     R"(,"method":"GET","path":"/hello","end":true})"));
    relay::Message head = browser_.Next();
    ASSERT_EQ(head.type, relay::Type::kResponse) << head.payload;
    tunnel::v1::RelayResponse r;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(head.payload, &r).ok());
    EXPECT_EQ(r.stream(), stream);
    EXPECT_EQ(r.status(), 200u);
    EXPECT_EQ(ReadBody(stream), "hello");
  }

  // DATA of `stream` until its end (skipping WINDOW grants for uploads);
  // `each` sees every chunk.
  std::string ReadBody(uint32_t stream,
                       const std::function<void(size_t)>& each = nullptr) {
    std::string body;
    bool end = false;
    while (!end) {
      relay::Message d = browser_.Next();
      if (d.type == relay::Type::kWindow) continue;
      EXPECT_EQ(d.type, relay::Type::kData);
      if (d.type != relay::Type::kData) break;
      uint32_t s = 0;
      absl::string_view bytes;
      EXPECT_TRUE(relay::DecodeData(d.payload, &s, &end, &bytes));
      EXPECT_EQ(s, stream);
      body += std::string(bytes);
      if (each) each(bytes.size());
    }
    return body;
  }

  Service service_;
  OriginLoop loop_;
  const relay::ShareSecrets secrets_;
  Browser browser_;
  std::unique_ptr<RelayHost> host_;
};

TEST_F(RelayHostTest, NothingIsAnsweredBeforeHello) {
  // A PAIR with the right code, before any HELLO: ignored, not answered.
  RelayFrame f = browser_.Wrap(browser_.Frame(
      relay::Type::kPair, absl::StrCat(R"({"code":")", secrets_.code, R"("})"),
      0, std::string(relay::kNonceBytes, 'x')));
  host_->OnFrame(&f);
  // The first thing the host ever says is the HELLO_ACK below.
  tunnel::v1::RelayHelloAck ack = browser_.Hello(*host_);
  EXPECT_EQ(host_->counts().pre_hello, 1u);
  EXPECT_EQ(host_->counts().paired, 0u);
  EXPECT_FALSE(ack.paired());
  EXPECT_EQ(ack.attempts_left(), 5u);
  EXPECT_EQ(ack.window(), common::kDefaultStreamWindow);
}

TEST_F(RelayHostTest, NoRequestIsForwardedBeforePairing) {
  browser_.Hello(*host_);
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"POST","path":"/count","end":true})");
  relay::Message m = browser_.Next();
  EXPECT_EQ(m.type, relay::Type::kError);
  EXPECT_NE(m.payload.find("not_paired"), std::string::npos);
  EXPECT_EQ(host_->counts().not_paired, 1u);
  Pair();
  ExpectHello(3);
  EXPECT_EQ(service_.posts(), 0) << "the early request never reached it";
}

TEST_F(RelayHostTest, PairsAndForwardsRequestsWithBodies) {
  browser_.Hello(*host_);
  Pair();
  ExpectHello(1);
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":2,"method":"POST","path":"/count",)"
                R"("headers":[{"name":"Content-Length","value":"7"}],)"
                R"("end":false})");
  browser_.Send(*host_, relay::Type::kData, relay::EncodeData(2, false, "abc"));
  browser_.Send(*host_, relay::Type::kData, relay::EncodeData(2, true, "defg"));
  relay::Message head = browser_.Next();
  ASSERT_EQ(head.type, relay::Type::kResponse) << head.payload;
  EXPECT_EQ(ReadBody(2), "got 7");
  EXPECT_EQ(service_.posts(), 1);
}

TEST_F(RelayHostTest, ResponseBodiesFollowTheBrowsersCredit) {
  browser_.Hello(*host_);
  Pair();
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"GET","path":"/big","end":true})");
  ASSERT_EQ(browser_.Next().type, relay::Type::kResponse);
  size_t unacked = 0;
  const std::string body = ReadBody(1, [&](size_t n) {
    unacked += n;
    // Never more in flight than the window the host announced.
    EXPECT_LE(unacked, common::kDefaultStreamWindow);
    if (unacked >= 64 << 10) {
      browser_.Send(*host_, relay::Type::kWindow,
                    absl::StrCat(R"({"stream":1,"increment":)", unacked, "}"));
      unacked = 0;
    }
  });
  EXPECT_EQ(body.size(), size_t{1} << 20);
}

TEST_F(RelayHostTest, ReplayedSkippedForgedAndForeignFramesAreDropped) {
  browser_.Hello(*host_);
  Pair();
  const std::string post =
      R"({"stream":9,"method":"POST","path":"/count","end":true})";
  // Recorded once, with the sequence number it would have next...
  const uint64_t seq = browser_.tx_seq();
  const std::string recorded = browser_.Frame(relay::Type::kRequest, post, seq);
  // ... and sent twice: the second is a replay.
  RelayFrame f = browser_.Wrap(recorded);
  host_->OnFrame(&f);
  relay::Message head = browser_.Next();
  ASSERT_EQ(head.type, relay::Type::kResponse);
  ASSERT_NE(head.payload.find(R"("status":200)"), std::string::npos)
      << head.payload;
  ASSERT_EQ(browser_.Next().type, relay::Type::kData);
  ASSERT_EQ(service_.posts(), 1);
  f = browser_.Wrap(recorded);
  host_->OnFrame(&f);
  // A skipped sequence number.
  f = browser_.Wrap(browser_.Frame(relay::Type::kRequest, post, seq + 5));
  host_->OnFrame(&f);
  // The old connection's nonce (the browser's HELLO nonce).
  f = browser_.Wrap(browser_.Frame(relay::Type::kRequest, post, seq + 1,
                                   browser_.client_nonce()));
  host_->OnFrame(&f);
  // A flipped bit in the tag.
  std::string forged = browser_.Frame(relay::Type::kRequest, post, seq + 1);
  forged[relay::kIvBytes] ^= 1;
  f = browser_.Wrap(forged);
  host_->OnFrame(&f);
  // Sealed for another session, and in the host's direction.
  relay::Message m;
  m.type = relay::Type::kRequest;
  m.dir = relay::Dir::kC2H;
  m.seq = seq + 1;
  m.conn = browser_.conn();
  m.payload = post;
  f = browser_.Wrap(relay::SealFrame(secrets_.key, "AAAAAAAAAAAAAAAAAAAAAA",
                                     relay::Dir::kC2H,
                                     relay::EncodeMessage(m)));
  host_->OnFrame(&f);
  f = browser_.Wrap(relay::SealFrame(secrets_.key, secrets_.session,
                                     relay::Dir::kH2C,
                                     relay::EncodeMessage(m)));
  host_->OnFrame(&f);
  // None was acted on: the next in-sequence request is answered first, and
  // the service saw one POST only.
  const RelayHostCounts c = host_->counts();
  EXPECT_EQ(c.dropped[static_cast<int>(relay::Drop::kSequence)], 2u);
  EXPECT_EQ(c.dropped[static_cast<int>(relay::Drop::kConn)], 1u);
  EXPECT_EQ(c.dropped[static_cast<int>(relay::Drop::kAuth)], 3u);
  EXPECT_EQ(service_.posts(), 1);
}

TEST_F(RelayHostTest, FiveWrongCodesLockTheShare) {
  tunnel::v1::RelayHelloAck ack = browser_.Hello(*host_);
  ASSERT_EQ(ack.attempts_left(), 5u);
  std::string wrong = secrets_.code;
  wrong[0] = wrong[0] == '0' ? '1' : '0';
  for (int i = 1; i <= 5; ++i) {
    browser_.Send(*host_, relay::Type::kPair,
                  absl::StrCat(R"({"code":")", wrong, R"("})"));
    relay::Message m = browser_.Next();
    ASSERT_EQ(m.type, relay::Type::kError);
    if (i < 5) {
      EXPECT_NE(m.payload.find("bad_code"), std::string::npos) << m.payload;
      EXPECT_NE(m.payload.find(absl::StrCat(R"("attemptsLeft":)", 5 - i)),
                std::string::npos)
          << m.payload;
    } else {
      EXPECT_NE(m.payload.find("locked"), std::string::npos) << m.payload;
    }
  }
  // Locked: the right code no longer pairs, on this or a new connection.
  browser_.Send(*host_, relay::Type::kPair,
                absl::StrCat(R"({"code":")", secrets_.code, R"("})"));
  relay::Message m = browser_.Next();
  EXPECT_EQ(m.type, relay::Type::kError);
  EXPECT_NE(m.payload.find("locked"), std::string::npos);
  EXPECT_TRUE(browser_.Hello(*host_).locked());
  EXPECT_TRUE(host_->counts().locked);
  EXPECT_EQ(host_->counts().paired, 0u);
}

TEST_F(RelayHostTest, RedirectsToTheServiceBecomePaths) {
  browser_.Hello(*host_);
  Pair();
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"GET","path":"/redirect",)"
                R"("headers":[{"name":"Accept-Encoding","value":"br"}],)"
                R"("end":true})");
  relay::Message head = browser_.Next();
  ASSERT_EQ(head.type, relay::Type::kResponse);
  EXPECT_NE(head.payload.find(R"({"name":"Location","value":"/hello?x=1"})"),
            std::string::npos)
      << head.payload;
}

TEST_F(RelayHostTest, TheServiceIsAskedForUnencodedBodies) {
  browser_.Hello(*host_);
  Pair();
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"GET","path":"/encoding",)"
                R"("headers":[{"name":"Accept-Encoding","value":"br"}],)"
                R"("end":true})");
  ASSERT_EQ(browser_.Next().type, relay::Type::kResponse);
  EXPECT_EQ(ReadBody(1), "identity");
}

TEST_F(RelayHostTest, FramesOfABrowserTheGatewayNeverAnnouncedAreDropped) {
  // Client 8 was never announced (CLIENT_CONNECTED): its HELLO is dropped.
  RelayFrame f = browser_.Wrap(browser_.Frame(
      relay::Type::kHello, "{}", 0, std::string(relay::kNonceBytes, 'n')));
  f.set_client(8);
  host_->OnFrame(&f);
  EXPECT_EQ(host_->counts().unknown_client, 1u);
  // The announced one is answered, and first.
  browser_.Hello(*host_);
}

TEST_F(RelayHostTest, AMalformedPairUsesNoAttempt) {
  browser_.Hello(*host_);
  browser_.Send(*host_, relay::Type::kPair, "not json");
  EXPECT_EQ(host_->counts().malformed_payloads, 1u);
  EXPECT_EQ(host_->counts().wrong_codes, 0u);
  Pair();  // the next message is the answer to the right code
}

// A frame that finds the session's send queue full for too long (the agent
// waited its local timeout) cannot be queued; a gap in the sequence would
// stall the browser forever, so the host ends this browser's connection
// instead. The browser's next connection works as before.
TEST_F(RelayHostTest, AFullSendQueueEndsTheBrowsersConnectionNotTheShare) {
  browser_.Hello(*host_);
  Pair();
  browser_.set_room(false);
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"GET","path":"/hello","end":true})");
  // The response head found no room: the end of the connection, and
  // nothing of the answer before it.
  RelayFrame bye = browser_.NextEnvelope();
  EXPECT_EQ(bye.event(), RelayFrame::CLIENT_DISCONNECTED);
  EXPECT_EQ(bye.client(), kClient);
  EXPECT_EQ(bye.frame(), "");
  // The gateway closes that connection; the browser comes back on another.
  Event(kClient, RelayFrame::CLIENT_DISCONNECTED);
  browser_.set_room(true);
  browser_.set_client(kClient + 1);
  Event(kClient + 1, RelayFrame::CLIENT_CONNECTED);
  // Next() checks the client: a frame of the old connection after its end
  // would come first and fail here.
  browser_.Hello(*host_);
  Pair();
  ExpectHello(1);
}

TEST_F(RelayHostTest, ANewHelloStartsTheConnectionOver) {
  browser_.Hello(*host_);
  Pair();
  // The browser reconnected: a new HELLO, and it must pair again.
  browser_.Hello(*host_);
  browser_.Send(*host_, relay::Type::kRequest,
                R"({"stream":1,"method":"GET","path":"/hello","end":true})");
  relay::Message m = browser_.Next();
  EXPECT_EQ(m.type, relay::Type::kError);
  Pair();
  ExpectHello(1);
}

}  // namespace
}  // namespace tunnel::agent
