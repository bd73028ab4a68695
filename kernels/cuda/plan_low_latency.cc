// plan_low_latency.cc — LaunchVariant::kLowLatency, on any number of GPUs:
// per GPU, the dispatch as one ordinary launch (count, prefix and scatter
// blocks handing over through phase words, dispatch.cu: no cooperative launch,
// so it runs behind armed stream waits) and the combine as one launch (with
// its cross-GPU barrier inside on several GPUs). Under the armed executor the
// last block of each writes the operation's completion.
#include "launch_plan.h"
#include "launchers.h"

namespace epd::gpu {

namespace {

// barriers: on several GPUs, barriers[2] (when set) makes every GPU's rows
// land before the caller's next step (the armed completion has its own).
int dispatch(const DispatchParams& p, const LaunchShape& shape, const ShardBarrier* barriers, void* stream) {
  DispatchParams q = p;
  q.count_blocks = shape.count_blocks;
  q.prefix_blocks = shape.ordered_prefix_blocks;
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_dispatch_ordered(q, shape.ordered_blocks, stream)) return e;
  if (int e = plan_stamp(p.stamps, 1, stream)) return e;
  if (barriers && barriers[2].counter) return launch_shard_barrier(barriers[2], stream);
  return 0;
}

int combine(const CombineParams& p, const LaunchShape& shape, const ShardBarrier* before, void* stream) {
  CombineParams q = p;
  if (before) q.before = *before;
  if (int e = plan_stamp(p.stamps, 0, stream)) return e;
  if (int e = launch_combine(q, shape.combine_blocks, stream)) return e;
  return plan_stamp(p.stamps, 1, stream);
}

}  // namespace

const VariantSequence kLowLatencySequence = {LaunchVariant::kLowLatency, dispatch, combine};

}  // namespace epd::gpu
