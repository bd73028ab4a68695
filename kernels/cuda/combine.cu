// combine.cu — the GPU combine of every rank of a group: one warp per source
// token gathers the expert outputs its dispatch routed (route_rank / route_row
// in the token's send slot, token count captured in the control block) and
// reduces them in the host executor's order with fp32 accumulation and one
// rounding per operation (no FMA):
//   rank_major:   destination ranks ascending, one row each, acc = acc + y
//   expert_major: k ascending, acc = acc + w * y (apply, w = the dispatch-time
//                 weight at the destination row) or acc = acc + y
// then one RNE conversion to the activation dtype. Route entries live in
// worker-mapped memory, so each is bound-checked: a bad one is skipped and
// raises kFaultBadRoute instead of reading out of bounds. One launch per GPU:
// on a multi-GPU group each GPU combines its own ranks' tokens
// (CombineParams::rank_lo/hi), pulling expert outputs from peers over NVLink,
// after an in-kernel cross-GPU barrier (CombineParams::before); under the armed
// executor the weight mode is read on the device and the last block writes the
// operation's completion (armed_complete.cuh).
#include <cuda_runtime.h>

#include "armed_complete.cuh"
#include "device_util.cuh"
#include "launchers.h"

namespace epd::gpu {
namespace {

constexpr int kMaxK = EPD_MAX_TOP_K;

struct Sources {  // per warp, shared memory
  const uint8_t* row[kMaxK];
  float w[kMaxK];
  int32_t rank[kMaxK];
  int32_t slot_row[kMaxK];
  int32_t n;
};

__device__ void gather_sources(const CombineParams& p, bool apply, int s, int t, Sources* src, int lane) {
  const DevRank& me = p.ranks[s];
  const int K = p.top_k;
  for (int k = lane; k < K; k += 32) {
    const int64_t i = static_cast<int64_t>(t) * K + k;
    int32_t r = me.route_rank[i];
    const int32_t row = me.route_row[i];
    if (r < -1 || r >= p.world) {
      raise_fault(control(me), kFaultBadRoute, s, t, k, r, p.slot, 2);
      r = -1;
    } else if (r >= 0 && (row < 0 || row >= p.ranks[r].recv_rows)) {
      raise_fault(control(me), kFaultBadRoute, s, t, k, row, p.slot, 2);
      r = -1;
    }
    src->rank[k] = r;
    src->slot_row[k] = row;
  }
  __syncwarp();
  if (lane == 0) {
    int n = 0;
    auto add = [&](int k) {
      const DevRank& d = p.ranks[src->rank[k]];
      src->row[n] = d.combine_in + static_cast<int64_t>(src->slot_row[k]) * p.in_row_bytes;
      src->w[n] = apply ? d.recv_weights[src->slot_row[k]] : 1.0f;
      ++n;
    };
    if (p.rank_major) {
      int prev = -1;
      for (;;) {  // next larger destination rank; its first k gives the row
        int best = -1;
        for (int k = 0; k < K; ++k) {
          const int32_t r = src->rank[k];
          if (r > prev && (best < 0 || r < src->rank[best])) best = k;
        }
        if (best < 0) break;
        add(best);
        prev = src->rank[best];
      }
    } else {
      for (int k = 0; k < K; ++k)
        if (src->rank[k] >= 0) add(k);
    }
    src->n = n;
  }
  __syncwarp();
}

// The inline executor: the call's weight mode into the served ranks' words,
// where the completion (last block, or every rank's after the barrier) reads them.
__device__ void store_modes(const CombineParams& p) {
  for (int r = p.rank_lo; r < p.rank_hi; ++r)
    *reinterpret_cast<volatile uint32_t*>(&control(p.ranks[r])->slot[p.slot].weight_mode) = p.mode;
}

template <typename Cv, typename V>
__global__ void __launch_bounds__(kThreads) combine_kernel(CombineParams p) {
  using Raw = typename Cv::Raw;
  constexpr int kEpv = sizeof(V) / sizeof(Raw);
  constexpr int kUnroll = 4;
  __shared__ Sources sources[kWarps];
  __shared__ int32_t apply_mode;
  if (threadIdx.x == 0) {
    if (p.stamps && blockIdx.x == 0) kernel_stamp(p.stamps, kKsFirstBlockStart);
    kernel_stamp(p.stamps, kKsLastBlockStart);
    // The weight mode the armed executor could not know when it enqueued the launch.
    apply_mode = p.apply >= 0 ? p.apply
                              : load_volatile(&control(p.ranks[p.rank_lo])->slot[p.slot].weight_mode) ==
                                    static_cast<uint32_t>(EPD_WEIGHTS_APPLY);
    if (p.mode_in_launch && blockIdx.x == 0 && !p.before.counter) store_modes(p);
    if (p.before.counter) {  // multi-GPU or inline ranks: every rank's expert outputs are written
      if (atomicAdd(p.words + kCombineTicket, 1u) == 0) {
        if (p.mode_in_launch) store_modes(p);  // before the arrival: every rank's completion reads them
        shard_barrier_arrive(p.before);
      }
      shard_barrier_wait(p.before);
    }
  }
  __syncthreads();
  const bool apply = apply_mode != 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Sources* src = &sources[warp];
  const int nvec = static_cast<int>(p.in_row_bytes / sizeof(V));
  const int units = (p.rank_hi - p.rank_lo) * p.max_tokens * p.parts;
  for (int u = blockIdx.x * kWarps + warp; u < units; u += gridDim.x * kWarps) {
    const int part = u % p.parts, token_slot = u / p.parts;
    const int s = p.rank_lo + token_slot / p.max_tokens, t = token_slot % p.max_tokens;
    const DevRank& me = p.ranks[s];
    // One read, broadcast: the word is in worker-mapped memory and every lane must agree.
    const int n = __shfl_sync(0xffffffffu, min(static_cast<int>(load_volatile(&control(me)->slot[p.slot].n_captured)), p.max_tokens), 0);
    if (t >= n) continue;
    gather_sources(p, apply, s, t, src, lane);
    V* out = reinterpret_cast<V*>(me.combine_out + static_cast<int64_t>(t) * p.in_row_bytes);
    const int begin = static_cast<int>(static_cast<int64_t>(nvec) * part / p.parts);
    const int end = static_cast<int>(static_cast<int64_t>(nvec) * (part + 1) / p.parts);
    for (int v0 = begin + lane; v0 < end; v0 += 32 * kUnroll) {
      float acc[kUnroll][kEpv];
#pragma unroll
      for (int u2 = 0; u2 < kUnroll; ++u2)
#pragma unroll
        for (int i = 0; i < kEpv; ++i) acc[u2][i] = 0.0f;
      for (int j = 0; j < src->n; ++j) {
        const V* y = reinterpret_cast<const V*>(src->row[j]);
        const float w = src->w[j];
        V buf[kUnroll];
#pragma unroll
        for (int u2 = 0; u2 < kUnroll; ++u2)
          if (v0 + 32 * u2 < end) buf[u2] = __ldg(y + v0 + 32 * u2);
#pragma unroll
        for (int u2 = 0; u2 < kUnroll; ++u2) {
          const Raw* e = reinterpret_cast<const Raw*>(&buf[u2]);
#pragma unroll
          for (int i = 0; i < kEpv; ++i) {
            const float v = Cv::load(e[i]);
            acc[u2][i] = __fadd_rn(acc[u2][i], apply ? __fmul_rn(w, v) : v);
          }
        }
      }
#pragma unroll
      for (int u2 = 0; u2 < kUnroll; ++u2) {
        if (v0 + 32 * u2 >= end) continue;
        V o;
        Raw* e = reinterpret_cast<Raw*>(&o);
#pragma unroll
        for (int i = 0; i < kEpv; ++i) e[i] = Cv::store(acc[u2][i]);
        out[v0 + 32 * u2] = o;
      }
    }
    __syncwarp();
  }
  if (p.stamps) {  // the same for every thread of the block
    __syncthreads();
    if (threadIdx.x == 0) kernel_stamp(p.stamps, kKsWorkDone);
  }
  if ((p.done.bases || p.before.counter) && last_block_completes(p.words + kExit, p.done) && threadIdx.x == 0) {
    *reinterpret_cast<volatile uint32_t*>(p.words + kCombineTicket) = 0u;
    kernel_stamp(p.stamps, kKsExitDone);
  }
}

using CombineKernel = void (*)(CombineParams);

// The instantiation a combine of `p` runs: the row's widest access for the dtype.
template <typename Cv>
CombineKernel kernel_for(const CombineParams& p) {
  switch (vec_bytes_for(p.in_row_bytes)) {
    case 16: return combine_kernel<Cv, uint4>;
    case 8: return combine_kernel<Cv, uint2>;
    default:
      if constexpr (sizeof(typename Cv::Raw) == 4) {
        return combine_kernel<Cv, uint32_t>;
      } else {
        return p.in_row_bytes % 4 == 0 ? combine_kernel<Cv, uint32_t> : combine_kernel<Cv, uint16_t>;
      }
  }
}

CombineKernel combine_kernel_of(const CombineParams& p) {
  switch (p.dtype) {
    case EPD_DTYPE_BF16: return kernel_for<Bf16>(p);
    case EPD_DTYPE_FP16: return kernel_for<Fp16>(p);
    default: return kernel_for<Fp32>(p);
  }
}

}  // namespace

int launch_combine(const CombineParams& p, int32_t blocks, void* stream) {
  combine_kernel_of(p)<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int combine_blocks_per_sm(const CombineParams& p, int* blocks) {
  return static_cast<int>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(combine_kernel_of(p)), kThreads, 0));
}

}  // namespace epd::gpu
