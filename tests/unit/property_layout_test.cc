// property_layout_test.cc — property tests of the host executor against the
// oracle for one layout (EPD_TEST_LAYOUT_EXPERT_MAJOR selects expert_major,
// else rank_major): random specs plus fixed edge cases. Built once per layout
// so the two run in parallel under ctest.
#include <gtest/gtest.h>

#include "property_check.h"

namespace epd_test {
namespace {

#ifdef EPD_TEST_LAYOUT_EXPERT_MAJOR
constexpr epd_layout_t kLayout = EPD_LAYOUT_EXPERT_MAJOR;
constexpr uint64_t kSeedBase = 0x5eed1000;
#define EPD_PROPERTY_SUITE PropertyExpertMajor
#else
constexpr epd_layout_t kLayout = EPD_LAYOUT_RANK_MAJOR;
constexpr uint64_t kSeedBase = 0x5eed0000;
#define EPD_PROPERTY_SUITE PropertyRankMajor
#endif

TEST(EPD_PROPERTY_SUITE, RandomSpecsMatchOracle) {
  const int cases = case_count(250);
  for (int i = 0; i < cases; ++i) {
    const uint64_t seed = case_seed(kSeedBase, i);
    SCOPED_TRACE("seed " + std::to_string(seed) + " (rerun: EPD_UNIT_SEED=" + std::to_string(seed) +
                 " EPD_UNIT_CASES=1)");
    std::mt19937_64 rng(seed);
    const CaseSpec cs = random_spec(rng, kLayout, 16u << 20);
    run_property_case(rng(), cs, static_cast<Routing>(seed % kRoutingCount));
    if (HasFatalFailure()) return;
  }
}

TEST(EPD_PROPERTY_SUITE, EdgeSpecsMatchOracle) {
  std::vector<int32_t> reversed(11);
  for (int32_t e = 0; e < 11; ++e) reversed[e] = 4 - e * 5 / 11;  // contiguous runs, rank order reversed
  const CaseSpec specs[] = {
      make_case_spec(1, 1, 1, 1, EPD_DTYPE_BF16, false, 1, kLayout, 2),
      make_case_spec(16, 16, 9, 3, EPD_DTYPE_FP16, false, 5, kLayout, 2),
      make_case_spec(16, 256, 9, 128, EPD_DTYPE_BF16, true, 4, kLayout, 3),
      make_case_spec(3, 7, 7, 129, EPD_DTYPE_FP32, false, 6, kLayout, 8),
      make_case_spec(5, 11, 4, 33, EPD_DTYPE_BF16, false, 7, kLayout, 2, reversed),
      make_case_spec(8, 64, 8, 256, EPD_DTYPE_FP16, true, 9, kLayout, 2),
  };
  uint64_t seed = 77;
  for (const CaseSpec& cs : specs) {
    for (int r = 0; r < kRoutingCount; ++r) {
      for (InputEdit edit : {InputEdit::kNone, InputEdit::kAllEmpty, InputEdit::kAllFull}) {
        SCOPED_TRACE("seed " + std::to_string(seed) + " edit " + std::to_string(static_cast<int>(edit)));
        run_property_case(seed++, cs, static_cast<Routing>(r), edit);
        if (HasFatalFailure()) return;
      }
    }
  }
}

}  // namespace
}  // namespace epd_test
