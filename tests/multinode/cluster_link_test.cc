// cluster_link_test.cc — two ClusterLinks in one process over loopback TCP,
// each with its own mirror of a 4-rank group (ranks 0, 1 on node 0; 2, 3 on
// node 1): agreement, shipping dispatch and combine regions, and the
// resulting mirrors checked against one single-node workspace run with every
// rank's inputs (the executor itself is checked against the naive oracle in
// tests/unit). Also: spec mismatch names the field, a lost node is reported.
// Label: multinode (loopback only; no namespaces needed).
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <random>

#include "cluster_round.h"

namespace epd::cluster {
namespace {

using namespace test;

TEST_F(ClusterLinkTest, DispatchAndCombineAcrossTwoNodesMatchOneWorkspace) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    SCOPED_TRACE(layout_name(layout));
    const GroupSpec spec = make_group(64, layout);
    start(spec, spec);
    wait_both_present(n_);
    dispatch_and_combine_round(n_, spec, rng);
    n_[0].link.reset();
    n_[1].link.reset();
  }
}

TEST_F(ClusterLinkTest, SpecMismatchNamesTheFieldAndBothValues) {
  GroupSpec other = make_group(128);
  start(make_group(64), other);
  std::vector<uint8_t> present;
  Status st;
  ASSERT_TRUE(wait_for(*n_[0].link, [&] {
    st = n_[0].link->remote_present("g", 3, &present);
    return !st.is_ok();
  }, 10s));
  EXPECT_EQ(st.code(), EPD_ERR_SPEC_MISMATCH) << st.to_string();
  EXPECT_NE(st.message().find("hidden"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("64"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("128"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("node 1"), std::string::npos) << st.message();
}

TEST_F(ClusterLinkTest, LostNodeIsReportedAndItsRanksVanish) {
  const GroupSpec spec = make_group();
  start(spec, spec);
  std::vector<uint8_t> present;
  ASSERT_TRUE(wait_for(*n_[0].link, [&] {
    return n_[0].link->remote_present("g", 3, &present).is_ok() && present[2] && present[3];
  }, 10s));
  n_[1].link.reset();  // node 1's daemon is gone
  Status lost;
  std::vector<Event> events;
  ASSERT_TRUE(wait_for(*n_[0].link, [&] {
    for (const Event& e : events)
      if (e.kind == Event::Kind::kPeerState && !e.status.is_ok()) lost = e.status;
    return !lost.is_ok();
  }, 10s, &events));
  EXPECT_TRUE(lost.code() == EPD_ERR_PEER_LOST || lost.code() == EPD_ERR_TIMEOUT) << lost.to_string();
  ASSERT_TRUE(n_[0].link->remote_present("g", 3, &present).is_ok());
  EXPECT_EQ(present[2] + present[3], 0);
  Status st = n_[0].link->send_op("g", 3, 0, OpKind::kDispatch);
  EXPECT_EQ(st.code(), EPD_ERR_PEER_LOST) << st.to_string();
  EXPECT_NE(st.message().find("ranks 2, 3"), std::string::npos) << st.message();
}

// The outcome is handed out once, to its own ticket; a later rendezvous of the
// slot waits for the earlier shipping and is then shipped too (nothing lost):
// the other node sees two OP_DONEs, in order.
TEST_F(ClusterLinkTest, ShipOutcomeOncePerTicketAndLaterTicketsWait) {
  const GroupSpec spec = make_group();
  start(spec, spec);
  wait_both_present(n_);
  ClusterLink& a = *n_[0].link;
  ASSERT_EQ(a.ship("g", 3, 0, OpKind::kDispatch, 1).state, ShipResult::State::kPending);
  // Ticket 2 (a newer rendezvous of slot 0) must not start while ticket 1 is
  // queued or running, nor take its outcome.
  ShipResult r2 = a.ship("g", 3, 0, OpKind::kCombine, 2);
  ASSERT_EQ(r2.state, ShipResult::State::kPending);
  ASSERT_TRUE(wait_shipped(a, 0, 1, 10s));
  r2 = a.ship("g", 3, 0, OpKind::kCombine, 2);
  if (r2.state == ShipResult::State::kPending) {  // ticket 1's outcome was dropped and ticket 2 queued now
    ASSERT_TRUE(wait_shipped(a, 0, 1, 10s));
    r2 = a.ship("g", 3, 0, OpKind::kCombine, 2);
  }
  ASSERT_EQ(r2.state, ShipResult::State::kDone) << r2.status.to_string();
  // Taken: the same ticket now starts a new shipping.
  EXPECT_EQ(a.ship("g", 3, 0, OpKind::kCombine, 2).state, ShipResult::State::kPending);
  ASSERT_TRUE(wait_shipped(a, 0, 1, 10s));
  ClusterLink& b = *n_[1].link;
  for (OpKind want : {OpKind::kDispatch, OpKind::kCombine, OpKind::kCombine}) {
    ASSERT_TRUE(wait_for(b, [&] { return b.peek_arrival("g", 3, 0, 0).has_value(); }, 10s));
    EXPECT_EQ(*b.peek_arrival("g", 3, 0, 0), want);
    b.pop_arrival("g", 3, 0, 0);
  }
  EXPECT_FALSE(b.peek_arrival("g", 3, 0, 0).has_value());
}

TEST_F(ClusterLinkTest, ShipToALostNodeIsNotReadyAndNeverBlocks) {
  const GroupSpec spec = make_group();
  start(spec, spec);
  wait_both_present(n_);
  n_[1].link.reset();
  ClusterLink& a = *n_[0].link;
  ASSERT_TRUE(wait_for(a, [&] { return !a.can_ship("g", 3); }, 10s));
  // Not ready: ship() queues nothing and returns at once.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(a.ship("g", 3, 1, OpKind::kDispatch, 7).state, ShipResult::State::kNotReady);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 100ms);
  EXPECT_EQ(a.ship("nope", 3, 1, OpKind::kDispatch, 7).state, ShipResult::State::kFailed);
}

TEST_F(ClusterLinkTest, ProxyAndProgressThreadsPinnedToTheGivenCpus) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  if (CPU_COUNT(&allowed) < 2) GTEST_SKIP() << "needs two allowed CPUs to see the pinning";
  int cpu = -1;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &allowed)) cpu = i;
  ProxyPinning pin;
  pin.nic = "mlx5_9";
  pin.numa_node = 0;
  pin.cpus = {cpu};
  pin.reason = "test";
  const GroupSpec spec = make_group();
  start(spec, spec, pin);
  for (NodeId id : {0u, 1u}) {
    const std::vector<ProxyThreadState> th = n_[id].link->proxy_threads();
    ASSERT_EQ(th.size(), 2u);
    for (const ProxyThreadState& t : th) {
      SCOPED_TRACE(t.role);
      EXPECT_TRUE(t.started);
      EXPECT_TRUE(t.pinned) << t.detail;
      EXPECT_EQ(t.affinity, std::vector<int>{cpu});
      // The thread id `epctl status` shows: a thread of this process, not the test's own.
      EXPECT_NE(t.tid, static_cast<int32_t>(syscall(SYS_gettid)));
      EXPECT_EQ(access(("/proc/self/task/" + std::to_string(t.tid)).c_str(), F_OK), 0) << "tid " << t.tid;
    }
    EXPECT_NE(th[0].tid, th[1].tid);
    EXPECT_EQ(n_[id].link->pinning().nic, "mlx5_9");
  }
  // And shipping works from the pinned proxy.
  wait_both_present(n_);
  ASSERT_EQ(n_[0].link->ship("g", 3, 0, OpKind::kDispatch, 1).state, ShipResult::State::kPending);
  ASSERT_TRUE(wait_shipped(*n_[0].link, 0, 1, 10s));
  EXPECT_EQ(n_[0].link->ship("g", 3, 0, OpKind::kDispatch, 1).state, ShipResult::State::kDone);
}

TEST_F(ClusterLinkTest, UnusableCpusLeaveThreadsUnpinnedAndWorking) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  int outside = -1;
  for (int i = CPU_SETSIZE - 1; i >= 0 && outside < 0; --i)
    if (!CPU_ISSET(i, &allowed)) outside = i;
  if (outside < 0) GTEST_SKIP() << "every CPU number is allowed";
  ProxyPinning pin;
  pin.cpus = {outside};
  const GroupSpec spec = make_group();
  start(spec, spec, pin);
  for (const ProxyThreadState& t : n_[0].link->proxy_threads()) {
    SCOPED_TRACE(t.role);
    EXPECT_TRUE(t.started);
    EXPECT_FALSE(t.pinned);
    EXPECT_NE(t.detail.find("pthread_setaffinity_np(CPUs " + std::to_string(outside) + ")"), std::string::npos)
        << t.detail;
  }
  wait_both_present(n_);
}

TEST(ClusterLinkPin, FormatsCpuLists) {
  EXPECT_EQ(format_cpu_list({}), "");
  EXPECT_EQ(format_cpu_list({3, 0, 1, 2, 8, 10, 9}), "0-3,8-10");
  EXPECT_EQ(format_cpu_list({5}), "5");
}

}  // namespace
}  // namespace epd::cluster
