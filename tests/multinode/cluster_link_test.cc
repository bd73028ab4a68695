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

#include "cluster.h"
#include "host_executor.h"

namespace epd::cluster {
namespace {

using namespace std::chrono_literals;
constexpr char kSecret[] = "cluster-link-test-secret-0123456789";

GroupSpec make_group(int32_t hidden = 64, epd_layout_t layout = EPD_LAYOUT_RANK_MAJOR) {
  GroupSpec s;
  s.name = "g";
  s.generation = 3;
  s.world_size = 4;
  s.num_experts = 8;
  s.top_k = 2;
  s.hidden = hidden;
  s.dtype = EPD_DTYPE_FP32;
  s.max_tokens_per_rank = 16;
  s.layout = layout;
  s.slots = 2;
  s.timeout_ms = 5000;
  s.placement = {{0, EPD_GPU_HOST}, {0, EPD_GPU_HOST}, {1, EPD_GPU_HOST}, {1, EPD_GPU_HOST}};
  for (int32_t e = 0; e < s.num_experts; ++e) s.expert_owner.push_back(e / 2);
  EXPECT_TRUE(s.validate().is_ok()) << s.validate().to_string();
  return s;
}

struct NodeUnderTest {
  std::unique_ptr<ClusterLink> link;
  std::vector<uint8_t> mirror;  // every rank's region, at rank_offsets
};

transport::TransportConfig config(NodeId id) {
  transport::TransportConfig c;
  c.node_id = id;
  c.listen_address = "127.0.0.1:0";
  c.cluster_secret = kSecret;
  c.heartbeat_interval = 100ms;
  c.peer_timeout = 1000ms;
  c.peers[1 - id] = "127.0.0.1:1";  // replaced once the other listens
  c.log = [](transport::LogSeverity, const std::string&) {};
  return c;
}

// Waits (poll on the event fd, bounded) until pred() holds; the events drained
// meanwhile are appended to *seen when given.
bool wait_for(ClusterLink& l, const std::function<bool()>& pred, std::chrono::milliseconds timeout,
              std::vector<Event>* seen = nullptr) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{l.event_fd(), POLLIN, 0};
    (void)poll(&p, 1, static_cast<int>(left.count()));
    for (Event& e : l.take_events())
      if (seen) seen->push_back(std::move(e));
  }
  return true;
}

// Waits until `count` Event::kShipped for `slot` have come (bounded), each OK.
bool wait_shipped(ClusterLink& l, int32_t slot, int count, std::chrono::milliseconds timeout) {
  std::vector<Event> seen;
  int got = 0;
  const bool ok = wait_for(l, [&] {
    for (; !seen.empty(); seen.erase(seen.begin())) {
      const Event& e = seen.front();
      if (e.kind != Event::Kind::kShipped || e.slot != slot) continue;
      EXPECT_TRUE(e.status.is_ok()) << e.status.to_string();
      ++got;
    }
    return got >= count;
  }, timeout, &seen);
  return ok && got == count;
}

std::vector<uint64_t> offsets(const GroupLayout& L) {
  std::vector<uint64_t> o;
  uint64_t at = 0;
  for (const auto& r : L.ranks) {
    o.push_back(at);
    at += r.bytes;
  }
  return o;
}

class ClusterLinkTest : public ::testing::Test {
 protected:
  void start(const GroupSpec& s0, const GroupSpec& s1, ProxyPinning pinning = {}) {
    for (NodeId id : {0u, 1u}) {
      auto l = ClusterLink::create(config(id), pinning);
      ASSERT_TRUE(l) << l.status().to_string();
      n_[id].link = std::move(l.value());
    }
    n_[0].link->set_peer_address(1, n_[1].link->listen_address());
    n_[1].link->set_peer_address(0, n_[0].link->listen_address());
    const GroupSpec* specs[2] = {&s0, &s1};
    for (NodeId id : {0u, 1u}) {
      const GroupLayout L = GroupLayout::compute(*specs[id]);
      n_[id].mirror.assign(L.total_bytes + 64, 0xA5);  // poisoned
      ASSERT_TRUE(n_[id].link->attach(*specs[id], n_[id].mirror.data(), L.total_bytes, nullptr).is_ok());
      n_[id].link->set_present(specs[id]->name, specs[id]->generation, ranks_on_node(*specs[id], static_cast<int32_t>(id)));
    }
  }
  NodeUnderTest n_[2];
};

TEST_F(ClusterLinkTest, DispatchAndCombineAcrossTwoNodesMatchOneWorkspace) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    SCOPED_TRACE(layout_name(layout));
    const GroupSpec spec = make_group(64, layout);
    start(spec, spec);
    for (NodeId id : {0u, 1u}) {
      std::vector<uint8_t> present;
      ASSERT_TRUE(wait_for(*n_[id].link, [&] {
        Status st = n_[id].link->remote_present("g", 3, &present);
        return st.is_ok() && std::count(present.begin(), present.end(), 1) == 2;
      }, 10s)) << "node " << id << " never saw the other node's ranks";
    }
    const GroupLayout L = GroupLayout::compute(spec);
    const std::vector<uint64_t> off = offsets(L);
    std::vector<uint8_t> ref(L.total_bytes + 64, 0xA5);
    // Every rank's inputs: staged on its own node's mirror and in the reference.
    const int32_t slot = 1;
    for (int32_t r = 0; r < 4; ++r) {
      const int32_t n = static_cast<int32_t>(rng() % 17);
      std::vector<float> x(static_cast<size_t>(n) * 64);
      for (float& v : x) v = static_cast<float>(rng() % 1000) / 7.0f + 1.0f;
      std::vector<int32_t> ids(static_cast<size_t>(n) * 2);
      std::vector<float> w(ids.size());
      for (int32_t t = 0; t < n; ++t) {
        ids[t * 2] = static_cast<int32_t>(rng() % 8);
        ids[t * 2 + 1] = (ids[t * 2] + 1 + static_cast<int32_t>(rng() % 7)) % 8;
        if (rng() % 8 == 0) ids[t * 2 + 1] = -1;
        w[t * 2] = 0.25f + static_cast<float>(rng() % 100) / 100.0f;
        w[t * 2 + 1] = 0.5f;
      }
      DispatchInputs in{x.data(), ids.data(), EPD_ID_INT32, w.data(), n};
      const NodeId home = static_cast<NodeId>(spec.placement[static_cast<size_t>(r)].node);
      const RankLayout& rl = L.ranks[static_cast<size_t>(r)];
      ASSERT_TRUE(stage_dispatch_inputs(spec, rl, n_[home].mirror.data() + off[r], slot, in).is_ok());
      ASSERT_TRUE(stage_dispatch_inputs(spec, rl, ref.data() + off[r], slot, in).is_ok());
    }
    auto bases = [&](std::vector<uint8_t>& m) {
      std::vector<uint8_t*> b;
      for (uint64_t o : off) b.push_back(m.data() + o);
      return b;
    };
    HostExecutor ex_ref(spec, bases(ref)), ex0(spec, bases(n_[0].mirror)), ex1(spec, bases(n_[1].mirror));
    HostExecutor* ex[2] = {&ex0, &ex1};
    uint64_t ticket = 100;
    auto run_op = [&](OpKind op) {
      // As the daemon does: ship() on the proxy thread, Event::kShipped, then the outcome.
      ++ticket;
      for (NodeId id : {0u, 1u})
        ASSERT_EQ(n_[id].link->ship("g", 3, slot, op, ticket).state, ShipResult::State::kPending);
      for (NodeId id : {0u, 1u}) {
        ASSERT_TRUE(wait_shipped(*n_[id].link, slot, 1, 10s));
        const ShipResult r = n_[id].link->ship("g", 3, slot, op, ticket);
        ASSERT_EQ(r.state, ShipResult::State::kDone) << r.status.to_string();
      }
      for (NodeId id : {0u, 1u}) {
        const NodeId other = 1 - id;
        ASSERT_TRUE(wait_for(*n_[id].link, [&] { return n_[id].link->peek_arrival("g", 3, other, slot).has_value(); }, 10s));
        EXPECT_EQ(*n_[id].link->peek_arrival("g", 3, other, slot), op);
        n_[id].link->pop_arrival("g", 3, other, slot);
        EXPECT_FALSE(n_[id].link->peek_arrival("g", 3, other, slot).has_value());
      }
    };
    run_op(OpKind::kDispatch);
    ASSERT_TRUE(ex_ref.dispatch(slot).is_ok());
    for (auto* e : ex) ASSERT_TRUE(e->dispatch(slot).is_ok());
    // Each node's local ranks see exactly what one workspace holding all ranks gives.
    for (int32_t r = 0; r < 4; ++r) {
      const NodeId home = static_cast<NodeId>(spec.placement[static_cast<size_t>(r)].node);
      const SlotOffsets& o = L.ranks[r].slot[slot];
      const uint64_t a = off[r] + o.recv_total, b = off[r] + o.combine_in;
      EXPECT_EQ(0, std::memcmp(ref.data() + a, n_[home].mirror.data() + a, b - a)) << "rank " << r;
    }
    // Expert outputs: every rank writes its combine_in rows on its own node.
    for (int32_t r = 0; r < 4; ++r) {
      const NodeId home = static_cast<NodeId>(spec.placement[static_cast<size_t>(r)].node);
      const RankLayout& rl = L.ranks[r];
      for (const auto& [o, bytes] : op_ranges(spec, rl, ref.data() + off[r], slot, OpKind::kCombine)) {
        for (uint64_t i = 0; i < bytes; i += 4) {
          const float v = static_cast<float>(rng() % 512) / 3.0f;
          std::memcpy(ref.data() + off[r] + o + i, &v, 4);
          std::memcpy(n_[home].mirror.data() + off[r] + o + i, &v, 4);
        }
      }
    }
    run_op(OpKind::kCombine);
    const epd_weight_mode_t mode = layout == EPD_LAYOUT_RANK_MAJOR ? EPD_WEIGHTS_ALREADY_APPLIED : EPD_WEIGHTS_APPLY;
    ASSERT_TRUE(ex_ref.combine(slot, mode).is_ok());
    for (auto* e : ex) ASSERT_TRUE(e->combine(slot, mode).is_ok());
    for (int32_t r = 0; r < 4; ++r) {
      const NodeId home = static_cast<NodeId>(spec.placement[static_cast<size_t>(r)].node);
      const uint64_t a = off[r] + L.ranks[r].slot[slot].combine_out;
      EXPECT_EQ(0, std::memcmp(ref.data() + a, n_[home].mirror.data() + a,
                               static_cast<size_t>(spec.max_tokens_per_rank) * L.ranks[r].in_row_bytes))
          << "combine_out of rank " << r;
    }
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

void wait_both_present(NodeUnderTest* n) {
  for (NodeId id : {0u, 1u}) {
    std::vector<uint8_t> present;
    ASSERT_TRUE(wait_for(*n[id].link, [&] {
      Status st = n[id].link->remote_present("g", 3, &present);
      return st.is_ok() && std::count(present.begin(), present.end(), 1) == 2 && n[id].link->can_ship("g", 3);
    }, 10s)) << "node " << id << " never saw the other node's ranks";
  }
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
