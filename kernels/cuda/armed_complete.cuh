// armed_complete.cuh — the armed executor's completion (gpu_armed.h), as a
// device function one block runs: the last block of an operation's own
// kernel (dispatch scatter or one-launch dispatch, combine) when the armed
// executor passes ArmedParams, so an operation costs no extra launch.
// Header-only; included by the kernels that finish an armed operation.
#pragma once

#include "control_block.h"
#include "device_util.cuh"

namespace epd::gpu {

__device__ inline ControlBlock* ctl(const ArmedParams& p, int r) { return reinterpret_cast<ControlBlock*>(p.bases[r]); }

template <typename T>
__device__ inline T load_vol(const T* p) {
  return *const_cast<const volatile T*>(p);
}
template <typename T>
__device__ inline void store_volatile(T* p, T v) {
  *const_cast<volatile T*>(p) = v;
}

__device__ inline int32_t fault_to_status(uint32_t fault) {
  switch (fault) {
    case kFaultExpertId: return EPD_ERR_EXPERT_ID_OUT_OF_RANGE;
    case kFaultDuplicate: return EPD_ERR_INVALID_ARGUMENT;
    case kFaultCapacity: return EPD_ERR_CAPACITY_EXCEEDED;
    case kFaultTimeout: return EPD_ERR_TIMEOUT;
    default: return EPD_ERR_DEVICE_FAULT;
  }
}

// The completion of one armed operation, run by one whole block (any size)
// after the operation's work is done everywhere on this GPU: the abort word,
// the ranks' fault words and weight modes become a status, written with the
// operation's done bit into every served rank's completion word and into the
// slot's host-mapped progress word. A multi-GPU group meets the other GPUs
// before reading the fault words and before clearing them.
__device__ inline void armed_complete_block(const ArmedParams& p) {
  __shared__ int first_fault;  // lowest rank with a fault word
  __shared__ int bad_mode;
  if (threadIdx.x == 0) {
    first_fault = p.world;
    bad_mode = 0;
    if (p.before_read.counter) shard_barrier_arrive_wait(p.before_read);
  }
  __syncthreads();
  const bool combine = p.op == kDoneCombine;
  const uint32_t mode0 = load_vol(&ctl(p, 0)->slot[p.slot].weight_mode);
  for (int r = threadIdx.x; r < p.world; r += blockDim.x) {
    ControlBlock* cb = ctl(p, r);
    if (load_vol(&cb->fault) != kFaultNone) atomicMin(&first_fault, r);
    if (combine) {
      const uint32_t m = load_vol(&cb->slot[p.slot].weight_mode);
      const bool valid = m == EPD_WEIGHTS_ALREADY_APPLIED || m == EPD_WEIGHTS_ONES ||
                         (m == EPD_WEIGHTS_APPLY && p.expert_major);
      if (!valid || m != mode0) bad_mode = 1;
    }
  }
  __syncthreads();
  const uint32_t abort_code = load_vol(p.abort_word);
  int32_t status = EPD_OK;
  uint32_t fault = kFaultNone;
  int32_t f_rank = -1, f_token = -1, f_k = -1;
  int64_t f_value = 0;
  if (abort_code != 0) {
    status = -static_cast<int32_t>(abort_code);
  } else if (first_fault < p.world) {
    const ControlBlock* cb = ctl(p, first_fault);
    fault = load_vol(&cb->fault);
    f_rank = load_vol(&cb->fault_rank);
    f_token = load_vol(&cb->fault_token);
    f_k = load_vol(&cb->fault_k);
    f_value = load_vol(&cb->fault_value);
    status = fault_to_status(fault);
  } else if (bad_mode) {
    status = EPD_ERR_BAD_WEIGHT_MODE;
  }
  __syncthreads();  // every thread has read the fault words before any is cleared
  if (threadIdx.x == 0 && p.before_write.counter) shard_barrier_arrive_wait(p.before_write);  // ... on every GPU
  __syncthreads();
  const uint32_t word = p.op | (static_cast<uint32_t>(-status) & 0xffffu) << 8 | (abort_code ? kArmedAbortBit : 0u);
  for (int r = p.rank_lo + threadIdx.x; r < p.rank_hi; r += blockDim.x) {
    ControlBlock* cb = ctl(p, r);
    ControlSlot* s = &cb->slot[p.slot];
    if (abort_code == 0 && load_vol(&cb->fault) != kFaultNone && load_vol(&cb->fault) != kFaultTimeout)
      store_volatile(&cb->fault, static_cast<uint32_t>(kFaultNone));
    store_volatile(&s->last_fault, fault);
    store_volatile(&s->last_fault_rank, f_rank);
    store_volatile(&s->last_fault_token, f_token);
    store_volatile(&s->last_fault_k, f_k);
    store_volatile(&s->last_fault_value, f_value);
    // The inline executor (no host-mapped progress) counts on the device, so
    // graph replays count too; the armed executor's seq is the daemon's.
    store_volatile(&s->calls_done, p.progress ? p.seq : load_vol(&s->calls_done) + 1u);
  }
  // One fence for every rank's fields before any completion word (not one per
  // rank). Device scope: the words are in this GPU's memory and the waits that
  // read them run on this GPU; only the host-mapped progress needs system scope.
  __threadfence();
  __syncthreads();
  for (int r = p.rank_lo + threadIdx.x; r < p.rank_hi; r += blockDim.x)
    store_volatile(&ctl(p, r)->slot[p.slot].completion, word);
  if (threadIdx.x == 0 && p.progress) {  // the inline executor has no host-mapped progress
    store_volatile(&p.progress->status, status);
    __threadfence_system();
    store_volatile(&p.progress->seq, p.seq);
  }
}

// The end of a kernel that may finish an armed operation: every block counts
// itself out at *exit (this GPU's word for the slot); the last one resets it
// for the next launch on the stream and, with p.bases set, writes the
// completion. Returns whether this block was the last. Every thread of every
// block must call it.
__device__ inline bool last_block_completes(uint32_t* exit, const ArmedParams& p) {
  __shared__ uint32_t last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(exit, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();
  if (p.bases) armed_complete_block(p);
  if (threadIdx.x == 0) {
    *reinterpret_cast<volatile uint32_t*>(exit) = 0u;
    if (p.barriers_taken) {  // after every barrier of the launch, the completion's included
      store_volatile(p.barriers_taken, load_vol(p.barriers_taken) + p.launch_barriers);
      __threadfence();
    }
  }
  return true;
}

}  // namespace epd::gpu
