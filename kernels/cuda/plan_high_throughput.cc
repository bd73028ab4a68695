// plan_high_throughput.cc — LaunchVariant::kHighThroughput, one GPU: the
// dispatch as three launches with large grids (count, prefix, scatter; kernel
// boundaries order the phases), the combine as one launch. Grids from
// LaunchShape, capped by the group's SM budget (launch_plan.cc). Also what a
// low_latency group runs behind armed waits (choose_launch_variant).
#include "launch_plan.h"
#include "launchers.h"

namespace epd::gpu {

namespace {

int dispatch(const DispatchParams& p, const LaunchShape& shape, const ShardBarrier*, void* stream) {
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_dispatch_count(p, shape.count_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 1, stream)) return e;
  if (int e = launch_dispatch_prefix(p, shape.prefix_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 2, stream)) return e;
  if (int e = launch_dispatch_scatter(p, shape.scatter_blocks, stream)) return e;
  return plan_stamp(p.stamps, 3, stream);
}

int combine(const CombineParams& p, const LaunchShape& shape, const ShardBarrier*, void* stream) {
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_combine(p, shape.combine_blocks, stream)) return e;
  return plan_stamp(p.stamps, 1, stream);
}

}  // namespace

const VariantSequence kHighThroughputSequence = {LaunchVariant::kHighThroughput, dispatch, combine};

}  // namespace epd::gpu
