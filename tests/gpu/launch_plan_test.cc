// launch_plan_test.cc — the launch variant rule (kernels/gpu_launch_plan.h)
// against its table: spec mode x number of GPUs x armed waits, and every
// variant named and described. Host code only: runs everywhere, GPU or not
// (what each variant launches is checked on a GPU by gpu_executor_test.cc
// and armed_executor_test.cc through variant_name()).
#include <gtest/gtest.h>

#include <string>

#include "gpu_launch_plan.h"

namespace epd::test {
namespace {

LaunchVariant chosen(epd_mode_t mode, int32_t gpus, bool armed) {
  GroupSpec s;
  s.mode = mode;
  GpuTuning t;
  t.behind_armed_waits = armed;
  return choose_launch_variant(s, t, gpus).variant;
}

TEST(LaunchPlan, ChoosesTheVariantFromModeGpusAndArmedWaits) {
  const epd_mode_t ht = EPD_MODE_HIGH_THROUGHPUT, ll = EPD_MODE_LOW_LATENCY;
  for (bool armed : {false, true}) {
    SCOPED_TRACE(armed ? "behind armed waits" : "plain streams");
    EXPECT_EQ(chosen(ht, 1, armed), LaunchVariant::kHighThroughput);
    EXPECT_EQ(chosen(ll, 1, armed), armed ? LaunchVariant::kHighThroughput : LaunchVariant::kLowLatency);
    for (int32_t gpus : {2, 4, 8}) {
      EXPECT_EQ(chosen(ht, gpus, armed), LaunchVariant::kMultiGpu) << gpus << " GPUs";
      EXPECT_EQ(chosen(ll, gpus, armed), LaunchVariant::kMultiGpu) << gpus << " GPUs";
    }
  }
}

TEST(LaunchPlan, SaysWhyALowLatencyGroupRunsHighThroughputBehindArmedWaits) {
  GroupSpec s;
  s.mode = EPD_MODE_LOW_LATENCY;
  GpuTuning t;
  t.behind_armed_waits = true;
  const LaunchChoice c = choose_launch_variant(s, t, 1);
  EXPECT_EQ(c.variant, LaunchVariant::kHighThroughput);
  EXPECT_NE(std::string(c.reason).find("behind armed waits"), std::string::npos) << c.reason;
  EXPECT_NE(std::string(c.reason).find("cooperative"), std::string::npos) << c.reason;
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
