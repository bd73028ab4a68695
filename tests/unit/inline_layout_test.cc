// inline_layout_test.cc — the GPU routing scratch's layout and the inline
// executor's block (kernels/gpu_inline.h), checked on the host against the
// regions each part must hold, written out independently here: per slot two
// [W][chunks][D] uint32 tables, the totals [D], then the words (fault key,
// abort, two phase words); the block's ranks, scratch and abort word without
// overlap. A GPU run once caught the words placed over the tables; this pins
// that on every machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "gpu_inline.h"
#include "layout.h"
#include "spec.h"

namespace {

epd::GroupSpec spec_of(int32_t world, int32_t experts, int32_t max_tokens, epd_layout_t layout, int32_t slots) {
  epd::GroupSpec s;
  s.name = "scratch";
  s.world_size = world;
  s.num_experts = experts;
  s.top_k = 2;
  s.hidden = 256;
  s.max_tokens_per_rank = max_tokens;
  s.layout = layout;
  s.slots = slots;
  s.placement.assign(static_cast<size_t>(world), epd_placement_t{0, 0});
  s.expert_owner.resize(static_cast<size_t>(experts));
  for (int32_t e = 0; e < experts; ++e) s.expert_owner[e] = epd::GroupSpec::contiguous_owner(e, experts, world);
  return s;
}

// [begin, end) ranges must not overlap.
void expect_disjoint(std::vector<std::pair<uint64_t, uint64_t>> r, const std::string& what) {
  std::sort(r.begin(), r.end());
  for (size_t i = 1; i < r.size(); ++i)
    EXPECT_LE(r[i - 1].second, r[i].first) << what << ": [" << r[i - 1].first << ", " << r[i - 1].second
                                           << ") overlaps [" << r[i].first << ", " << r[i].second << ")";
}

TEST(ScratchLayout, TablesTotalsAndWordsOfEverySlotAreDisjointAndInside) {
  for (const epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR})
    for (const auto& [world, experts, tokens] : {std::tuple{1, 1, 1}, std::tuple{8, 64, 48}, std::tuple{3, 10, 33},
                                                 std::tuple{16, 256, 128}}) {
      const epd::GroupSpec s = spec_of(world, experts, tokens, layout, 3);
      SCOPED_TRACE(std::to_string(world) + " ranks, " + std::to_string(experts) + " experts, " +
                   std::to_string(tokens) + " tokens, layout " + std::to_string(layout));
      auto lay = epd::scratch_layout(s);
      ASSERT_TRUE(lay.is_ok()) << lay.status().message();
      const uint64_t D = static_cast<uint64_t>(experts + (layout == EPD_LAYOUT_RANK_MAJOR ? world : 0));
      const uint64_t chunks = (static_cast<uint64_t>(tokens) + 31) / 32;
      const uint64_t table = static_cast<uint64_t>(world) * chunks * D * 4;
      EXPECT_EQ(lay->dests, static_cast<int32_t>(D));
      EXPECT_EQ(lay->chunks, static_cast<int32_t>(chunks));
      EXPECT_EQ(lay->table_bytes, table);
      EXPECT_EQ(lay->words_at % 8, 0u) << "the fault key is a 64-bit word";
      EXPECT_EQ(lay->slot_bytes % 256, 0u);
      std::vector<std::pair<uint64_t, uint64_t>> regions;
      for (int32_t slot = 0; slot < s.slots; ++slot) {
        const uint64_t b = lay->slot_bytes * static_cast<uint64_t>(slot);
        regions.push_back({b, b + table});                                      // bitmaps
        regions.push_back({b + table, b + 2 * table});                          // offsets
        regions.push_back({b + 2 * table, b + 2 * table + D * 4});              // totals (at 2 * table)
        regions.push_back({b + lay->words_at, b + lay->words_at + 8 + 4 + 8});  // fault key, abort, phase[2]
        EXPECT_LE(lay->words_at + 20, lay->slot_bytes);
      }
      regions.push_back({lay->counters_at, lay->counters_at + 4 * static_cast<uint64_t>(s.slots)});
      expect_disjoint(regions, "scratch");
      EXPECT_LE(lay->counters_at + 4 * static_cast<uint64_t>(s.slots), lay->bytes);
    }
}

TEST(InlineBlockLayout, RanksScratchAndAbortWordAreDisjointAndAligned) {
  const epd::GroupSpec s = spec_of(8, 64, 48, EPD_LAYOUT_EXPERT_MAJOR, 2);
  auto b = epd::inline_block_layout(s);
  ASSERT_TRUE(b.is_ok()) << b.status().message();
  ASSERT_EQ(b->rank_at.size(), 8u);
  std::vector<std::pair<uint64_t, uint64_t>> regions;
  for (int32_t r = 0; r < 8; ++r) {
    EXPECT_EQ(b->rank_at[static_cast<size_t>(r)] % 256, 0u) << "rank " << r;
    regions.push_back({b->rank_at[static_cast<size_t>(r)], b->rank_at[static_cast<size_t>(r)] + epd::workspace_bytes(s, r)});
  }
  regions.push_back({b->scratch_at, b->scratch_at + b->scratch.bytes});
  regions.push_back({b->abort_at, b->abort_at + 4});
  expect_disjoint(regions, "block");
  EXPECT_EQ(b->scratch_at % 256, 0u);
  EXPECT_LE(b->abort_at + 4, b->bytes);
}

}  // namespace
