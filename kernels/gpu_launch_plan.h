// gpu_launch_plan.h — the GPU executor's menu of launch variants and the one
// rule that picks a variant for a group: what runs on the GPU for a dispatch
// and a combine, and why. The bytes every variant writes are the same (the
// executor contract, gpu_executor.h); variants differ only in how the work is
// split into launches. The host-side launch sequence of each variant is one
// file, kernels/cuda/plan_<variant>.cc; every kernel launcher they compose is
// declared in kernels/cuda/launchers.h.
//
// CUDA-free (the daemon, tests and tools include it with the host compiler).
// Thread-safety: plain data and pure functions.
#pragma once

#include <cstdint>

#include "spec.h"

namespace epd {

enum class LaunchVariant : int32_t {
  // Dispatch: three launches with large grids (count, prefix, scatter);
  // combine: one launch.
  kHighThroughput = 0,
  // Dispatch: one ordinary launch per GPU whose count, prefix and scatter
  // blocks hand over through phase words (spin-waits with a deadline, only
  // ever on blocks that started earlier: no cooperative launch, so it runs
  // behind armed waits); combine: one launch over every SM.
  kLowLatency = 1,
  // A group over several GPUs, per GPU: the high_throughput launches for its
  // ranks with cross-GPU barriers between them; combine: a cross-GPU barrier,
  // then one launch for its ranks' tokens.
  kMultiGpu = 2,
};

// "high_throughput", "low_latency", "multi_gpu".
const char* launch_variant_name(LaunchVariant v);
// What the variant launches, e.g. "three launches per dispatch: count, prefix, scatter".
const char* launch_variant_summary(LaunchVariant v);

// Benchmarks (tools/gpu/hop_breakdown.cc): the most %globaltimer stamps one
// launch sequence writes when asked (GpuExecutor::dispatch_shard's
// launch_stamps): one before each launch and one after the last.
constexpr int32_t kMaxLaunchStamps = 8;
// ... followed by the stamps the low_latency dispatch and the combine write
// from inside their kernels (KernelStampPoint), so a launch stamp buffer is
// kLaunchStampWords long. Zero = not written.
constexpr int32_t kKernelStamps = 8;
constexpr int32_t kLaunchStampWords = kMaxLaunchStamps + kKernelStamps;
enum KernelStampPoint : int32_t {
  kKsFirstBlockStart = 0,  // the block with ticket 0 (blockIdx 0 in combine) begins
  kKsLastBlockStart = 1,   // the latest start of any block
  kKsCountDone = 2,        // the last count block arrives (dispatch_ordered)
  kKsPrefixReleased = 3,   // the last prefix block's wait ends
  kKsPrefixDone = 4,       // the last prefix block arrives
  kKsScatterReleased = 5,  // the last scatter block's wait ends
  kKsWorkDone = 6,         // the last block ends its work (scatter, combine)
  kKsExitDone = 7,         // the last block out has counted the launch (and written the armed completion)
};

// Launch tuning; a zero field keeps the executor's own choice. For benchmarks
// and tests.
struct GpuTuning {
  int32_t parts = 0;                // warps per token row in the dispatch scatter, 1..8
  int32_t combine_parts = 0;        // warps per token row in combine, 1..8
  // Multi-GPU barrier: 0 = every GPU adds to every GPU's own word and polls
  // its own (local polling; the default), 1 = one word on the home GPU that
  // every GPU adds to and polls.
  int32_t barrier = 0;
  // mode low_latency over several GPUs: the one-launch low_latency kernel
  // instead of the multi_gpu launches (not yet the default there: unmeasured).
  bool one_launch_across_gpus = false;
  // The inline executor (gpu_inline.h): this many shards share each GPU and
  // wait on each other inside their launches, so every shard's launches of
  // every slot must be resident together: the row split counts all their
  // tokens and each grid is capped at the GPU's resident blocks / (shards x
  // slots). 0 or 1: shards do not share a GPU.
  int32_t co_resident = 0;
};

struct LaunchChoice {
  LaunchVariant variant = LaunchVariant::kHighThroughput;
  const char* reason = "";  // one line: why this variant (static storage)
};

// The rule, in one place, for a group whose ranks are on `gpus` GPUs:
//   gpus > 1, low_latency, one_launch_across_gpus -> low_latency
//   gpus > 1                                      -> multi_gpu (either mode)
//   mode high_throughput                          -> high_throughput
//   mode low_latency                              -> low_latency
LaunchChoice choose_launch_variant(const GroupSpec& spec, const GpuTuning& tuning, int32_t gpus);

}  // namespace epd
