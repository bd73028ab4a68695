// layout_test.cc — the workspace layout contract of layout.h: every region
// 256-byte aligned, after the control block, inside the workspace, disjoint
// from every other region of every slot; sizes and the total equal to the
// header's formulas (computed independently by the oracle); row placement of
// both layouts on small hand-worked examples.
// Also checks epd_group_workspace_bytes, deprecated (epd_group_spec_workspace_bytes
// replaces it) but exported until 0.3.
#define EPD_NO_DEPRECATION_WARNINGS
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "property_check.h"

namespace epd_test {
namespace {

struct Region {
  const char* name;
  int32_t slot;
  uint64_t off, bytes;
};

std::vector<Region> regions_of(const epd::RankLayout& l, const OracleSpec& s, int32_t rank) {
  const auto sizes = oracle_slot_regions(s, rank);
  std::vector<Region> out;
  for (int32_t i = 0; i < s.slots; ++i) {
    const epd::SlotOffsets& o = l.slot[i];
    const uint64_t offs[] = {o.send_hdr,    o.send_x,      o.send_ids,  o.send_weights, o.route_rank,
                             o.route_row,   o.recv_total,  o.recv_counts, o.recv_x,     o.recv_scales,
                             o.recv_ids,    o.recv_weights, o.recv_src,  o.combine_in, o.combine_out};
    static_assert(sizeof offs / sizeof offs[0] == 15, "one offset per region of the header");
    for (size_t k = 0; k < sizes.size(); ++k) out.push_back({sizes[k].name, i, offs[k], sizes[k].bytes});
  }
  return out;
}

void check_layout(const CaseSpec& cs) {
  SCOPED_TRACE(cs.describe());
  const epd::GroupSpec spec = cs.group_spec();
  ASSERT_TRUE(spec.validate().is_ok()) << spec.validate().to_string();
  const epd::GroupLayout g = epd::GroupLayout::compute(spec);
  ASSERT_EQ(g.ranks.size(), static_cast<size_t>(cs.o.world_size));
  uint64_t sum = 0;
  for (int32_t r = 0; r < cs.o.world_size; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const epd::RankLayout& l = g.ranks[r];
    const uint64_t want = oracle_workspace_bytes(cs.o, r);
    EXPECT_EQ(l.bytes, want) << "workspace bytes differ from the header's formulas";
    epd_group_spec_t c = cs.c();
    uint64_t api = 0;
    ASSERT_EQ(epd_group_workspace_bytes(&c, r, &api), EPD_OK);
    EXPECT_EQ(api, want);
    EXPECT_EQ(epd::workspace_bytes(spec, r), want);
    EXPECT_EQ(l.bytes, epd::kControlBytes + static_cast<uint64_t>(cs.o.slots) * l.slot_bytes);
    EXPECT_EQ(l.slot_bytes % 256, 0u);
    const int32_t L = static_cast<int32_t>(std::count(cs.o.owner.begin(), cs.o.owner.end(), r));
    const int64_t WM = static_cast<int64_t>(cs.o.world_size) * cs.o.max_tokens;
    EXPECT_EQ(l.rank, r);
    EXPECT_EQ(l.local_experts, L);
    EXPECT_EQ(l.recv_rows, cs.o.layout == EPD_LAYOUT_RANK_MAJOR ? WM : L * WM);
    EXPECT_EQ(l.ids_per_row, cs.o.layout == EPD_LAYOUT_RANK_MAJOR ? cs.o.top_k : 1);
    EXPECT_EQ(l.scale_blocks, cs.o.fp8 ? cs.o.hidden / 128 : 0);
    EXPECT_EQ(l.in_row_bytes, static_cast<uint64_t>(cs.o.hidden) * oracle_dtype_bytes(cs.o.dtype));
    EXPECT_EQ(l.recv_row_bytes, cs.o.fp8 ? static_cast<uint64_t>(cs.o.hidden) : l.in_row_bytes);
    sum += l.bytes;

    const std::vector<Region> regs = regions_of(l, cs.o, r);
    for (const Region& a : regs) {
      EXPECT_EQ(a.off % 256, 0u) << a.name << " of slot " << a.slot << " at " << a.off;
      EXPECT_GE(a.off, epd::kControlBytes) << a.name << " overlaps the control block";
      EXPECT_LE(a.off + a.bytes, l.bytes) << a.name << " of slot " << a.slot << " ends past the workspace";
      // Inside its own slot area.
      const uint64_t slot_start = epd::kControlBytes + static_cast<uint64_t>(a.slot) * l.slot_bytes;
      EXPECT_GE(a.off, slot_start) << a.name;
      EXPECT_LE(a.off + a.bytes, slot_start + l.slot_bytes) << a.name;
    }
    for (size_t i = 0; i < regs.size(); ++i)
      for (size_t j = i + 1; j < regs.size(); ++j) {
        const Region &a = regs[i], &b = regs[j];
        if (a.bytes == 0 || b.bytes == 0) continue;
        const bool disjoint = a.off + a.bytes <= b.off || b.off + b.bytes <= a.off;
        EXPECT_TRUE(disjoint) << a.name << " (slot " << a.slot << ", [" << a.off << ", " << a.off + a.bytes
                              << ")) overlaps " << b.name << " (slot " << b.slot << ", [" << b.off << ", "
                              << b.off + b.bytes << "))";
      }
  }
  EXPECT_EQ(g.total_bytes, sum);
  // bytes_on: the sum over the ranks placed on a device.
  EXPECT_EQ(g.bytes_on(spec, 0, EPD_GPU_HOST), sum) << "every rank defaults to the host of node 0";
  EXPECT_EQ(g.bytes_on(spec, 0, 0), 0u);
}

TEST(Layout, RandomSpecsMatchTheHeaderFormulas) {
  for (int i = 0; i < 300; ++i) {
    const uint64_t seed = case_seed(0x1a70, i);
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    check_layout(random_spec(rng, i % 2 ? EPD_LAYOUT_RANK_MAJOR : EPD_LAYOUT_EXPERT_MAJOR, uint64_t{1} << 40));
    if (HasFatalFailure()) return;
  }
}

TEST(Layout, LargeSpecsDoNotOverflow) {
  for (epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    // The benchmark's shape, and capacities where 32-bit byte counts would wrap.
    check_layout(make_case_spec(8, 256, 8, 7168, EPD_DTYPE_BF16, true, 4096, layout, 2));
    // Regions above 4 GiB (expert_major), the group under EPD_MAX_GROUP_WORKSPACE_BYTES.
    check_layout(make_case_spec(16, 256, 8, 7168, EPD_DTYPE_FP32, false, 1024, layout, 2));
    check_layout(make_case_spec(1, 256, 9, 1 << 20, EPD_DTYPE_FP16, false, 256, layout, 2));
    // Above it: refused, naming the bytes (tests/security/spec_bounds_test.cc checks the values).
    for (const CaseSpec& big : {make_case_spec(16, 256, 8, 7168, EPD_DTYPE_FP32, false, 1 << 20, layout, 8),
                                make_case_spec(1, 256, 9, 1 << 20, EPD_DTYPE_FP16, false, 1 << 20, layout, 2)}) {
      epd_group_spec_t c = big.c();
      char msg[512];
      EXPECT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_ERR_INVALID_SPEC) << big.describe();
      EXPECT_NE(std::string(msg).find("group workspace needs"), std::string::npos) << msg;
    }
  }
}

TEST(Layout, ReceiveRowsAboveInt32AreRefused) {
  // expert_major: 2 local experts * 1024 ranks * 2^20 tokens = 2^31 rows.
  CaseSpec cs = make_case_spec(1024, 2048, 8, 128, EPD_DTYPE_BF16, false, 1 << 20, EPD_LAYOUT_EXPERT_MAJOR, 2);
  epd_group_spec_t c = cs.c();
  char msg[256];
  EXPECT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_ERR_INVALID_SPEC);
  EXPECT_NE(std::string(msg).find("2147483648"), std::string::npos) << msg;
  cs.base.layout = EPD_LAYOUT_RANK_MAJOR;  // 2^30 rows: fine as rows, but their bytes exceed the 1 TiB cap
  c = cs.c();
  EXPECT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_ERR_INVALID_SPEC) << msg;
  EXPECT_EQ(std::string(msg).find("receive rows"), std::string::npos) << msg;
  EXPECT_NE(std::string(msg).find("group workspace needs"), std::string::npos) << msg;
}

TEST(Layout, BytesOnSumsTheRanksOfADevice) {
  CaseSpec cs = make_case_spec(4, 8, 2, 64, EPD_DTYPE_BF16, false, 16, EPD_LAYOUT_RANK_MAJOR, 2);
  static const epd_placement_t placement[4] = {{0, 0}, {0, 1}, {0, 0}, {1, 0}};
  cs.base.placement = placement;
  const epd::GroupSpec spec = cs.group_spec();
  ASSERT_TRUE(spec.validate().is_ok());
  const epd::GroupLayout g = epd::GroupLayout::compute(spec);
  EXPECT_EQ(g.bytes_on(spec, 0, 0), oracle_workspace_bytes(cs.o, 0) + oracle_workspace_bytes(cs.o, 2));
  EXPECT_EQ(g.bytes_on(spec, 0, 1), oracle_workspace_bytes(cs.o, 1));
  EXPECT_EQ(g.bytes_on(spec, 1, 0), oracle_workspace_bytes(cs.o, 3));
  EXPECT_EQ(g.bytes_on(spec, 0, EPD_GPU_HOST), 0u);
}

// ---- row placement, worked by hand from the header -----------------------------------

struct HandRow {
  int64_t row;
  int32_t src_rank, src_token;
  std::vector<int32_t> ids;
};

void expect_rows(Group& g, int32_t r, int32_t slot, const std::vector<HandRow>& rows, int32_t total,
                 const std::vector<int32_t>& counts) {
  SCOPED_TRACE("rank " + std::to_string(r));
  const epd::RankLayout& l = g.layout(r);
  const epd::SlotOffsets& o = l.slot[slot];
  const uint8_t* b = g.base(r);
  int32_t t;
  std::memcpy(&t, b + o.recv_total, 4);
  EXPECT_EQ(t, total);
  for (size_t e = 0; e < counts.size(); ++e) {
    int32_t c;
    std::memcpy(&c, b + o.recv_counts + 4 * e, 4);
    EXPECT_EQ(c, counts[e]) << "local expert " << e;
  }
  for (int64_t row = 0; row < l.recv_rows; ++row) {
    int32_t src[2];
    std::memcpy(src, b + o.recv_src + 8 * static_cast<uint64_t>(row), 8);
    std::vector<int32_t> ids(static_cast<size_t>(l.ids_per_row));
    std::memcpy(ids.data(), b + o.recv_ids + 4 * static_cast<uint64_t>(row * l.ids_per_row), 4 * ids.size());
    const auto it = std::find_if(rows.begin(), rows.end(), [&](const HandRow& h) { return h.row == row; });
    if (it == rows.end()) {
      EXPECT_EQ(src[0], -1) << "row " << row;
      EXPECT_EQ(src[1], -1) << "row " << row;
      for (int32_t id : ids) EXPECT_EQ(id, -1) << "row " << row;
    } else {
      EXPECT_EQ(src[0], it->src_rank) << "row " << row;
      EXPECT_EQ(src[1], it->src_token) << "row " << row;
      EXPECT_EQ(ids, it->ids) << "row " << row;
    }
  }
}

TEST(Layout, ExpertMajorRowsAsDocumented) {
  // W = 2, M = 3: local expert l's rows are [l * 6, (l + 1) * 6), in (source rank, token) order.
  // Rank 0 owns experts 1, 3 (local 0, 1); rank 1 owns 0, 2 (local 0, 1).
  const CaseSpec cs = make_case_spec(2, 4, 2, 1, EPD_DTYPE_FP32, false, 3, EPD_LAYOUT_EXPERT_MAJOR, 2, {1, 0, 1, 0});
  Group g(cs.group_spec());
  g.poison_all(0xa5);
  std::vector<RankInput> in(2);
  in[0].o.n = 2;
  in[0].o.ids = {2, 1, 3, -1};
  in[1].o.n = 1;
  in[1].o.ids = {0, 2};
  for (auto& r : in) {
    r.o.x.assign(static_cast<size_t>(r.o.n) * 4, 0x11);
    sync_ids(r);
  }
  ASSERT_TRUE(stage_all(g, 1, in).is_ok());
  ASSERT_TRUE(g.exec().dispatch(1).is_ok());
  expect_rows(g, 0, 1, {{0, 0, 0, {1}}, {6, 0, 1, {3}}}, 2, {1, 1});
  expect_rows(g, 1, 1, {{0, 1, 0, {0}}, {6, 0, 0, {2}}, {7, 1, 0, {2}}}, 3, {1, 2});
}

TEST(Layout, RankMajorRowsAsDocumented) {
  // One row per (token, destination rank), ids of other ranks' experts -1.
  // Contiguous: rank 0 owns experts 0, 1; rank 1 owns 2, 3.
  const CaseSpec cs = make_case_spec(2, 4, 3, 1, EPD_DTYPE_FP32, false, 2, EPD_LAYOUT_RANK_MAJOR, 2);
  Group g(cs.group_spec());
  g.poison_all(0x5a);
  std::vector<RankInput> in(2);
  in[0].o.n = 2;
  in[0].o.ids = {1, 3, 0, -1, -1, -1};
  in[1].o.n = 1;
  in[1].o.ids = {2, -1, 3};
  for (auto& r : in) {
    r.o.x.assign(static_cast<size_t>(r.o.n) * 4, 0x22);
    sync_ids(r);
  }
  ASSERT_TRUE(stage_all(g, 0, in).is_ok());
  ASSERT_TRUE(g.exec().dispatch(0).is_ok());
  expect_rows(g, 0, 0, {{0, 0, 0, {1, -1, 0}}}, 1, {1, 1});
  expect_rows(g, 1, 0, {{0, 0, 0, {-1, 3, -1}}, {1, 1, 0, {2, -1, 3}}}, 2, {1, 2});
}

}  // namespace
}  // namespace epd_test
