// netns_test.cc — two transport nodes in two network namespaces joined by a
// veth pair that the test creates (root needed; skipped otherwise): messages
// and bulk writes across the link, then the link set down mid-transfer →
// EPD_ERR_TIMEOUT / EPD_ERR_PEER_LOST on both sides within the deadline.
// The namespaces (and with them the veth pair) are deleted in TearDown.
// Label: multinode.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "test_util.h"

namespace epd::transport::test {
namespace {

int sh(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return rc;
}

class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces";
    const std::string tag = std::to_string(getpid() % 100000);
    ns_a_ = "epdt" + tag + "a";
    ns_b_ = "epdt" + tag + "b";
    veth_a_ = "ve" + tag + "a";
    veth_b_ = "ve" + tag + "b";
    if (sh("ip netns add " + ns_a_) != 0) GTEST_SKIP() << "cannot create network namespaces (ip netns add failed)";
    made_a_ = true;
    ASSERT_EQ(sh("ip netns add " + ns_b_), 0);
    made_b_ = true;
    ASSERT_EQ(sh("ip link add " + veth_a_ + " netns " + ns_a_ + " type veth peer name " + veth_b_ + " netns " + ns_b_), 0);
    ASSERT_EQ(sh("ip -n " + ns_a_ + " addr add 10.231.7.1/24 dev " + veth_a_), 0);
    ASSERT_EQ(sh("ip -n " + ns_b_ + " addr add 10.231.7.2/24 dev " + veth_b_), 0);
    for (const std::string* ns : {&ns_a_, &ns_b_}) ASSERT_EQ(sh("ip -n " + *ns + " link set lo up"), 0);
    ASSERT_EQ(sh("ip -n " + ns_a_ + " link set " + veth_a_ + " up"), 0);
    ASSERT_EQ(sh("ip -n " + ns_b_ + " link set " + veth_b_ + " up"), 0);
  }
  void TearDown() override {
    if (made_a_) {
      EXPECT_EQ(sh("ip netns del " + ns_a_), 0);
    }
    if (made_b_) {
      EXPECT_EQ(sh("ip netns del " + ns_b_), 0);
    }
  }
  // Runs f on a thread that has entered namespace `ns` (sockets it creates live there).
  template <typename F>
  void in_ns(const std::string& ns, F&& f) {
    std::thread th([&] {
      int fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
      ASSERT_GE(fd, 0) << ns;
      ASSERT_EQ(setns(fd, CLONE_NEWNET), 0) << strerror(errno);
      ::close(fd);
      f();
    });
    th.join();
  }
  // Node 1 in ns a dials node 2 in ns b.
  void make_pair(std::unique_ptr<Node>* a, std::unique_ptr<Node>* b, std::chrono::milliseconds peer_timeout) {
    auto tweak = [&](const char* listen) {
      return [=](TransportConfig& c) {
        c.listen_address = listen;
        c.peer_timeout = peer_timeout;
      };
    };
    in_ns(ns_a_, [&] { *a = make_node(1, tweak("10.231.7.1:0")); });
    in_ns(ns_b_, [&] { *b = make_node(2, tweak("10.231.7.2:0")); });
    ASSERT_TRUE(*a && *b);
    introduce({a->get(), b->get()});
  }
  void connect_pair(Node& a, Node& b) {
    Status sb;
    std::thread wait_b([&] { sb = b.t->connect(1, deadline_after(10s)); });
    Status sa;
    in_ns(ns_a_, [&] { sa = a.t->connect(2, deadline_after(10s)); });
    wait_b.join();
    ASSERT_TRUE(sa.is_ok()) << sa.to_string();
    ASSERT_TRUE(sb.is_ok()) << sb.to_string();
  }

  std::string ns_a_, ns_b_, veth_a_, veth_b_;
  bool made_a_ = false, made_b_ = false;
};

TEST_F(NetnsTest, MessagesAndWritesAcrossVeth) {
  Watchdog wd(60s);
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::unique_ptr<Node> a, b;
  std::vector<uint8_t> region(4u << 20, 0), expect(4u << 20, 0);
  make_pair(&a, &b, 3000ms);
  ASSERT_TRUE(b->t->register_region(1, region.data(), region.size()).is_ok());
  connect_pair(*a, *b);
  EXPECT_EQ(a->t->listen_address().rfind("10.231.7.1:", 0), 0u);
  std::vector<std::vector<uint8_t>> sent;
  for (int i = 0; i < 64; ++i) {
    size_t n = rng() % (256u << 10);
    size_t off = rng() % (region.size() - n);
    auto data = random_bytes_vec(rng, n);
    std::memcpy(expect.data() + off, data.data(), n);
    ASSERT_TRUE(a->t->write(2, 1, off, data.data(), n, i, deadline_after(5s)).is_ok());
    sent.push_back(random_bytes_vec(rng, rng() % 2000));
    ASSERT_TRUE(a->t->send(2, i, sent.back().data(), sent.back().size(), deadline_after(5s)).is_ok());
  }
  ASSERT_TRUE(b->events.wait([&] { return b->events.messages.size() == 64 && b->events.writes.size() == 64; }, 20s));
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(b->events.messages[i].data, sent[i]) << i;
    EXPECT_EQ(b->events.writes[i].imm, uint32_t(i));
  }
  EXPECT_TRUE(region == expect);
}

TEST_F(NetnsTest, LinkDownMidTransferIsDetectedWithinTheDeadline) {
  Watchdog wd(60s);
  std::unique_ptr<Node> a, b;
  std::vector<uint8_t> region(16u << 20, 0);
  constexpr auto kPeerTimeout = 1500ms;
  make_pair(&a, &b, kPeerTimeout);
  ASSERT_TRUE(b->t->register_region(1, region.data(), region.size()).is_ok());
  connect_pair(*a, *b);
  std::atomic<bool> stop{false};
  Status stream_end;
  std::vector<uint8_t> block(1u << 20, 0x77);
  std::thread writer([&] {
    for (uint32_t i = 0; i < 1000000 && !stop; ++i) {
      Status s = a->t->write(2, 1, (i % 16) * block.size(), block.data(), block.size(), i, deadline_after(500ms));
      if (!s) {
        stream_end = s;
        return;
      }
    }
  });
  ASSERT_TRUE(b->events.wait([&] { return b->events.writes.size() >= 8; }, 10s)) << "transfer did not start";
  const auto t_down = Clock::now();
  ASSERT_EQ(sh("ip -n " + ns_a_ + " link set " + veth_a_ + " down"), 0);
  Status ea, eb;
  const bool got_a = a->events.wait_peer_error(2, 5s, &ea);
  const bool got_b = b->events.wait_peer_error(1, 5s, &eb);
  const long long ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t_down).count();
  stop = true;
  writer.join();
  ASSERT_TRUE(got_a) << "node 1 saw no error after the link went down";
  ASSERT_TRUE(got_b) << "node 2 saw no error after the link went down";
  for (const Status* s : {&ea, &eb}) {
    EXPECT_TRUE(s->code() == EPD_ERR_TIMEOUT || s->code() == EPD_ERR_PEER_LOST) << s->to_string();
  }
  EXPECT_NE(ea.message().find("node 2"), std::string::npos) << ea.message();
  EXPECT_NE(eb.message().find("node 1"), std::string::npos) << eb.message();
  EXPECT_LT(ms, 1500 + 2000) << "detection took longer than peer_timeout + 2 s";
  Status after = a->t->write(2, 1, 0, block.data(), 4096, 0, deadline_after(500ms));
  EXPECT_TRUE(after.code() == EPD_ERR_TIMEOUT || after.code() == EPD_ERR_PEER_LOST) << after.to_string();
  std::printf("link down: node 1 %s; node 2 %s; both within %lld ms\n", ea.to_string().c_str(),
              eb.to_string().c_str(), ms);
}

}  // namespace
}  // namespace epd::transport::test
