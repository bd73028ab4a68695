// property_interleaved_test.cc — two slots in flight at once: dispatched and
// combined in every order, each slot's results unaffected by the other.
#include <gtest/gtest.h>

#include "property_check.h"

namespace epd_test {
namespace {

TEST(PropertyInterleaved, TwoSlotsInEveryOrderMatchOracle) {
  const int cases = case_count(120);
  for (int i = 0; i < cases; ++i) {
    const uint64_t seed = case_seed(0x5eed2000, i);
    SCOPED_TRACE("seed " + std::to_string(seed) + " (rerun: EPD_UNIT_SEED=" + std::to_string(seed) +
                 " EPD_UNIT_CASES=1)");
    run_interleaved_case(seed, static_cast<int>(seed % 4));
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace epd_test
