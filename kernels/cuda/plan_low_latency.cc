// plan_low_latency.cc — LaunchVariant::kLowLatency, one GPU: the dispatch as
// one cooperative launch (count, prefix and scatter separated by grid
// barriers whose spin-waits end at the group's deadline), so a small batch
// pays one launch instead of three; the combine as one launch over every SM.
// Needs cooperative launch (checked at creation, launch_plan.cc) and is not
// chosen behind armed waits (choose_launch_variant says why).
#include "launch_plan.h"
#include "launchers.h"

namespace epd::gpu {

namespace {

int dispatch(const DispatchParams& p, const LaunchShape& shape, const ShardBarrier*, void* stream) {
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_dispatch_fused(p, shape.fused_blocks, stream)) return e;
  return plan_stamp(p.stamps, 1, stream);
}

int combine(const CombineParams& p, const LaunchShape& shape, const ShardBarrier*, void* stream) {
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_combine(p, shape.combine_blocks, stream)) return e;
  return plan_stamp(p.stamps, 1, stream);
}

}  // namespace

const VariantSequence kLowLatencySequence = {LaunchVariant::kLowLatency, dispatch, combine};

}  // namespace epd::gpu
