// cluster_link_test.cc — issue 14, finding 4: the cluster link under attack.
// Transports (and two ClusterLinks running a group) on loopback; the attacker
// is this test: a TCP relay it owns between two nodes, raw sockets, a node
// with a wrong secret, a second connection claiming a connected node's id.
// Each attack must end only the attacked connection, with an error naming
// the peer, and leave every other link (and a running job) working.
// Labels: security, multinode. Loopback only; every wait is bounded.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "cluster_round.h"
#include "test_util.h"

namespace epd::transport::test {
namespace {

// Handshake bytes a dialer with no regions sends: HELLO, AUTH, sealed AUTH_OK
// (an advert of 0 regions: 4 bytes).
constexpr size_t kDialerHandshakeBytes = (kHeaderBytes + kHelloBytes) + (kHeaderBytes + kKeyBytes) +
                                         (kSealedHeaderBytes + 4 + kTagBytes);
constexpr size_t kMsgBytes = 100;
constexpr size_t kMsgFrameBytes = kSealedHeaderBytes + kMsgBytes + kTagBytes;

// What the relay does to the dialer's bytes once the handshake passed:
// frames are kMsgFrameBytes each (the test sends only such messages).
enum class Attack { kNone, kRewriteHelloNonce, kFlipByte, kReplay, kSwap, kDrop, kTruncate };

const char* attack_name(Attack a) {
  switch (a) {
    case Attack::kNone: return "none";
    case Attack::kRewriteHelloNonce: return "rewrite HELLO nonce";
    case Attack::kFlipByte: return "flip a payload byte";
    case Attack::kReplay: return "replay a frame";
    case Attack::kSwap: return "swap two frames";
    case Attack::kDrop: return "drop a frame";
    case Attack::kTruncate: return "truncate a frame and close";
  }
  return "?";
}

// The dialer-to-acceptor byte stream through the attack. Returns false when
// the relay must close both sides.
class Tamper {
 public:
  explicit Tamper(Attack a) : a_(a) {}
  bool feed(std::vector<uint8_t>& in, std::vector<uint8_t>* out) {
    if (a_ == Attack::kRewriteHelloNonce) {  // the nonce: bytes [40, 72) of the stream
      for (size_t i = 0; i < in.size(); ++i)
        if (seen_ + i >= kHeaderBytes + 8 && seen_ + i < kHeaderBytes + kHelloBytes) in[i] ^= 0x5a;
    }
    seen_ += in.size();
    buf_.insert(buf_.end(), in.begin(), in.end());
    in.clear();
    if (passed_ < kDialerHandshakeBytes || a_ == Attack::kNone || a_ == Attack::kRewriteHelloNonce) {
      const size_t n = a_ == Attack::kNone || a_ == Attack::kRewriteHelloNonce
                           ? buf_.size()
                           : std::min(buf_.size(), kDialerHandshakeBytes - passed_);
      move(n, out);
    }
    while (buf_.size() >= kMsgFrameBytes && passed_ >= kDialerHandshakeBytes) {
      std::vector<uint8_t> f(buf_.begin(), buf_.begin() + kMsgFrameBytes);
      buf_.erase(buf_.begin(), buf_.begin() + kMsgFrameBytes);
      if (!frame(std::move(f), out)) return false;
    }
    return true;
  }

 private:
  void move(size_t n, std::vector<uint8_t>* out) {
    out->insert(out->end(), buf_.begin(), buf_.begin() + static_cast<ptrdiff_t>(n));
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<ptrdiff_t>(n));
    passed_ += n;
  }
  bool frame(std::vector<uint8_t> f, std::vector<uint8_t>* out) {
    const int idx = frames_++;
    auto emit = [&](const std::vector<uint8_t>& x) { out->insert(out->end(), x.begin(), x.end()); };
    switch (a_) {
      case Attack::kFlipByte:
        if (idx == 0) f[kSealedHeaderBytes + 10] ^= 0x01;
        emit(f);
        return true;
      case Attack::kReplay:
        emit(f);
        if (idx == 0) emit(f);
        return true;
      case Attack::kSwap:
        if (idx == 0) {
          held_ = f;
          return true;
        }
        emit(f);
        if (idx == 1) emit(held_);
        return true;
      case Attack::kDrop:
        if (idx != 0) emit(f);
        return true;
      case Attack::kTruncate:
        out->insert(out->end(), f.begin(), f.begin() + kMsgFrameBytes / 2);
        return false;
      default:
        emit(f);
        return true;
    }
  }
  Attack a_;
  std::vector<uint8_t> buf_, held_;
  size_t seen_ = 0, passed_ = 0;
  int frames_ = 0;
};

bool send_all(int fd, const std::vector<uint8_t>& b) { return b.empty() || raw_write_all(fd, b.data(), b.size()); }

// A TCP relay on 127.0.0.1 owned by the test: accepts one connection, dials
// `upstream`, copies both ways on its thread (the dialer's bytes through the
// Tamper). Ends on close, on the attack's end, or when destroyed.
class Relay {
 public:
  Relay(const std::string& upstream, Attack a) : upstream_(upstream), tamper_(a) {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (::bind(listen_, reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(listen_, 4) != 0 ||
        ::getsockname(listen_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
      ADD_FAILURE() << "relay: cannot listen: " << strerror(errno);
    }
    address_ = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    stop_ = eventfd(0, EFD_CLOEXEC);
    th_ = std::thread([this] { run(); });
  }
  ~Relay() {
    uint64_t one = 1;
    (void)!::write(stop_, &one, sizeof(one));
    th_.join();
    for (int fd : {listen_, stop_, a_, b_})
      if (fd >= 0) ::close(fd);
  }
  const std::string& address() const { return address_; }

 private:
  void run() {
    const Deadline end = deadline_after(60s);
    for (int i = 0; i < 100000 && Clock::now() < end; ++i) {
      pollfd p[3] = {{stop_, POLLIN, 0}, {a_ >= 0 ? a_ : listen_, POLLIN, 0}, {b_, POLLIN, 0}};
      if (::poll(p, b_ >= 0 ? 3 : 2, 1000) < 0 || (p[0].revents & POLLIN)) return;
      if (a_ < 0) {
        if (p[1].revents & POLLIN) accept_and_dial();
        continue;
      }
      if ((p[1].revents & (POLLIN | POLLHUP)) && !pump(a_, b_, true)) return shut();
      if (b_ >= 0 && (p[2].revents & (POLLIN | POLLHUP)) && !pump(b_, a_, false)) return shut();
    }
  }
  void accept_and_dial() {
    a_ = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
    b_ = raw_connect(upstream_);
    if (a_ < 0 || b_ < 0) ADD_FAILURE() << "relay: accept/connect failed";
  }
  bool pump(int from, int to, bool tampered) {
    std::vector<uint8_t> in(64 << 10), out;
    const ssize_t n = ::recv(from, in.data(), in.size(), 0);
    if (n <= 0) return false;
    in.resize(static_cast<size_t>(n));
    if (!tampered) return send_all(to, in);
    const bool go_on = tamper_.feed(in, &out);
    return send_all(to, out) && go_on;
  }
  void shut() {
    for (int fd : {a_, b_})
      if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
  std::string upstream_, address_;
  Tamper tamper_;
  int listen_ = -1, stop_ = -1, a_ = -1, b_ = -1;
  std::thread th_;
};

// Quiet links: no heartbeat inside a test (the relay counts frames), no silence timeout.
void quiet(TransportConfig& c) {
  c.heartbeat_interval = 20s;
  c.peer_timeout = 60s;
}

std::vector<uint8_t> message(uint8_t seed) {
  std::vector<uint8_t> m(kMsgBytes);
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<uint8_t>(seed * 31 + i * 7 + 1);
  return m;
}

bool has_log(Node& n, const std::string& needle) {
  std::lock_guard<std::mutex> l(n.log_mu);
  for (const std::string& s : n.logs)
    if (s.find(needle) != std::string::npos) return true;
  return false;
}

// Node 1 (a) reaches node 2 (b) only through the relay; node 3 (c) directly.
struct Triangle {
  std::unique_ptr<Node> a, b, c;
  std::unique_ptr<Relay> relay;
  explicit Triangle(Attack attack) {
    a = make_node(1, quiet);
    b = make_node(2, quiet);
    c = make_node(3, quiet);
    if (!a || !b || !c) return;
    introduce({a.get(), b.get(), c.get()});
    relay = std::make_unique<Relay>(b->t->listen_address(), attack);
    a->t->set_peer_address(2, relay->address());
  }
  // a's link to c still carries a message both ways.
  void expect_other_links_untouched() {
    ASSERT_TRUE(a->t->peer_status(3).is_ok());
    const std::vector<uint8_t> m = message(9);
    ASSERT_TRUE(a->t->send(3, 5, m.data(), m.size(), deadline_after(5s)).is_ok());
    ASSERT_TRUE(c->t->send(1, 6, m.data(), m.size(), deadline_after(5s)).is_ok());
    EXPECT_TRUE(c->events.wait([&] { return !c->events.messages.empty(); }, 10s));
    EXPECT_TRUE(a->events.wait([&] { return !a->events.messages.empty(); }, 10s));
    std::lock_guard<std::mutex> l(c->events.mu);
    ASSERT_FALSE(c->events.messages.empty());
    EXPECT_EQ(c->events.messages[0].data, m);
  }
};

TEST(ClusterLinkSecurity, RelayRewritingTheHelloCannotAuthenticate) {
  Watchdog wd(60s);
  Triangle t(Attack::kRewriteHelloNonce);
  ASSERT_TRUE(t.a && t.b && t.c && t.relay);
  ASSERT_EQ(connect_all({t.a.get(), t.c.get()}, 10s), "");
  Status sa = t.a->t->connect(2, deadline_after(10s));
  EXPECT_EQ(sa.code(), EPD_ERR_PERMISSION) << sa.to_string();
  Status eb;
  ASSERT_TRUE(t.b->events.wait_peer_error(1, 10s, &eb));
  EXPECT_EQ(eb.code(), EPD_ERR_PERMISSION) << eb.to_string();
  EXPECT_NE(eb.message().find("node 1"), std::string::npos) << eb.message();
  EXPECT_NE(eb.message().find("failed authentication"), std::string::npos) << eb.message();
  EXPECT_FALSE(t.b->t->peer_status(1).is_ok());
  t.expect_other_links_untouched();
}

TEST(ClusterLinkSecurity, TransparentRelayCarriesOnlySealedFrames) {
  Watchdog wd(60s);
  Triangle t(Attack::kNone);
  ASSERT_TRUE(t.a && t.b && t.c && t.relay);
  ASSERT_EQ(connect_all({t.a.get(), t.b.get(), t.c.get()}, 10s), "");
  const std::vector<uint8_t> m = message(1);
  ASSERT_TRUE(t.a->t->send(2, 7, m.data(), m.size(), deadline_after(5s)).is_ok());
  ASSERT_TRUE(t.b->events.wait([&] { return t.b->events.messages.size() == 1; }, 10s));
  std::lock_guard<std::mutex> l(t.b->events.mu);
  EXPECT_EQ(t.b->events.messages[0].data, m);
}

class RelayAttack : public ::testing::TestWithParam<Attack> {};

TEST_P(RelayAttack, FailsOnlyThatConnectionNamingThePeer) {
  Watchdog wd(60s);
  const Attack attack = GetParam();
  SCOPED_TRACE(attack_name(attack));
  Triangle t(attack);
  ASSERT_TRUE(t.a && t.b && t.c && t.relay);
  ASSERT_EQ(connect_all({t.a.get(), t.b.get(), t.c.get()}, 10s), "");
  const std::vector<uint8_t> m0 = message(1), m1 = message(2);
  ASSERT_TRUE(t.a->t->send(2, 7, m0.data(), m0.size(), deadline_after(5s)).is_ok());
  (void)t.a->t->send(2, 7, m1.data(), m1.size(), deadline_after(5s));  // may meet the failure
  Status e;
  ASSERT_TRUE(t.b->events.wait_peer_error(1, 10s, &e));
  EXPECT_NE(e.message().find("node 1"), std::string::npos) << e.message();
  if (attack == Attack::kTruncate) {
    EXPECT_EQ(e.code(), EPD_ERR_PEER_LOST) << e.to_string();
  } else {
    EXPECT_EQ(e.code(), EPD_ERR_PROTOCOL) << e.to_string();
    EXPECT_NE(e.message().find("integrity check"), std::string::npos) << e.message();
  }
  {
    // Nothing altered was delivered; only a frame that arrived intact and in order.
    std::lock_guard<std::mutex> l(t.b->events.mu);
    const size_t want = attack == Attack::kReplay ? 1 : 0;
    EXPECT_EQ(t.b->events.messages.size(), want);
    for (const Message& got : t.b->events.messages) EXPECT_EQ(got.data, m0);
  }
  Status ea;
  EXPECT_TRUE(t.a->events.wait_peer_error(2, 10s, &ea)) << "node 1 never saw its link to node 2 end";
  t.expect_other_links_untouched();
  EXPECT_TRUE(t.b->t->peer_status(3).is_ok()) << t.b->t->peer_status(3).to_string();
}

INSTANTIATE_TEST_SUITE_P(Attacks, RelayAttack,
                         ::testing::Values(Attack::kFlipByte, Attack::kReplay, Attack::kSwap, Attack::kDrop,
                                           Attack::kTruncate));

// A live link to node 1 stays when a stranger claims node 1: with a wrong
// secret (refused for the proof), or with the right one (a second
// authenticated connection of a connected node is refused, the first kept).
TEST(ClusterLinkSecurity, StrangerClaimingAConnectedNodeLeavesTheLinkAlone) {
  Watchdog wd(60s);
  auto a = make_node(1, quiet);
  auto b = make_node(2, quiet);
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  ASSERT_EQ(connect_all({a.get(), b.get()}, 10s), "");
  Status why;
  EXPECT_FALSE(raw_link(b->t->listen_address(), 1, 2, std::string(kSecret) + "-wrong", &why));
  EXPECT_EQ(why.code(), EPD_ERR_PERMISSION) << why.to_string();
  EXPECT_FALSE(raw_link(b->t->listen_address(), 1, 2, kSecret, &why));
  EXPECT_EQ(why.code(), EPD_ERR_PERMISSION) << why.to_string();
  EXPECT_NE(why.message().find("already has an authenticated connection"), std::string::npos) << why.message();
  EXPECT_TRUE(has_log(*b, "already has an authenticated connection"));
  // The live link: no error was reported for node 1, and it carries a message.
  {
    std::lock_guard<std::mutex> l(b->events.mu);
    for (const PeerEvent& pe : b->events.peer_events)
      EXPECT_TRUE(pe.peer != 1 || pe.status.is_ok()) << pe.status.to_string();
  }
  EXPECT_TRUE(b->t->peer_status(1).is_ok());
  const std::vector<uint8_t> m = message(3);
  ASSERT_TRUE(a->t->send(2, 1, m.data(), m.size(), deadline_after(5s)).is_ok());
  EXPECT_TRUE(b->events.wait([&] { return b->events.messages.size() == 1; }, 10s));
}

TEST(ClusterLinkSecurity, OversizedFrameBeforeAuthenticationIsRefused) {
  Watchdog wd(60s);
  auto b = make_node(2, [](TransportConfig& c) {
    quiet(c);
    c.peers[1] = "127.0.0.1:1";
  });
  ASSERT_TRUE(b);
  for (FrameType type : {FrameType::kMessage, FrameType::kReject}) {
    SCOPED_TRACE(frame_type_name(type));
    RawLink raw;
    raw.fd = raw_connect(b->t->listen_address());
    ASSERT_GE(raw.fd, 0);
    FrameHeader h;
    h.type = type;
    h.length = type == FrameType::kMessage ? (1u << 20) : kMaxPreAuthPayload + 1;
    ASSERT_TRUE(raw.send_header(h));
    bool refused = false;
    for (int i = 0; i < 4 && !refused; ++i) {  // b's HELLO, then its REJECT
      FrameHeader got;
      std::vector<uint8_t> payload;
      if (!raw.read_frame(&got, &payload, 10s)) break;
      if (got.type != FrameType::kReject) continue;
      Status r = decode_reject(payload.data(), payload.size(), "b");
      EXPECT_EQ(r.code(), EPD_ERR_PROTOCOL) << r.to_string();
      // A MESSAGE passes the frame limits but not the pre-authentication ones.
      const char* want = type == FrameType::kMessage ? "before authenticating" : "exceeds the limit 1028";
      EXPECT_NE(r.message().find(want), std::string::npos) << r.message();
      refused = true;
    }
    EXPECT_TRUE(refused);
    EXPECT_TRUE(raw_wait_eof(raw.fd, 10s));
  }
  EXPECT_TRUE(raw_link(b->t->listen_address(), 1, 2, kSecret)) << "b stopped serving";
}

TEST(ClusterLinkSecurity, HandshakeDeadlineClosesAStalledConnection) {
  Watchdog wd(60s);
  auto b = make_node(2, [](TransportConfig& c) {
    quiet(c);
    c.handshake_timeout = 300ms;
    c.peers[1] = "127.0.0.1:1";
  });
  ASSERT_TRUE(b);
  for (bool say_hello : {false, true}) {
    SCOPED_TRACE(say_hello ? "HELLO, then silence" : "silence");
    RawLink raw;
    raw.fd = raw_connect(b->t->listen_address());
    ASSERT_GE(raw.fd, 0);
    FrameHeader h;
    std::vector<uint8_t> payload;
    ASSERT_TRUE(raw.read_frame(&h, &payload, 10s));
    ASSERT_EQ(h.type, FrameType::kHello);
    if (say_hello) {
      HelloPayload hp;
      hp.node_id = 1;
      uint8_t body[kHelloBytes];
      encode_hello(hp, body);
      FrameHeader hello;
      hello.type = FrameType::kHello;
      ASSERT_TRUE(raw.send_frame(hello, body, sizeof(body)));
    }
    // peer_timeout is 60 s: only the handshake deadline can close it this soon.
    EXPECT_TRUE(raw_wait_eof(raw.fd, 20s));
  }
  EXPECT_TRUE(has_log(*b, "did not complete the handshake within 300 ms"));
}

TEST(ClusterLinkSecurity, PendingHandshakesPerAddressAreCapped) {
  Watchdog wd(60s);
  auto b = make_node(2, [](TransportConfig& c) {
    quiet(c);
    c.max_pending_per_address = 3;
    c.peers[1] = "127.0.0.1:1";
  });
  ASSERT_TRUE(b);
  std::vector<std::unique_ptr<RawLink>> held;
  for (int i = 0; i < 3; ++i) {
    auto raw = std::make_unique<RawLink>();
    raw->fd = raw_connect(b->t->listen_address());
    FrameHeader h;
    std::vector<uint8_t> payload;
    ASSERT_TRUE(raw->read_frame(&h, &payload, 10s)) << "connection " << i << " was not served";
    held.push_back(std::move(raw));
  }
  RawLink over;
  over.fd = raw_connect(b->t->listen_address());
  ASSERT_GE(over.fd, 0);
  FrameHeader h;
  std::vector<uint8_t> payload;
  EXPECT_FALSE(over.read_frame(&h, &payload, 10s)) << "a 4th pending handshake was served";
  EXPECT_TRUE(has_log(*b, "max_pending_per_address 3"));
  // One pending connection ends (b reports it, as a connection of no known
  // node): the address may start another.
  size_t events = 0;
  {
    std::lock_guard<std::mutex> l(b->events.mu);
    events = b->events.peer_events.size();
  }
  held.pop_back();
  ASSERT_TRUE(b->events.wait([&] { return b->events.peer_events.size() > events; }, 10s));
  RawLink again;
  again.fd = raw_connect(b->t->listen_address());
  EXPECT_TRUE(again.read_frame(&h, &payload, 10s)) << "a freed place was not given to the address";
}

// ---- the secret file ----------------------------------------------------------------------

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/epd-secret-XXXXXX";
    path = mkdtemp(t) ? t : "";
  }
  ~TempDir() {
    if (!path.empty()) (void)!std::system(("rm -rf '" + path + "'").c_str());
  }
};

std::string write_secret_file(const std::string& dir, mode_t mode) {
  const std::string p = dir + "/epd.toml";
  std::ofstream(p) << "[cluster]\nsecret = \"" << kSecret << "\"\n";
  EXPECT_EQ(chmod(p.c_str(), mode), 0);
  return p;
}

TEST(ClusterSecretFile, GroupOrOtherAccessIsRefusedNamingPathModeAndOwner) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    const std::string p = write_secret_file(dir.path, mode);
    Status s = cluster::check_secret_file(p);
    EXPECT_EQ(s.code(), EPD_ERR_PERMISSION) << s.to_string();
    char want[16];
    std::snprintf(want, sizeof(want), "%04o", static_cast<unsigned>(mode));
    EXPECT_NE(s.message().find(p), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(want), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("uid " + std::to_string(geteuid())), std::string::npos) << s.message();
  }
  for (mode_t mode : {0600, 0400}) EXPECT_TRUE(cluster::check_secret_file(write_secret_file(dir.path, mode)));
}

TEST(ClusterSecretFile, AnotherUsersFileIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give the file to another uid";
  TempDir dir;
  const std::string p = write_secret_file(dir.path, 0600);
  ASSERT_EQ(chown(p.c_str(), 65534, 65534), 0) << strerror(errno);
  Status s = cluster::check_secret_file(p);
  EXPECT_EQ(s.code(), EPD_ERR_PERMISSION) << s.to_string();
  EXPECT_NE(s.message().find("owned by uid 65534"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("0600"), std::string::npos) << s.message();
}

TEST(ClusterSecretFile, ClusterLinkRefusesToStart) {
  TempDir dir;
  TransportConfig c = cluster::test::config(0);
  c.cluster_secret_file = write_secret_file(dir.path, 0644);
  auto link = cluster::ClusterLink::create(c);
  ASSERT_FALSE(link);
  EXPECT_EQ(link.status().code(), EPD_ERR_PERMISSION) << link.status().to_string();
  EXPECT_NE(link.status().message().find(c.cluster_secret_file), std::string::npos);
  c.cluster_secret_file = write_secret_file(dir.path, 0600);
  EXPECT_TRUE(cluster::ClusterLink::create(c)) << "a private file must be accepted";
}

#ifdef EPD_TEST_DAEMON
TEST(ClusterSecretFile, DaemonRefusesAReadableSecretAtStart) {
  TempDir dir;
  const std::string cfg = dir.path + "/epd.toml";
  // Refused before it listens: the ports are never bound.
  std::ofstream(cfg) << "[cluster]\nnode_id = 0\nlisten_address = \"127.0.0.1:1\"\nsecret = \"" << kSecret
                     << "\"\npeers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
  ASSERT_EQ(chmod(cfg.c_str(), 0644), 0);
  // `timeout` bounds it should the daemon start after all.
  const std::string cmd = "timeout 30 " EPD_TEST_DAEMON " --config '" + cfg + "' --socket '" + dir.path +
                          "/epd.sock' 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), f)) out += buf;
  const int rc = pclose(f);
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) != 0 && WEXITSTATUS(rc) != 124) << "rc " << rc << "\n" << out;
  EXPECT_NE(out.find(cfg), std::string::npos) << out;
  EXPECT_NE(out.find("0644"), std::string::npos) << out;
}
#endif

}  // namespace
}  // namespace epd::transport::test

// ---- a running two-node job ------------------------------------------------------------------
namespace epd::cluster {
namespace {

using namespace test;

// Attacks on node 1 while the group runs: a wrong-secret connection claiming
// node 0, and a right-secret second connection claiming node 0. Neither may
// make node 0 lost: no peer event, and a dispatch + combine round after them
// gives the same results as before.
TEST_F(ClusterLinkTest, WrongSecretConnectionLeavesARunningJobRunning) {
  transport::test::Watchdog wd(90s);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const GroupSpec spec = make_group();
  start(spec, spec);
  wait_both_present(n_);
  dispatch_and_combine_round(n_, spec, rng, 0);
  std::vector<Event> seen[2];
  for (NodeId id : {0u, 1u})
    for (Event& e : n_[id].link->take_events()) seen[id].push_back(std::move(e));
  Status why;
  EXPECT_FALSE(transport::test::raw_link(n_[1].link->listen_address(), 0, 1, "not-the-cluster-secret-0123", &why));
  EXPECT_EQ(why.code(), EPD_ERR_PERMISSION) << why.to_string();
  EXPECT_FALSE(transport::test::raw_link(n_[1].link->listen_address(), 0, 1, kSecret, &why));
  EXPECT_NE(why.message().find("already has an authenticated connection"), std::string::npos) << why.message();
  dispatch_and_combine_round(n_, spec, rng, 1);
  for (NodeId id : {0u, 1u}) {
    for (Event& e : n_[id].link->take_events()) seen[id].push_back(std::move(e));
    for (const Event& e : seen[id])
      EXPECT_FALSE(e.kind == Event::Kind::kPeerState && !e.status.is_ok())
          << "node " << id << " saw node " << e.node << " lost: " << e.status.to_string();
  }
}

}  // namespace
}  // namespace epd::cluster
