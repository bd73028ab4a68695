// launch_plan.h — the host side of the launch variants (gpu_launch_plan.h),
// private to kernels/cuda: each variant's launch sequence, one file each
// (plan_high_throughput.cc, plan_low_latency.cc, plan_multi_gpu.cc), and a
// GpuExecutor's launch plan: the variant chosen with its reason, the row split
// and every GPU's grid sizes, all fixed at creation (graph-friendly).
// Ownership: a LaunchPlan is plain data owned by its executor; the sequences
// are constant tables. Thread-safety: the sequences are stateless; a plan is
// read-only after make_launch_plan.
#pragma once

#include <cstdint>
#include <vector>

#include "device_params.h"
#include "gpu_executor.h"

namespace epd::gpu {

// What one variant enqueues for a dispatch and a combine of one GPU's ranks,
// composed from the launchers of launchers.h. Each returns a cudaError_t as
// int (0 = success) and stops at the first launch that fails.
struct VariantSequence {
  LaunchVariant variant;
  // barriers: multi_gpu only (nullptr otherwise): three, after count, prefix
  // and scatter; a null counter in the third skips it.
  int (*dispatch)(const DispatchParams& p, const LaunchShape& shape, const ShardBarrier* barriers, void* stream);
  // before: multi_gpu only, may be nullptr: a cross-GPU barrier first.
  int (*combine)(const CombineParams& p, const LaunchShape& shape, const ShardBarrier* before, void* stream);
};

extern const VariantSequence kHighThroughputSequence;  // plan_high_throughput.cc
extern const VariantSequence kLowLatencySequence;      // plan_low_latency.cc
extern const VariantSequence kMultiGpuSequence;        // plan_multi_gpu.cc
const VariantSequence& variant_sequence(LaunchVariant v);

struct LaunchPlan {
  LaunchChoice choice;                     // the variant and why (choose_launch_variant)
  const VariantSequence* sequence = nullptr;
  int32_t parts = 1, combine_parts = 1;    // warps per token row (scatter, combine), the same on every GPU
  std::vector<LaunchShape> shapes;         // per shard, in shard order
};

// Chooses the variant for `shards` (one per GPU) and sizes each shard's grids
// on its GPU: refuses low_latency without cooperative launch and destination
// counts whose dispatch needs more shared memory than a block has, and raises
// the dispatch kernels' shared memory limits on every GPU. dests: destinations
// (experts, plus ranks for rank_major); chunks: ceil(max_tokens_per_rank / 32).
// Leaves the last shard's device current.
Result<LaunchPlan> make_launch_plan(const GroupSpec& spec, const GroupLayout& layout,
                                    const std::vector<GpuExecutor::Shard>& shards, const GpuTuning& tuning,
                                    int32_t dests, int32_t chunks);

}  // namespace epd::gpu
