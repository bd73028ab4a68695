// launch_plan_test.cc — the launch variant rule (kernels/gpu_launch_plan.h)
// against its table: spec mode x number of GPUs x tuning, and every
// variant named and described. Host code only: runs everywhere, GPU or not
// (what each variant launches is checked on a GPU by gpu_executor_test.cc
// and armed_executor_test.cc through variant_name()).
#include <gtest/gtest.h>

#include <string>

#include "gpu_launch_plan.h"

namespace epd::test {
namespace {

LaunchVariant chosen(epd_mode_t mode, int32_t gpus, bool one_launch) {
  GroupSpec s;
  s.mode = mode;
  GpuTuning t;
  t.one_launch_across_gpus = one_launch;
  return choose_launch_variant(s, t, gpus).variant;
}

// The same rule in process and behind armed waits (the one-launch low_latency
// dispatch is an ordinary launch), so the table has no armed column.
TEST(LaunchPlan, ChoosesTheVariantFromModeAndGpus) {
  const epd_mode_t ht = EPD_MODE_HIGH_THROUGHPUT, ll = EPD_MODE_LOW_LATENCY;
  for (bool one_launch : {false, true}) {
    SCOPED_TRACE(one_launch ? "one_launch_across_gpus" : "default tuning");
    EXPECT_EQ(chosen(ht, 1, one_launch), LaunchVariant::kHighThroughput);
    EXPECT_EQ(chosen(ll, 1, one_launch), LaunchVariant::kLowLatency);
    for (int32_t gpus : {2, 4, 8}) {
      EXPECT_EQ(chosen(ht, gpus, one_launch), LaunchVariant::kMultiGpu) << gpus << " GPUs";
      EXPECT_EQ(chosen(ll, gpus, one_launch), one_launch ? LaunchVariant::kLowLatency : LaunchVariant::kMultiGpu)
          << gpus << " GPUs";
    }
  }
}

TEST(LaunchPlan, SaysWhyALowLatencyGroupOverSeveralGpusRunsMultiGpu) {
  GroupSpec s;
  s.mode = EPD_MODE_LOW_LATENCY;
  const LaunchChoice c = choose_launch_variant(s, GpuTuning{}, 2);
  EXPECT_EQ(c.variant, LaunchVariant::kMultiGpu);
  EXPECT_NE(std::string(c.reason).find("not yet measured"), std::string::npos) << c.reason;
}

TEST(LaunchPlan, NamesAndDescribesEveryVariant) {
  EXPECT_STREQ(launch_variant_name(LaunchVariant::kHighThroughput), "high_throughput");
  EXPECT_STREQ(launch_variant_name(LaunchVariant::kLowLatency), "low_latency");
  EXPECT_STREQ(launch_variant_name(LaunchVariant::kMultiGpu), "multi_gpu");
  for (LaunchVariant v : {LaunchVariant::kHighThroughput, LaunchVariant::kLowLatency, LaunchVariant::kMultiGpu}) {
    EXPECT_STRNE(launch_variant_summary(v), "unknown") << launch_variant_name(v);
    GroupSpec s;
    s.mode = v == LaunchVariant::kLowLatency ? EPD_MODE_LOW_LATENCY : EPD_MODE_HIGH_THROUGHPUT;
    EXPECT_STRNE(choose_launch_variant(s, GpuTuning{}, v == LaunchVariant::kMultiGpu ? 2 : 1).reason, "");
  }
}

}  // namespace
}  // namespace epd::test
