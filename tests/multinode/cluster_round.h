// cluster_round.h — what the ClusterLink tests share (tests/multinode's
// cluster_link_test and tests/security's cluster_link_test): a 4-rank group on
// two nodes (ranks 0, 1 on node 0; 2, 3 on node 1), two links over loopback
// TCP, bounded waits on their event fds, and one checked dispatch + combine
// round. Header-only; each test binary includes it once.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>

#include "cluster.h"
#include "host_executor.h"

namespace epd::cluster::test {

using namespace std::chrono_literals;
inline constexpr char kSecret[] = "cluster-link-test-secret-0123456789";

inline GroupSpec make_group(int32_t hidden = 64, epd_layout_t layout = EPD_LAYOUT_RANK_MAJOR) {
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

inline transport::TransportConfig config(NodeId id) {
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
inline bool wait_for(ClusterLink& l, const std::function<bool()>& pred, std::chrono::milliseconds timeout,
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
inline bool wait_shipped(ClusterLink& l, int32_t slot, int count, std::chrono::milliseconds timeout) {
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

inline std::vector<uint64_t> offsets(const GroupLayout& L) {
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

inline void wait_both_present(NodeUnderTest* n) {
  for (NodeId id : {0u, 1u}) {
    std::vector<uint8_t> present;
    ASSERT_TRUE(wait_for(*n[id].link, [&] {
      Status st = n[id].link->remote_present("g", 3, &present);
      return st.is_ok() && std::count(present.begin(), present.end(), 1) == 2 && n[id].link->can_ship("g", 3);
    }, 10s)) << "node " << id << " never saw the other node's ranks";
  }
}

// One dispatch and one combine of `slot` (each slot once per pair of links:
// the reference starts from fresh, poisoned memory) through both links, every rank's
// inputs random from `rng`; each node's mirror must match one workspace that
// ran every rank (the executor itself is checked against the naive oracle in
// tests/unit). The links must be started and agree on `spec` (wait_both_present).
inline void dispatch_and_combine_round(NodeUnderTest* node, const GroupSpec& spec, std::mt19937_64& rng,
                                       int32_t slot = 1) {
  const epd_layout_t layout = spec.layout;
  for (NodeId id : {0u, 1u}) {
    std::vector<uint8_t> present;
    ASSERT_TRUE(wait_for(*node[id].link, [&] {
      Status st = node[id].link->remote_present("g", 3, &present);
      return st.is_ok() && std::count(present.begin(), present.end(), 1) == 2;
    }, 10s)) << "node " << id << " never saw the other node's ranks";
  }
  const GroupLayout L = GroupLayout::compute(spec);
  const std::vector<uint64_t> off = offsets(L);
  std::vector<uint8_t> ref(L.total_bytes + 64, 0xA5);
  // Every rank's inputs: staged on its own node's mirror and in the reference.
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
    ASSERT_TRUE(stage_dispatch_inputs(spec, rl, node[home].mirror.data() + off[r], slot, in).is_ok());
    ASSERT_TRUE(stage_dispatch_inputs(spec, rl, ref.data() + off[r], slot, in).is_ok());
  }
  auto bases = [&](std::vector<uint8_t>& m) {
    std::vector<uint8_t*> b;
    for (uint64_t o : off) b.push_back(m.data() + o);
    return b;
  };
  HostExecutor ex_ref(spec, bases(ref)), ex0(spec, bases(node[0].mirror)), ex1(spec, bases(node[1].mirror));
  HostExecutor* ex[2] = {&ex0, &ex1};
  uint64_t ticket = 100;
  auto run_op = [&](OpKind op) {
    // As the daemon does: ship() on the proxy thread, Event::kShipped, then the outcome.
    ++ticket;
    for (NodeId id : {0u, 1u})
      ASSERT_EQ(node[id].link->ship("g", 3, slot, op, ticket).state, ShipResult::State::kPending);
    for (NodeId id : {0u, 1u}) {
      ASSERT_TRUE(wait_shipped(*node[id].link, slot, 1, 10s));
      const ShipResult r = node[id].link->ship("g", 3, slot, op, ticket);
      ASSERT_EQ(r.state, ShipResult::State::kDone) << r.status.to_string();
    }
    for (NodeId id : {0u, 1u}) {
      const NodeId other = 1 - id;
      ASSERT_TRUE(wait_for(*node[id].link, [&] { return node[id].link->peek_arrival("g", 3, other, slot).has_value(); }, 10s));
      EXPECT_EQ(*node[id].link->peek_arrival("g", 3, other, slot), op);
      node[id].link->pop_arrival("g", 3, other, slot);
      EXPECT_FALSE(node[id].link->peek_arrival("g", 3, other, slot).has_value());
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
    EXPECT_EQ(0, std::memcmp(ref.data() + a, node[home].mirror.data() + a, b - a)) << "rank " << r;
  }
  // Expert outputs: every rank writes its combine_in rows on its own node.
  for (int32_t r = 0; r < 4; ++r) {
    const NodeId home = static_cast<NodeId>(spec.placement[static_cast<size_t>(r)].node);
    const RankLayout& rl = L.ranks[r];
    for (const auto& [o, bytes] : op_ranges(spec, rl, ref.data() + off[r], slot, OpKind::kCombine)) {
      for (uint64_t i = 0; i < bytes; i += 4) {
        const float v = static_cast<float>(rng() % 512) / 3.0f;
        std::memcpy(ref.data() + off[r] + o + i, &v, 4);
        std::memcpy(node[home].mirror.data() + off[r] + o + i, &v, 4);
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
    EXPECT_EQ(0, std::memcmp(ref.data() + a, node[home].mirror.data() + a,
                             static_cast<size_t>(spec.max_tokens_per_rank) * L.ranks[r].in_row_bytes))
        << "combine_out of rank " << r;
  }
}

}  // namespace epd::cluster::test
