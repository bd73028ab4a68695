// plan_multi_gpu.cc — LaunchVariant::kMultiGpu: a group over several GPUs, one
// sequence per GPU ("shard") over its own ranks. Dispatch: count, prefix and
// scatter launches with a cross-GPU barrier after each (every GPU's bitmaps
// are in before any prefix, every prefix before any scatter, every row
// before the caller's next step; the third is optional: the armed executor's
// completion has its own). Combine: one launch over this GPU's ranks' tokens,
// pulling rows from peers, whose blocks first meet the other GPUs in a
// cross-GPU barrier inside the kernel (every GPU's expert outputs are in).
// Barrier tickets come from GpuExecutor::take_barrier.
#include "launch_plan.h"
#include "launchers.h"

namespace epd::gpu {

namespace {

int dispatch(const DispatchParams& p, const LaunchShape& shape, const ShardBarrier* barriers, void* stream) {
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_dispatch_count(p, shape.count_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 1, stream)) return e;
  if (int e = launch_shard_barrier(barriers[0], stream)) return e;
  if (int e = plan_stamp(p.stamps, 2, stream)) return e;
  if (int e = launch_dispatch_prefix(p, shape.prefix_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 3, stream)) return e;
  if (int e = launch_shard_barrier(barriers[1], stream)) return e;
  if (int e = plan_stamp(p.stamps, 4, stream)) return e;
  if (int e = launch_dispatch_scatter(p, shape.scatter_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 5, stream)) return e;
  if (barriers[2].counter) {
    if (int e = launch_shard_barrier(barriers[2], stream)) return e;
    return plan_stamp(p.stamps, 6, stream);
  }
  return 0;
}

// The cross-GPU barrier before the combine runs inside the combine kernel.
int combine(const CombineParams& p, const LaunchShape& shape, const ShardBarrier* before, void* stream) {
  CombineParams q = p;
  if (before) q.before = *before;
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_combine(q, shape.combine_blocks, stream)) return e;
  return plan_stamp(p.stamps, 1, stream);
}

}  // namespace

const VariantSequence kMultiGpuSequence = {LaunchVariant::kMultiGpu, dispatch, combine};

}  // namespace epd::gpu
