// device_util.cuh — device helpers shared by the dispatch and combine kernels:
// the %globaltimer clock, fault reporting into a rank's control block, the
// deadline-bounded grid barrier, and dtype <-> fp32 conversions that match
// numeric.h bit for bit. Header-only; every function is __device__.
// Thread-safety: fault and barrier words are updated with atomics only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "control_block.h"
#include "device_params.h"

namespace epd::gpu {

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
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

// Grid-wide barrier for a co-resident (cooperative) grid. Returns false, after
// recording kFaultTimeout in every rank's control block, if the other blocks
// do not arrive before `deadline` (%globaltimer ns). The host resets the
// barrier words after a timeout (GpuExecutor::check_fault).
__device__ inline bool grid_barrier(uint32_t* bar, uint64_t deadline, const DispatchParams& p) {
  __shared__ uint32_t ok;
  __syncthreads();
  if (threadIdx.x == 0) {
    ok = 1;
    const uint32_t gen = load_volatile(&bar[1]);
    __threadfence();
    if (atomicAdd(&bar[0], 1u) == gridDim.x - 1) {
      atomicExch(&bar[0], 0u);
      __threadfence();
      atomicAdd(&bar[1], 1u);
    } else {
      while (load_acquire(&bar[1]) == gen) {
        if (global_timer_ns() > deadline) {
          ok = 0;
          for (int32_t r = 0; r < p.world; ++r)
            raise_fault(control(p.ranks[r]), kFaultTimeout, r, -1, -1,
                        static_cast<int64_t>(p.timeout_ns), p.slot, 1);
          atomicExch(p.scratch.abort, 1u);
          break;
        }
        __nanosleep(64);
      }
    }
    __threadfence();
  }
  __syncthreads();
  return ok != 0;
}

// One thread's half of a cross-GPU barrier (ShardBarrier, device_params.h):
// arrives (always, so the counter stays in step even when this thread gives
// up), then waits for the other GPUs. Returns false on timeout, after
// recording kFaultTimeout in the served ranks' control blocks; true when every
// GPU arrived or the abort word is set (the stream then drains on stale data).
__device__ inline bool shard_barrier_arrive_wait(const ShardBarrier& b) {
  __threadfence_system();  // this GPU's earlier writes (peer stores included) before the arrival
  if (b.n_peers > 0) {
    for (int32_t i = 0; i < b.n_peers; ++i) atomicAdd_system(b.peers[i], 1u);
  } else {
    atomicAdd_system(b.counter, 1u);
  }
  const uint64_t deadline = global_timer_ns() + b.timeout_ns;
  for (uint32_t i = 0;; ++i) {
    uint32_t now;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(now) : "l"(b.counter) : "memory");
    if (static_cast<int32_t>(now - b.target) >= 0) break;
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
