// gpu_executor_launch.cc — GpuExecutor's per-call side: argument checks,
// kernel parameters, the plan's launch sequence (launch_plan.h: one per
// LaunchVariant), cross-GPU barrier tickets, and fault words turned into statuses.
#include <cuda_runtime_api.h>

#include <cstddef>

#include "control_block.h"
#include "device_params.h"
#include "gpu_executor_impl.h"
#include "launchers.h"
#include "shard_barrier.h"

namespace epd {

namespace {
size_t grid_bar_bytes(int32_t slots) { return static_cast<size_t>(slots) * gpu::kOrderedWords * sizeof(uint32_t); }
// The shard's count of barriers taken on `slot` (device-relative barrier targets).
uint32_t* barriers_taken_word(const ShardImpl& si, int32_t slot) {
  return si.grid_bar + gpu::kOrderedWords * slot + gpu::kBarriersTaken;
}
}  // namespace

GpuExecutor::BarrierTicket GpuExecutor::take_barrier(int32_t slot, int32_t shard) {
  Impl& im = *impl_;
  BarrierTicket t;
  if (!im.counters) return t;
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  uint32_t& n = si.barriers_taken[static_cast<size_t>(slot)];
  ++n;
  if (im.barrier_mode == 1) {
    t.counter = im.counters + slot;
  } else {
    t.counter = reinterpret_cast<uint32_t*>(im.signal[static_cast<size_t>(shard)]->device_ptr()) + slot;
    t.peers = si.peer_words + static_cast<size_t>(slot) * shards_.size();
    t.n_peers = static_cast<int32_t>(shards_.size());
  }
  t.target = n * static_cast<uint32_t>(shards_.size());
  if (im.device_relative_barriers) {
    t.taken = barriers_taken_word(si, slot);
    t.step = ++si.launch_barriers;
    t.parties = static_cast<uint32_t>(shards_.size());
  }
  t.timeout_ns = static_cast<uint64_t>(spec_.timeout_ms) * 1000000ull;
  t.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  return t;
}

using gpu::to_barrier;

Status GpuExecutor::barrier_shard(int32_t slot, int32_t shard, void* stream) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  if (shards_.size() == 1) return Status::ok();
  if (impl_->device_relative_barriers)
    return make_status(EPD_ERR_INTERNAL, "barrier_shard on an inline executor (its barriers live inside its launches)");
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  const gpu::ShardBarrier b = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_shard_barrier(b, stream)));
  return Status::ok();
}

Status GpuExecutor::reset_barriers() {
  Impl& im = *impl_;
  for (auto& si : im.shards) {
    for (auto& n : si->barriers_taken) n = 0;
    EPD_CUDA_RETURN(cudaSetDevice(si->device));  // the one-launch kernels' tickets and launch counts
    EPD_CUDA_RETURN(cudaMemsetAsync(si->grid_bar, 0, grid_bar_bytes(spec_.slots), si->setup));
    EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));
  }
  ShardImpl& home = im.home();
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  for (const gpu::SlotScratch& sc : im.scratch)
    EPD_CUDA_RETURN(cudaMemsetAsync(sc.phase, 0, 2 * sizeof(uint32_t), home.setup));
  EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
  if (!im.counters) return Status::ok();
  EPD_CUDA_RETURN(cudaMemsetAsync(im.counters, 0, sizeof(uint32_t) * spec_.slots, home.setup));
  for (auto& w : im.signal)
    EPD_CUDA_RETURN(cudaMemsetAsync(w->device_ptr(), 0, sizeof(uint32_t) * spec_.slots, home.setup));
  EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
  return Status::ok();
}

gpu::ArmedParams GpuExecutor::with_completion_barriers(const gpu::ArmedParams& done, int32_t slot, int32_t shard) {
  gpu::ArmedParams p = done;
  if (shards_.size() > 1) {  // taken after the operation's own barriers: tickets follow the device order
    const Shard& sh = shards_[static_cast<size_t>(shard)];
    p.before_read = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
    p.before_write = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  }
  ShardImpl& si = *impl_->shards[static_cast<size_t>(shard)];
  if (impl_->device_relative_barriers && si.launch_barriers > 0) {  // the launch's last block advances the count
    p.barriers_taken = barriers_taken_word(si, slot);
    p.launch_barriers = si.launch_barriers;
  }
  return p;
}

Status GpuExecutor::dispatch(int32_t slot, void* stream) {
  if (shards_.size() > 1)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "dispatch(slot, stream) on a group over %zu GPUs: enqueue every GPU's part with dispatch_shard",
                       shards_.size());
  return dispatch_shard(slot, 0, stream);
}

Status GpuExecutor::combine(int32_t slot, epd_weight_mode_t mode, void* stream) {
  if (shards_.size() > 1)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "combine(slot, mode, stream) on a group over %zu GPUs: enqueue every GPU's part with "
                       "combine_shard",
                       shards_.size());
  return combine_shard(slot, 0, mode, stream);
}

Status GpuExecutor::dispatch_shard(int32_t slot, int32_t shard, void* stream, bool end_barrier,
                                   uint64_t* launch_stamps, const gpu::ArmedParams* done, const InLaunch* in_launch) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  Impl& im = *impl_;
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  si.launch_barriers = 0;
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  gpu::DispatchParams p{};
  p.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  p.owner = si.owner;
  p.local_index = si.local_index;
  p.scratch = im.scratch[slot];
  p.scratch.barrier = si.grid_bar + gpu::kOrderedWords * slot;
  p.world = spec_.world_size;
  p.experts = spec_.num_experts;
  p.top_k = spec_.top_k;
  p.hidden = spec_.hidden;
  p.max_tokens = spec_.max_tokens_per_rank;
  p.dests = im.dests;
  p.chunks = im.chunks;
  p.rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  p.dtype = spec_.dtype;
  p.fp8 = spec_.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  p.slot = slot;
  p.parts = im.plan.parts;
  p.in_row_bytes = layout_.ranks[0].in_row_bytes;
  p.recv_row_bytes = layout_.ranks[0].recv_row_bytes;
  p.timeout_ns = static_cast<uint64_t>(spec_.timeout_ms) * 1000000ull;
  p.rank_lo = sh.rank_lo;
  p.rank_hi = sh.rank_hi;
  p.leader = shard == 0;
  p.stamps = launch_stamps;
  p.n_shards = static_cast<int32_t>(shards_.size());
  if (in_launch) {
    if (sh.rank_hi - sh.rank_lo != 1)  // the count is one rank's
      return make_status(EPD_ERR_INTERNAL, "dispatch_shard: a count in the launch needs one rank per shard (shard %d "
                                           "serves %d)", shard, sh.rank_hi - sh.rank_lo);
    if (!in_launch->n_tokens_device && (in_launch->n_tokens < 0 || in_launch->n_tokens > spec_.max_tokens_per_rank))
      return make_status(EPD_ERR_CAPACITY_EXCEEDED, "n_tokens = %d is outside [0, max_tokens_per_rank = %d]",
                         in_launch->n_tokens, spec_.max_tokens_per_rank);
    if (in_launch->n_tokens_device) {
      p.count_from = gpu::kCountFromPointer;
      p.n_pointer = in_launch->n_tokens_device;
    } else {
      p.count_from = gpu::kCountInLaunch;
      p.n_in_launch = in_launch->n_tokens;
    }
  }
  const gpu::LaunchPlan& plan = im.plan;
  // Device-relative barrier targets: the call's last launch (the one with the
  // completion) adds every barrier the call took once its own are passed, so
  // no barrier may come after it (high_throughput's separate barrier launches
  // before it read the count it has not yet advanced, as they should).
  if (im.device_relative_barriers && shards_.size() > 1 && (!done || end_barrier))
    return make_status(EPD_ERR_INTERNAL, "dispatch_shard: an inline executor's dispatch must carry its completion and "
                                         "no end barrier");
  gpu::ShardBarrier b[3] = {};
  if (plan.choice.variant == LaunchVariant::kMultiGpu) {
    b[0] = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
    b[1] = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  }
  if (shards_.size() > 1 && end_barrier) b[2] = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  if (done) p.done = with_completion_barriers(*done, slot, shard);
  EPD_CUDA_RETURN(static_cast<cudaError_t>(
      plan.sequence->dispatch(p, plan.shapes[static_cast<size_t>(shard)], b, stream)));
  im.dispatched[slot] = true;
  si.last_stream = stream;
  return Status::ok();
}

Status GpuExecutor::combine_shard(int32_t slot, int32_t shard, epd_weight_mode_t mode, void* stream,
                                  bool start_barrier, uint64_t* launch_stamps, const gpu::ArmedParams* done,
                                  const InLaunch* in_launch) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  const bool rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  EPD_RETURN_IF_ERROR(check_weight_mode(spec_, mode));
  Impl& im = *impl_;
  if (!im.dispatched[slot])
    return make_status(EPD_ERR_NO_DISPATCH, "combine on slot %d without a dispatch", slot);
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  si.launch_barriers = 0;
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  const gpu::LaunchPlan& plan = im.plan;
  if (im.device_relative_barriers && shards_.size() > 1 && !done)
    return make_status(EPD_ERR_INTERNAL, "combine_shard: an inline executor's combine must carry its completion");
  gpu::ShardBarrier before{};
  const bool barrier_first = start_barrier && shards_.size() > 1;
  if (barrier_first) before = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  gpu::ArmedParams finish{};
  if (done) finish = with_completion_barriers(*done, slot, shard);
  gpu::CombineParams p{};
  p.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  p.world = spec_.world_size;
  p.top_k = spec_.top_k;
  p.hidden = spec_.hidden;
  p.max_tokens = spec_.max_tokens_per_rank;
  p.rank_major = rank_major;
  p.dtype = spec_.dtype;
  // -1: read on the device (the armed executor's mode word, written by the worker's stream)
  p.apply = done && !rank_major && !in_launch ? -1 : mode == EPD_WEIGHTS_APPLY;
  if (in_launch) {  // `mode` travels in the launch (InLaunch)
    p.mode_in_launch = 1;
    p.mode = static_cast<uint32_t>(mode);
  }
  p.slot = slot;
  p.parts = im.plan.combine_parts;
  p.in_row_bytes = layout_.ranks[0].in_row_bytes;
  p.rank_lo = sh.rank_lo;
  p.rank_hi = sh.rank_hi;
  p.stamps = launch_stamps;
  p.words = si.grid_bar + gpu::kOrderedWords * slot;
  p.done = finish;
  EPD_CUDA_RETURN(static_cast<cudaError_t>(
      plan.sequence->combine(p, plan.shapes[static_cast<size_t>(shard)], barrier_first ? &before : nullptr, stream)));
  si.last_stream = stream;
  return Status::ok();
}

namespace {

Status fault_status(const ControlBlock& cb, int32_t num_experts, int32_t max_tokens) {
  const char* op = cb.fault_op == 2 ? "combine" : "dispatch";
  switch (cb.fault) {
    case kFaultExpertId:
      return make_status(EPD_ERR_EXPERT_ID_OUT_OF_RANGE,
                         "rank %d: topk_ids[%d][%d] = %lld is outside [-1, %d) (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, cb.fault_k, static_cast<long long>(cb.fault_value),
                         num_experts, op, cb.fault_slot);
    case kFaultDuplicate:
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "rank %d: topk_ids[%d] lists expert %lld twice (second at k = %d) (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, static_cast<long long>(cb.fault_value), cb.fault_k, op,
                         cb.fault_slot);
    case kFaultCapacity:
      return make_status(EPD_ERR_CAPACITY_EXCEEDED,
                         "rank %d: n_tokens = %lld is outside [0, max_tokens_per_rank = %d] (GPU %s, slot %d)",
                         cb.fault_rank, static_cast<long long>(cb.fault_value), max_tokens, op, cb.fault_slot);
    case kFaultTimeout:
      return make_status(EPD_ERR_TIMEOUT, "GPU %s, slot %d: a grid barrier passed its %lld ns deadline", op,
                         cb.fault_slot, static_cast<long long>(cb.fault_value));
    case kFaultBadRoute:
      return make_status(EPD_ERR_DEVICE_FAULT,
                         "rank %d: route of token %d, k %d holds %lld, out of range (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, cb.fault_k, static_cast<long long>(cb.fault_value), op,
                         cb.fault_slot);
    default:
      return make_status(EPD_ERR_DEVICE_FAULT, "rank %d: unknown fault word %u", cb.fault_rank, cb.fault);
  }
}

}  // namespace

Status GpuExecutor::check_fault(void* stream) {
  Impl& im = *impl_;
  if (stream) {
    EPD_CUDA_RETURN(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  } else {
    for (auto& si : im.shards) {
      EPD_CUDA_RETURN(cudaSetDevice(si->device));
      EPD_CUDA_RETURN(cudaStreamSynchronize(static_cast<cudaStream_t>(si->last_stream)));
    }
  }
  ShardImpl& home = im.home();
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  Status first;
  bool timeout = false;
  for (int32_t r = 0; r < spec_.world_size; ++r) {
    ControlBlock cb;
    EPD_CUDA_RETURN(cudaMemcpyAsync(&cb, im.bases[r], offsetof(ControlBlock, reserved0), cudaMemcpyDeviceToHost,
                                    home.setup));
    EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
    if (cb.fault == kFaultNone) continue;
    timeout |= cb.fault == kFaultTimeout;
    if (first) first = fault_status(cb, spec_.num_experts, spec_.max_tokens_per_rank);
    EPD_CUDA_RETURN(cudaMemsetAsync(im.bases[r] + offsetof(ControlBlock, fault), 0, sizeof(uint32_t), home.setup));
  }
  if (timeout) {  // a block gave up inside a barrier: its words are stale
    for (const gpu::SlotScratch& sc : im.scratch)
      EPD_CUDA_RETURN(cudaMemsetAsync(sc.fault_key, 0xff, sizeof(unsigned long long), home.setup));
    for (auto& si : im.shards) {
      EPD_CUDA_RETURN(cudaSetDevice(si->device));
      EPD_CUDA_RETURN(cudaMemsetAsync(si->grid_bar, 0, grid_bar_bytes(spec_.slots), si->setup));
      EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));
    }
    EPD_CUDA_RETURN(cudaSetDevice(home.device));
    for (const gpu::SlotScratch& sc : im.scratch)
      EPD_CUDA_RETURN(cudaMemsetAsync(sc.phase, 0, 2 * sizeof(uint32_t), home.setup));
    EPD_CUDA_RETURN(cudaSetDevice(home.device));
  }
  EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
  if (!first)
    for (size_t s = 0; s < im.dispatched.size(); ++s) im.dispatched[s] = false;
  return first;
}

}  // namespace epd
