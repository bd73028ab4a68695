// armed_depth_test.cc — the armed executor's depth cap (kernels/gpu_armed.h,
// armed_depth_for): what one slot's stream holds pending stays within
// kArmedStreamEntries whenever the depth is above its floor of 2.
#include <gtest/gtest.h>

#include "gpu_armed.h"

namespace {

// Stream operations a slot's stream holds with `depth` (2 x depth operations
// armed, each a wait per rank, 6 launches and barriers, 12 stamps).
int64_t pending(int32_t depth, int32_t ranks, bool stamps) {
  return 2 * int64_t{depth} * (ranks + 6 + (stamps ? 12 : 0));
}

TEST(ArmedDepth, TheDaemonsDepthIsKeptForItsGroups) {
  EXPECT_EQ(epd::armed_depth_for(8, 1, false), 8);
  EXPECT_EQ(epd::armed_depth_for(8, 8, false), 8);
}

TEST(ArmedDepth, TheBenchmarksDepth64WithEightRanksIsCapped) {
  // 2 x 64 x (8 + 6) = 1792 entries did not start on an H100; 18 gives 504.
  EXPECT_EQ(epd::armed_depth_for(64, 8, false), 18);
  EXPECT_EQ(epd::armed_depth_for(64, 8, true), 9);
}

TEST(ArmedDepth, ManyRanksOnOneGpuKeepTheFloorOfTwo) {
  EXPECT_EQ(epd::armed_depth_for(8, 256, false), 2);
  EXPECT_EQ(epd::armed_depth_for(1024, 1024, true), 2);
  EXPECT_EQ(epd::armed_depth_for(8, 0, false), 8);  // no rank counts as one
}

TEST(ArmedDepth, AboveTheFloorWhatIsPendingFitsAndIsNeverLoweredMoreThanNeeded) {
  for (int32_t ranks = 1; ranks <= 64; ++ranks)
    for (bool stamps : {false, true})
      for (int32_t depth = 2; depth <= 1024; depth += 7) {
        const int32_t d = epd::armed_depth_for(depth, ranks, stamps);
        ASSERT_GE(d, 2);
        ASSERT_LE(d, depth) << "ranks " << ranks << " depth " << depth;
        if (d > 2) {
          ASSERT_LE(pending(d, ranks, stamps), epd::kArmedStreamEntries) << "ranks " << ranks;
        }
        if (d < depth) {
          ASSERT_GT(pending(d + 1, ranks, stamps), epd::kArmedStreamEntries) << "ranks " << ranks;
        }
      }
}

}  // namespace
