// fault_test.cc — a peer node in a child process that is SIGKILLed (→
// EPD_ERR_PEER_LOST at once) or SIGSTOPped (→ EPD_ERR_TIMEOUT within
// peer_timeout; blocked sends end at their deadline). Children are ended by
// pid. Label: multinode.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "child_node.h"
#include "test_util.h"

namespace epd::transport::test {
namespace {

long long ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

// Connects node 1 (here) to the child node 2 and checks one echo round trip.
std::unique_ptr<Node> connect_to_child(const ChildNode& child, std::chrono::milliseconds peer_timeout,
                                       size_t max_queued) {
  auto a = make_node(1, [&](TransportConfig& c) {
    c.peers[2] = child.address;
    c.peer_timeout = peer_timeout;
    c.tcp.max_queued_bytes = max_queued;
    c.max_message_bytes = std::min(c.max_message_bytes, max_queued);
  });
  if (!a) return nullptr;
  Status s = a->t->connect(2, deadline_after(10s));
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  if (!s) return nullptr;
  const char ping[] = "ping";
  EXPECT_TRUE(a->t->send(2, 5, ping, sizeof(ping), deadline_after(2s)).is_ok());
  EXPECT_TRUE(a->events.wait([&] { return a->events.messages.size() == 1; }, 5s));
  return a;
}

TEST(TransportFault, PeerKilledMidTransferIsPeerLost) {
  ChildNode child;
  std::string err;
  ASSERT_TRUE(spawn_child_node(2, 1, &child, &err)) << err;
  Watchdog wd(60s);
  auto a = connect_to_child(child, 3000ms, 8u << 20);
  ASSERT_TRUE(a);
  // Stream bulk writes; the child acknowledges each. Kill it mid-stream.
  std::vector<uint8_t> block(1u << 20, 0x3c);
  std::atomic<bool> killed{false};
  Status stream_end;
  Clock::time_point t_kill;
  std::thread writer([&] {
    for (uint32_t i = 0; i < 100000; ++i) {
      Status s = a->t->write(2, kChildRegion, (i % 16) * block.size(), block.data(), block.size(), i,
                             deadline_after(5s));
      if (!s) {
        stream_end = s;
        return;
      }
    }
  });
  ASSERT_TRUE(a->events.wait([&] { return a->events.messages.size() >= 20; }, 10s)) << "no write acks";
  t_kill = Clock::now();
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  killed = true;
  Status e;
  ASSERT_TRUE(a->events.wait_peer_error(2, 3s, &e)) << "no PEER_LOST within 3 s of SIGKILL";
  const long long detect_ms = ms_since(t_kill);
  writer.join();
  EXPECT_EQ(e.code(), EPD_ERR_PEER_LOST) << e.to_string();
  EXPECT_NE(e.message().find("node 2"), std::string::npos) << e.message();
  EXPECT_LT(detect_ms, 3000);
  EXPECT_EQ(stream_end.code(), EPD_ERR_PEER_LOST) << stream_end.to_string();
  EXPECT_EQ(a->t->send(2, 1, "x", 1, deadline_after(1s)).code(), EPD_ERR_PEER_LOST);
  EXPECT_EQ(a->t->flush(2, deadline_after(1s)).code(), EPD_ERR_PEER_LOST);
  std::printf("PEER_LOST detected %lld ms after SIGKILL: %s\n", detect_ms, e.to_string().c_str());
  child.kill_and_reap();
}

TEST(TransportFault, StoppedPeerTimesOutWithinDeadline) {
  ChildNode child;
  std::string err;
  ASSERT_TRUE(spawn_child_node(2, 1, &child, &err)) << err;
  Watchdog wd(60s);
  constexpr auto kPeerTimeout = 1000ms;
  auto a = connect_to_child(child, kPeerTimeout, 1u << 20);
  ASSERT_TRUE(a);
  const auto t_stop = Clock::now();
  ASSERT_EQ(::kill(child.pid, SIGSTOP), 0);
  // Fill the socket buffers and the 1 MiB queue: a send must end at its deadline.
  std::vector<uint8_t> chunk(256u << 10, 0x11);
  Status blocked;
  long long blocked_ms = 0;
  for (int i = 0; i < 4096; ++i) {
    const auto t0 = Clock::now();
    Status s = a->t->send(2, 9, chunk.data(), chunk.size(), deadline_after(150ms));
    if (!s) {
      blocked = s;
      blocked_ms = ms_since(t0);
      break;
    }
  }
  EXPECT_EQ(blocked.code(), EPD_ERR_TIMEOUT) << blocked.to_string();
  EXPECT_LT(blocked_ms, 1000) << "a blocked send overran its 150 ms deadline";
  Status e;
  ASSERT_TRUE(a->events.wait_peer_error(2, 4s, &e)) << "no TIMEOUT event for the stopped peer";
  const long long detect_ms = ms_since(t_stop);
  EXPECT_EQ(e.code(), EPD_ERR_TIMEOUT) << e.to_string();
  EXPECT_NE(e.message().find("node 2"), std::string::npos) << e.message();
  EXPECT_GE(detect_ms, 800);  // not before peer_timeout (less one heartbeat of slack)
  EXPECT_LT(detect_ms, 1000 + 1000);
  EXPECT_EQ(a->t->flush(2, deadline_after(1s)).code(), EPD_ERR_TIMEOUT);
  std::printf("TIMEOUT detected %lld ms after SIGSTOP (peer_timeout 1000 ms): %s\n", detect_ms,
              e.to_string().c_str());
  child.kill_and_reap();  // SIGCONT + SIGKILL by pid
}

}  // namespace
}  // namespace epd::transport::test
