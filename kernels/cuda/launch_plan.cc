// launch_plan.cc — a GpuExecutor's launch plan (launch_plan.h): the variant
// (choose_launch_variant, kernels/gpu_launch_plan.cc), its sequence, the row
// split and grid sizes per GPU. The numbers behind the choices were measured
// with tools/gpu/epd_gpu_bench (tools/gpu/RESULTS.md).
#include "launch_plan.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "cuda_status.h"
#include "launchers.h"

namespace epd::gpu {

const VariantSequence& variant_sequence(LaunchVariant v) {
  switch (v) {
    case LaunchVariant::kLowLatency: return kLowLatencySequence;
    case LaunchVariant::kMultiGpu: return kMultiGpuSequence;
    case LaunchVariant::kHighThroughput: break;
  }
  return kHighThroughputSequence;
}

namespace {

// Caps every grid of a shard so that `sharing` shards' launches of every slot
// are resident on the GPU together (GpuTuning::co_resident): each launch gets
// (resident blocks of the tightest kernel) / (sharing x slots) blocks, at
// least one per phase.
Status cap_for_co_residency(const GroupSpec& spec, const GroupLayout& layout, int sms, int32_t sharing,
                            const DispatchParams& dp, LaunchShape* shp) {
  int per_sm_dispatch = 0, per_sm_combine = 0;
  EPD_CUDA_RETURN(static_cast<cudaError_t>(dispatch_ordered_blocks_per_sm(dp, &per_sm_dispatch)));
  CombineParams cp{};
  cp.dtype = spec.dtype;
  cp.in_row_bytes = layout.ranks[0].in_row_bytes;
  EPD_CUDA_RETURN(static_cast<cudaError_t>(combine_blocks_per_sm(cp, &per_sm_combine)));
  const int64_t resident = static_cast<int64_t>(sms) * std::min(per_sm_dispatch, per_sm_combine);
  const int64_t cap = resident / (static_cast<int64_t>(sharing) * spec.slots);
  if (cap < 3)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "inline executor: %d ranks x %d slots on one GPU need %d resident blocks per launch, the GPU "
                       "holds %lld blocks of these kernels (use executor = daemon)",
                       sharing, spec.slots, 3, static_cast<long long>(resident));
  const auto capped = [](int64_t v, int64_t c) { return static_cast<int32_t>(std::max<int64_t>(1, std::min(v, c))); };
  shp->count_blocks = capped(shp->count_blocks, cap / 4);
  shp->ordered_prefix_blocks = capped(shp->ordered_prefix_blocks, cap / 4);
  shp->ordered_blocks = capped(shp->ordered_blocks, cap);
  shp->ordered_blocks = std::max(shp->ordered_blocks, shp->count_blocks + shp->ordered_prefix_blocks + 1);
  shp->prefix_blocks = capped(shp->prefix_blocks, cap);
  shp->scatter_blocks = capped(shp->scatter_blocks, cap);
  shp->combine_blocks = capped(shp->combine_blocks, cap);
  return Status::ok();
}

}  // namespace

Result<LaunchPlan> make_launch_plan(const GroupSpec& spec, const GroupLayout& layout,
                                    const std::vector<GpuExecutor::Shard>& shards, const GpuTuning& tuning,
                                    int32_t dests, int32_t chunks) {
  LaunchPlan plan;
  plan.choice = choose_launch_variant(spec, tuning, static_cast<int32_t>(shards.size()));
  plan.sequence = &variant_sequence(plan.choice.variant);
  const bool low_latency = plan.choice.variant == LaunchVariant::kLowLatency;
  const RankLayout& l0 = layout.ranks[0];
  const int64_t pieces = spec.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128
                             ? spec.hidden / EPD_FP8_BLOCK
                             : static_cast<int64_t>(l0.in_row_bytes / 16);
  auto blocks_for = [](int64_t warps_needed, int cap) {
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>((warps_needed + kWarps - 1) / kWarps, cap)));
  };
  for (size_t i = 0; i < shards.size(); ++i) {
    const GpuExecutor::Shard& sh = shards[i];
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    int sms = 0;
    EPD_CUDA_RETURN(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, sh.device));
    const int budget = spec.sm_budget > 0 ? std::min(spec.sm_budget, sms) : sms;
    LaunchShape shp{};
    // Small batches leave most warps idle with one warp per token: split each
    // row into `parts` slices, one warp each. Measured on an H100 with LL (8 x
    // 128 tokens, hidden 7168): dispatch is best at about one slice per warp of
    // one block per SM (parts 2, 2 cooperative blocks per SM: 58.8 / 44.7 us
    // bf16 / fp8, against 61.3 / 59.9 with 8 slices and 3 blocks per SM);
    // combine at about two slices per warp of four blocks per SM (8 slices:
    // 45 us, 1 slice: 62 us).
    const int32_t sharing = std::max(1, tuning.co_resident);
    const int64_t token_slots = static_cast<int64_t>(sh.rank_hi - sh.rank_lo) * spec.max_tokens_per_rank;
    const int64_t gpu_token_slots = token_slots * sharing;  // the row split fills the GPU once for all shards
    const auto slices = [&](int64_t warps, int64_t cap) {
      return static_cast<int32_t>(
          std::clamp<int64_t>(std::min<int64_t>((warps + gpu_token_slots - 1) / gpu_token_slots, cap), 1, 8));
    };
    if (i == 0) {  // one row split for every shard (the same rows everywhere)
      plan.parts = slices(static_cast<int64_t>(sms) * kWarps, pieces / 2);
      plan.combine_parts =
          slices(static_cast<int64_t>(sms) * 8 * kWarps, static_cast<int64_t>(l0.in_row_bytes / 16) / 32);
      if (tuning.parts > 0) plan.parts = std::clamp(tuning.parts, 1, 8);
      if (tuning.combine_parts > 0) plan.combine_parts = std::clamp(tuning.combine_parts, 1, 8);
    }
    const int64_t local_units = static_cast<int64_t>(sh.rank_hi - sh.rank_lo) * chunks;
    shp.count_blocks = blocks_for(local_units, budget * 4);
    const int64_t scanners = prefix_blocks_for(spec.world_size, chunks, dests);
    shp.prefix_blocks = static_cast<int32_t>(std::min<int64_t>(scanners, budget * 4));
    shp.scatter_blocks = blocks_for(token_slots * plan.parts, budget * 4);
    // low_latency combines over every SM (its one-launch dispatch ignores the budget too).
    shp.combine_blocks = blocks_for(token_slots * plan.combine_parts, (low_latency ? sms : budget) * 4);
    // The one-launch dispatch: its count blocks as above, prefix blocks enough
    // for one scanner per destination up to one per two SMs (when each block
    // scans whole destinations, one per four SMs: fewer blocks to wait for
    // before the scatter), scatter blocks as above.
    shp.ordered_prefix_blocks = static_cast<int32_t>(std::min<int64_t>(
        scanners, std::max(1, warp_prefix_fits(spec.world_size, chunks) ? sms / 2 : sms / 4)));
    shp.ordered_blocks = shp.count_blocks + shp.ordered_prefix_blocks + blocks_for(token_slots * plan.parts, sms * 4);

    DispatchParams dp{};
    dp.dests = dests;
    if (dispatch_smem_bytes(dp) > 200 * 1024)
      return make_status(EPD_ERR_UNSUPPORTED,
                         "GPU executor: %d destinations need more shared memory than a block has", dests);
    EPD_CUDA_RETURN(static_cast<cudaError_t>(prepare_dispatch_kernels(dp)));
    if (sharing > 1) EPD_RETURN_IF_ERROR(cap_for_co_residency(spec, layout, sms, sharing, dp, &shp));
    plan.shapes.push_back(shp);
  }
  return plan;
}

}  // namespace epd::gpu
