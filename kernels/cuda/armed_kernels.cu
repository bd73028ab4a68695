// armed_kernels.cu — gate and completion kernels of the armed executor
// (launchers.h; their parameters in device_params.h). One block each; the
// work is a few words per rank.
#include <cuda_runtime.h>

#include "control_block.h"
#include "device_util.cuh"
#include "launchers.h"

namespace epd::gpu {
namespace {

constexpr int kArmedThreads = 256;

__device__ ControlBlock* ctl(const ArmedParams& p, int r) { return reinterpret_cast<ControlBlock*>(p.bases[r]); }

template <typename T>
__device__ T load_vol(const T* p) {
  return *const_cast<const volatile T*>(p);
}
template <typename T>
__device__ void store_volatile(T* p, T v) {
  *const_cast<volatile T*>(p) = v;
}

__device__ int32_t fault_to_status(uint32_t fault) {
  switch (fault) {
    case kFaultExpertId: return EPD_ERR_EXPERT_ID_OUT_OF_RANGE;
    case kFaultDuplicate: return EPD_ERR_INVALID_ARGUMENT;
    case kFaultCapacity: return EPD_ERR_CAPACITY_EXCEEDED;
    case kFaultTimeout: return EPD_ERR_TIMEOUT;
    default: return EPD_ERR_DEVICE_FAULT;
  }
}

__global__ void __launch_bounds__(kArmedThreads) armed_gate(ArmedParams p, int phase) {
  const uint32_t mode = load_vol(&ctl(p, 0)->slot[p.slot].weight_mode);
  const bool apply = mode == EPD_WEIGHTS_APPLY;
  for (int r = p.rank_lo + threadIdx.x; r < p.rank_hi; r += blockDim.x) {
    uint32_t* n = &ctl(p, r)->slot[p.slot].n_captured;
    if (phase == 0) {
      p.saved_n[r] = load_vol(n);
      if (!apply) store_volatile(n, 0u);
    } else {
      store_volatile(n, apply ? 0u : p.saved_n[r]);
    }
  }
  __threadfence();
}

__global__ void __launch_bounds__(kArmedThreads) armed_complete(ArmedParams p) {
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
    if (combine && p.expert_major && r >= p.rank_lo && r < p.rank_hi)
      store_volatile(&cb->slot[p.slot].n_captured, p.saved_n[r]);
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
    store_volatile(&s->calls_done, p.seq);
    __threadfence_system();
    store_volatile(&s->completion, word);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    store_volatile(&p.progress->status, status);
    __threadfence_system();
    store_volatile(&p.progress->seq, p.seq);
    __threadfence_system();
  }
}

__global__ void stamp_globaltimer(uint64_t* word) {
  if (!word) return;
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  *word = t;
}

}  // namespace

int launch_stamp(uint64_t* word, void* stream) {
  stamp_globaltimer<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(word);
  return static_cast<int>(cudaGetLastError());
}

int launch_armed_gate(const ArmedParams& p, int phase, void* stream) {
  armed_gate<<<1, kArmedThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, phase);
  return static_cast<int>(cudaGetLastError());
}

int launch_armed_complete(const ArmedParams& p, void* stream) {
  armed_complete<<<1, kArmedThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace epd::gpu
