// empty_rank_test.cc — issue 14, finding 8: an expert_owner table that leaves
// ranks with no expert is a valid spec (redundant experts, rebalancing), and
// the host executor serves it: such a rank receives nothing (all padding,
// zero counts) and still sends and combines. Checked against the independent
// oracle in both layouts, every routing, with empty and full calls; the
// default owner rule for num_experts % world_size != 0 is pinned by value.
// Label: unit.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "property_check.h"
#include "spec.h"

namespace epd_test {
namespace {

TEST(EmptyRank, OwnerTablesWithEmptyRanksValidate) {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::strcpy(s.name, "empty");
  s.world_size = 4;
  s.num_experts = 8;
  s.top_k = 2;
  s.hidden = 64;
  s.max_tokens_per_rank = 4;
  const int32_t all_on_zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int32_t skip_two[8] = {0, 0, 1, 1, 3, 3, 3, 3};
  for (const int32_t* owner : {all_on_zero, skip_two}) {
    s.expert_owner = owner;
    char msg[256] = {};
    EXPECT_EQ(epd_group_spec_validate(&s, msg, sizeof msg), EPD_OK) << msg;
  }
}

TEST(EmptyRank, HostExecutorMatchesTheOracle) {
  // Ranks 1 and 3 of 4 own nothing; the others own interleaved experts.
  const std::vector<int32_t> owner = {0, 2, 0, 2, 2, 0, 0, 2, 0};
  uint64_t seed = case_seed(9100, 0);
  for (epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    const CaseSpec specs[] = {
        make_case_spec(4, 9, 3, 40, EPD_DTYPE_FP32, false, 6, layout, 2, owner),
        make_case_spec(4, 9, 2, 128, EPD_DTYPE_BF16, true, 5, layout, 3, owner),
        // Every expert on the last rank.
        make_case_spec(3, 5, 2, 16, EPD_DTYPE_FP16, false, 4, layout, 2, std::vector<int32_t>(5, 2)),
    };
    for (const CaseSpec& cs : specs) {
      for (int r = 0; r < kRoutingCount; ++r) {
        for (InputEdit edit : {InputEdit::kNone, InputEdit::kAllEmpty, InputEdit::kAllFull}) {
          SCOPED_TRACE(cs.describe() + " seed " + std::to_string(seed) + " routing " +
                       routing_name(static_cast<Routing>(r)) + " edit " + std::to_string(static_cast<int>(edit)));
          run_property_case(seed++, cs, static_cast<Routing>(r), edit);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// The documented default (types.h, README): with B = E / W and X = E % W,
// ranks 0..X-1 own B + 1 consecutive experts, the others B.
TEST(EmptyRank, DefaultOwnerRuleAsDocumented) {
  const auto owners = [](int32_t E, int32_t W) {
    std::string o;
    for (int32_t e = 0; e < E; ++e) o += std::to_string(epd::GroupSpec::contiguous_owner(e, E, W)) + " ";
    return o;
  };
  EXPECT_EQ(owners(10, 4), "0 0 0 1 1 1 2 2 3 3 ");
  EXPECT_EQ(owners(7, 3), "0 0 0 1 1 2 2 ");
  EXPECT_EQ(owners(8, 4), "0 0 1 1 2 2 3 3 ");
  EXPECT_EQ(owners(5, 5), "0 1 2 3 4 ");
}

}  // namespace
}  // namespace epd_test
