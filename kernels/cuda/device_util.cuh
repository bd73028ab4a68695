// device_util.cuh — device helpers shared by the dispatch and combine kernels:
// the %globaltimer clock, fault reporting into a rank's control block, the
// deadline-bounded cross-GPU barrier and phase hand-over, and dtype <-> fp32 conversions that match
// numeric.h bit for bit. Header-only; every function is __device__.
// Thread-safety: fault and barrier words are updated with atomics only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "control_block.h"
#include "device_params.h"
#include "gpu_launch_plan.h"

namespace epd::gpu {

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Benchmarks: the latest %globaltimer at `point` (KernelStampPoint) of any
// block of this launch, when the launch sequence was given stamps (nullptr:
// nothing is written). Call from one thread of the block.
__device__ __forceinline__ void kernel_stamp(uint64_t* stamps, int point) {
  if (stamps)
    atomicMax(reinterpret_cast<unsigned long long*>(stamps + kMaxLaunchStamps + point),
              static_cast<unsigned long long>(global_timer_ns()));
}

__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint32_t load_volatile(const void* p) {
  return *reinterpret_cast<const volatile uint32_t*>(p);
}

__device__ __forceinline__ ControlBlock* control(const DevRank& r) {
  return reinterpret_cast<ControlBlock*>(r.ctl);
}

// Records a fault in `ctl` unless one is already there (first fault wins; the
// host clears it after reading). Never traps.
__device__ inline void raise_fault(ControlBlock* ctl, uint32_t kind, int32_t rank, int32_t token,
                                   int32_t k, int64_t value, int32_t slot, uint32_t op) {
  if (atomicCAS(&ctl->fault, 0u, kind) != 0u) return;
  ctl->fault_rank = rank;
  ctl->fault_token = token;
  ctl->fault_k = k;
  ctl->fault_value = value;
  ctl->fault_slot = slot;
  ctl->fault_op = op;
  __threadfence_system();
}

// Fault key of a dispatch: the smallest (rank, token, k, kind) wins, so the
// reported fault does not depend on block scheduling.
__device__ __forceinline__ unsigned long long fault_key(int32_t rank, int32_t token, int32_t k,
                                                        uint32_t kind) {
  return (static_cast<unsigned long long>(rank) << 52) |
         (static_cast<unsigned long long>(static_cast<uint32_t>(token)) << 20) |
         (static_cast<unsigned long long>(k) << 8) | kind;
}

// One thread's arrival at a cross-GPU barrier (ShardBarrier, device_params.h),
// after this GPU's earlier writes (peer stores included).
__device__ inline void shard_barrier_arrive(const ShardBarrier& b) {
  __threadfence_system();
  if (b.n_peers > 0) {
    for (int32_t i = 0; i < b.n_peers; ++i) atomicAdd_system(b.peers[i], 1u);
  } else {
    atomicAdd_system(b.counter, 1u);
  }
}

// One thread waits for every GPU's arrival. Returns false on timeout, after
// recording kFaultTimeout in the served ranks' control blocks; true when every
// GPU arrived or the abort word is set (the stream then drains on stale data).
__device__ inline bool shard_barrier_wait(const ShardBarrier& b) {
  const uint64_t deadline = global_timer_ns() + b.timeout_ns;
  const uint32_t target = b.taken ? (load_volatile(b.taken) + b.step) * b.parties : b.target;
  for (uint32_t i = 0;; ++i) {
    uint32_t now;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(now) : "l"(b.counter) : "memory");
    if (static_cast<int32_t>(now - target) >= 0) break;
    if (b.abort_word && load_volatile(b.abort_word) != 0u) break;
    if ((i & 63u) == 63u && global_timer_ns() > deadline) {
      for (int32_t r = b.rank_lo; r < b.rank_hi; ++r)
        raise_fault(control(b.ranks[r]), kFaultTimeout, r, -1, -1, static_cast<int64_t>(b.timeout_ns), b.slot, 1);
      return false;
    }
  }
  __threadfence_system();
  return true;
}

// Both halves (arrives always, so the counter stays in step even when this
// thread gives up).
__device__ inline bool shard_barrier_arrive_wait(const ShardBarrier& b) {
  shard_barrier_arrive(b);
  return shard_barrier_wait(b);
}

// The one-launch low_latency dispatch's phase hand-over: a block's thread 0
// adds its arrival to a phase word (SlotScratch::phase) after the block's
// writes (system scope when other GPUs take part, else device scope) ...
__device__ inline void phase_arrive(uint32_t* word, bool across_gpus) {
  if (across_gpus) __threadfence_system();
  else __threadfence();
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (across_gpus) atomicAdd_system(word, 1u);
  else atomicAdd(word, 1u);
}

// ... and a block of a later phase waits until the word reaches `target`
// (modulo 2^32). Blocks only ever wait for blocks that took an earlier ticket
// of the same launch (or for other GPUs' launches), which are running already,
// so the wait needs no co-residency (no cooperative launch) — except between
// the shards of an inline group on one GPU (gpu_inline.h), whose grids are
// sized to be resident together. On the deadline: kFaultTimeout in the served
// ranks' control blocks, the abort flag set, and false; once the armed or
// inline abort word (p.done.abort_word) is set: the abort flag and false.
__device__ inline bool phase_wait(const uint32_t* word, uint32_t target, uint64_t deadline,
                                  const DispatchParams& p) {
  __shared__ uint32_t ok;
  const bool across_gpus = p.n_shards > 1;
  if (threadIdx.x == 0) {
    ok = 1;
    for (uint32_t i = 0;; ++i) {
      uint32_t now;
      if (across_gpus) asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(now) : "l"(word) : "memory");
      else asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(word) : "memory");
      if (static_cast<int32_t>(now - target) >= 0) break;
      // The daemon aborted the group (a rank is gone): stop waiting; the
      // completion reports the abort's status.
      if ((i & 63u) == 63u && p.done.abort_word && load_volatile(p.done.abort_word) != 0u) {
        ok = 0;
        atomicExch(p.scratch.abort, 1u);
        break;
      }
      if ((i & 63u) == 63u && global_timer_ns() > deadline) {
        ok = 0;
        for (int32_t r = p.rank_lo; r < p.rank_hi; ++r)
          raise_fault(control(p.ranks[r]), kFaultTimeout, r, -1, -1, static_cast<int64_t>(p.timeout_ns), p.slot, 1);
        atomicExch(p.scratch.abort, 1u);
        break;
      }
    }
  }
  __syncthreads();
  return ok != 0;
}

// ---- element conversions (exact widening; RNE narrowing like numeric.h) ------

struct Bf16 {
  using Raw = uint16_t;
  __device__ static float load(Raw v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
  __device__ static Raw store(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
};
struct Fp16 {
  using Raw = uint16_t;
  __device__ static float load(Raw v) { return __half2float(__ushort_as_half(v)); }
  __device__ static Raw store(float f) { return __half_as_ushort(__float2half_rn(f)); }
};
struct Fp32 {
  using Raw = float;
  __device__ static float load(Raw v) { return v; }
  __device__ static Raw store(float f) { return f; }
};

// fp32 -> fp8 e4m3, round to nearest even, finite overflow saturated to +-448.
__device__ __forceinline__ uint8_t to_e4m3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// Unsigned type of a `kBytes`-wide access (16 -> uint4: one 128-bit access).
template <int kBytes> struct VecOf;
template <> struct VecOf<16> { using T = uint4; };
template <> struct VecOf<8> { using T = uint2; };
template <> struct VecOf<4> { using T = uint32_t; };
template <> struct VecOf<2> { using T = uint16_t; };

// Widest access (16, 8, 4 or 2 bytes) that divides `row_bytes`: rows start on
// multiples of row_bytes from 256-byte aligned regions, so every row is aligned to it.
__host__ __device__ inline int vec_bytes_for(uint64_t row_bytes) {
  for (int b = 16; b > 2; b /= 2)
    if (row_bytes % b == 0) return b;
  return 2;
}

}  // namespace epd::gpu
