// dispatch.cu — the GPU dispatch of every rank of a group whose workspaces
// this device can load from and store to (same GPU or CUDA peer access).
//
// Deterministic rows come from a count -> prefix -> scatter scheme over
// "chunks" of 32 tokens of one source rank, destinations being experts
// (expert_major, and for rank_major the per-expert counts) and ranks
// (rank_major rows):
//   count:   one warp per (source rank, chunk) validates ids and sets bit t%32 of
//            bitmap[rank][chunk][dest] for every token t that goes to dest;
//   prefix:  one warp per dest (one block per dest when its column is longer
//            than kWarpPrefixWords) scans popcounts over (rank, chunk) in order, so
//            offset[rank][chunk][dest] = rows before that chunk at dest;
//   scatter: one warp per token: row = offset + popc(bitmap & bits below t),
//            i.e. rows ordered by (source rank, source token), then payload
//            (copied or fp8-quantised once, stored to each destination), ids,
//            weights, sources, padding, counts and totals.
// The phases are launched one kernel each (launch_dispatch_count / _prefix /
// _scatter: the high_throughput and multi_gpu variants) or all in one
// ordinary launch whose blocks take tickets and hand over through phase words
// with spin-waits that end at a %globaltimer deadline (launch_dispatch_ordered:
// low_latency; no cooperative launch, see dispatch_ordered); which runs is the
// group's LaunchVariant (plan_<variant>.cc). Either way a single launch
// sequence covers every rank on this GPU, so ranks sharing a GPU never wait on
// each other across launches. A group over several GPUs runs one launch
// sequence per GPU, each serving its own ranks (DispatchParams::rank_lo/hi:
// count and scatter push its sources' rows over NVLink, prefix scans its
// destinations), with cross-GPU barriers (ShardBarrier) between the phases;
// the routing scratch lives on the group's home GPU. A fault (bad id, duplicate id, count above
// capacity) found by `count` makes `scatter` write nothing.
#include <cuda_runtime.h>

#include "armed_complete.cuh"
#include "device_util.cuh"
#include "launchers.h"

namespace epd::gpu {
namespace {

constexpr int kMaxK = EPD_MAX_TOP_K;
constexpr unsigned kFull = 0xffffffffu;
constexpr unsigned long long kNoFault = ~0ull;

// Per-warp token metadata of the scatter phase (shared memory).
struct TokenMeta {
  int32_t ids[kMaxK];
  float w[kMaxK];
  int32_t rank[kMaxK];
  int32_t row[kMaxK];
  uint8_t* dst_x[kMaxK];
  float* dst_scale[kMaxK];
  int32_t dst_rank[kMaxK];
  int32_t dst_row[kMaxK];
  int32_t dst_k[kMaxK];
  int32_t ndst;
};

// blk / nblk: this block's index among the blocks of the phase, and their number.
__device__ void count_phase(const DispatchParams& p, uint8_t* smem, int blk, int nblk) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t* bm = reinterpret_cast<uint32_t*>(smem) + warp * p.dests;
  for (int d = lane; d < p.dests; d += 32) bm[d] = 0;
  __syncwarp();
  const int units = p.rank_hi * p.chunks;
  for (int u = p.rank_lo * p.chunks + blk * kWarps + warp; u < units; u += nblk * kWarps) {
    const int s = u / p.chunks, c = u % p.chunks;
    const DevRank& src = p.ranks[s];
    const uint32_t raw = p.count_from == kCountInLaunch     ? static_cast<uint32_t>(p.n_in_launch)
                         : p.count_from == kCountFromPointer ? load_volatile(p.n_pointer)
                                                             : load_volatile(src.send_hdr);
    const bool over = raw > static_cast<uint32_t>(p.max_tokens);
    const int n = over ? 0 : static_cast<int>(raw);
    if (c == 0 && lane == 0) {
      if (p.count_from != kCountFromHeader)  // the count the launch carried, where the header path keeps it
        *reinterpret_cast<volatile uint32_t*>(const_cast<uint8_t*>(src.send_hdr)) = raw;
      ControlSlot& cs = control(src)->slot[p.slot];
      cs.n_raw = raw;
      cs.n_captured = static_cast<uint32_t>(n);
      if (over) atomicMin(p.scratch.fault_key, fault_key(s, 0, 0, kFaultCapacity));
    }
    const int t = c * 32 + lane;
    if (t < n) {
      const int32_t* ids = src.send_ids + static_cast<int64_t>(t) * p.top_k;
      int32_t* route = src.route_rank + static_cast<int64_t>(t) * p.top_k;
      // Ids and owners of a batch of k are loaded before any is used, so a
      // token costs two memory round trips per batch, not two per k.
      constexpr int kBatch = 8;
      for (int k0 = 0; k0 < p.top_k; k0 += kBatch) {
        int32_t e[kBatch], own[kBatch];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) e[i] = k0 + i < p.top_k ? ids[k0 + i] : -1;
#pragma unroll
        for (int i = 0; i < kBatch; ++i) own[i] = e[i] >= 0 && e[i] < p.experts ? __ldg(p.owner + e[i]) : -1;
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int k = k0 + i;
          if (k >= p.top_k) break;
          int32_t dest_rank = -1;
          if (e[i] < -1 || e[i] >= p.experts) {
            atomicMin(p.scratch.fault_key, fault_key(s, t, k, kFaultExpertId));
          } else if (e[i] >= 0) {
            bool dup = false;
#pragma unroll
            for (int j = 0; j < i; ++j) dup |= e[j] == e[i];
            for (int j = 0; j < k0; ++j) dup |= ids[j] == e[i];
            if (dup) {
              atomicMin(p.scratch.fault_key, fault_key(s, t, k, kFaultDuplicate));
            } else {
              dest_rank = own[i];
              atomicOr(&bm[e[i]], 1u << lane);
              if (p.rank_major) atomicOr(&bm[p.experts + dest_rank], 1u << lane);
            }
          }
          route[k] = dest_rank;
        }
      }
    }
    __syncwarp();
    uint32_t* out = p.scratch.bitmaps + static_cast<int64_t>(u) * p.dests;
    for (int d = lane; d < p.dests; d += 32) {
      out[d] = bm[d];
      bm[d] = 0;
    }
    __syncwarp();
  }
}

// Turns the smallest fault key of this dispatch into the offending rank's fault
// word, sets `abort` for the scatter phase and re-arms the key for the next call.
__device__ void finalize_fault(const DispatchParams& p) {
  const unsigned long long key = *reinterpret_cast<volatile unsigned long long*>(p.scratch.fault_key);
  *reinterpret_cast<volatile uint32_t*>(p.scratch.abort) = key != kNoFault;
  if (key == kNoFault) return;
  *p.scratch.fault_key = kNoFault;
  const int32_t s = static_cast<int32_t>(key >> 52);
  const int32_t t = static_cast<int32_t>((key >> 20) & 0xffffffffu);
  const int32_t k = static_cast<int32_t>((key >> 8) & 0xfffu);
  const uint32_t kind = static_cast<uint32_t>(key & 0xffu);
  const DevRank& src = p.ranks[s];
  if (kind == kFaultCapacity) {
    raise_fault(control(src), kind, s, -1, -1, load_volatile(&control(src)->slot[p.slot].n_raw),
                p.slot, 1);
  } else {
    raise_fault(control(src), kind, s, t, k,
                static_cast<int32_t>(load_volatile(src.send_ids + static_cast<int64_t>(t) * p.top_k + k)),
                p.slot, 1);
  }
}

// The rank that receives destination d's rows.
__device__ __forceinline__ int32_t dest_rank(const DispatchParams& p, int d) {
  return d < p.experts ? __ldg(p.owner + d) : d - p.experts;
}

__device__ __forceinline__ bool served(const DispatchParams& p, int32_t rank) {
  return rank >= p.rank_lo && rank < p.rank_hi;
}

// served(p, the rank that receives destination d's rows). A launch that
// serves every rank (one GPU) skips the owner lookup: a dependent global load
// on the prefix's and the counts' critical path.
__device__ __forceinline__ bool serves_dest(const DispatchParams& p, int d) {
  return (p.rank_lo == 0 && p.rank_hi == p.world) || served(p, dest_rank(p, d));
}

// Inclusive sum of v over lanes 0..lane of the warp.
__device__ __forceinline__ int32_t warp_inclusive_sum(int32_t v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const int32_t y = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

// One warp per destination when a destination's column (world * chunks
// words) is at most kWarpPrefixWords (device_params.h, warp_prefix_fits):
// every word loaded at once, the scan in shuffles, no block barrier. A block per destination scans
// its destinations one after the other, each a dependent global load and three
// __syncthreads: with 257 destinations on 33 prefix blocks that chain was the
// largest part of an empty low_latency dispatch (docs/PERFORMANCE.md).
__device__ void prefix_dest_warp(const DispatchParams& p, int d, int lane) {
  const int len = p.world * p.chunks;
  constexpr int kIters = kWarpPrefixWords / 32;
  int32_t v[kIters];
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int i = j * 32 + lane;
    v[j] = i < len ? __popc(p.scratch.bitmaps[static_cast<int64_t>(i) * p.dests + d]) : 0;
  }
  int32_t carry = 0;
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int32_t incl = warp_inclusive_sum(v[j], lane);
    const int i = j * 32 + lane;
    if (i < len) p.scratch.offsets[static_cast<int64_t>(i) * p.dests + d] = carry + incl - v[j];
    carry += __shfl_sync(kFull, incl, 31);
  }
  if (lane == 0) p.scratch.totals[d] = carry;
}

__device__ void prefix_dest_block(const DispatchParams& p, int d, int32_t* warp_sums) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int len = p.world * p.chunks;
  int32_t carry = 0;
  for (int base = 0; base < len; base += kThreads) {
    const int i = base + threadIdx.x;
    const int32_t v = i < len ? __popc(p.scratch.bitmaps[static_cast<int64_t>(i) * p.dests + d]) : 0;
    const int32_t incl = warp_inclusive_sum(v, lane);
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int32_t ws = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
      for (int o = 1; o < kWarps; o *= 2) {
        const int32_t y = __shfl_up_sync(kFull, ws, o);
        if (lane >= o) ws += y;
      }
      if (lane < kWarps) warp_sums[lane] = ws;
    }
    __syncthreads();
    const int32_t before = (warp ? warp_sums[warp - 1] : 0) + incl - v;
    if (i < len) p.scratch.offsets[static_cast<int64_t>(i) * p.dests + d] = carry + before;
    carry += warp_sums[kWarps - 1];
    __syncthreads();
  }
  if (threadIdx.x == 0) p.scratch.totals[d] = carry;
}

// offset[rank][chunk][d] = rows of destination d before that chunk, and
// totals[d], for the destinations this launch serves.
__device__ void prefix_phase(const DispatchParams& p, uint8_t* smem, int blk, int nblk) {
  if (p.leader && blk == 0 && threadIdx.x == 0) finalize_fault(p);
  if (warp_prefix_fits(p.world, p.chunks)) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int d = blk * kWarps + warp; d < p.dests; d += nblk * kWarps)
      if (serves_dest(p, d)) prefix_dest_warp(p, d, lane);
    return;
  }
  for (int d = blk; d < p.dests; d += nblk)
    if (serves_dest(p, d)) prefix_dest_block(p, d, reinterpret_cast<int32_t*>(smem));
}

// Copies vectors [begin, end) of one token row to every destination with
// `V`-wide accesses, several loads in flight per lane.
template <typename V>
__device__ void copy_payload(const uint8_t* src, const TokenMeta* m, int begin, int end, int lane) {
  constexpr int kUnroll = 4;
  const V* x = reinterpret_cast<const V*>(src);
  for (int v0 = begin + lane; v0 < end; v0 += 32 * kUnroll) {
    V buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (v0 + 32 * u < end) buf[u] = __ldg(x + v0 + 32 * u);
    for (int j = 0; j < m->ndst; ++j) {
      V* dst = reinterpret_cast<V*>(m->dst_x[j]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (v0 + 32 * u < end) dst[v0 + 32 * u] = buf[u];
    }
  }
}

// Quantises 128-element blocks [begin, end) of one token row to fp8 e4m3 with
// one scale per block (scale = amax / 448, q = x / scale, both IEEE divisions;
// zero block -> scale 0, q 0) and stores payload and scales to every destination.
template <typename Cv>
__device__ void quantize_payload(const uint8_t* src, const TokenMeta* m, int begin, int end, int lane) {
  using Raw = typename Cv::Raw;
  constexpr int kEpv = 16 / sizeof(Raw);         // elements per 16-byte load
  constexpr int kLanesPerBlock = 128 / kEpv;     // 16 (bf16, fp16) or 32 (fp32)
  constexpr int kBlocksPerIter = 32 / kLanesPerBlock;
  constexpr int kUnroll = 4;
  using Packed = typename VecOf<kEpv>::T;        // kEpv fp8 bytes
  const int sub = lane % kLanesPerBlock, grp = lane / kLanesPerBlock;
  const uint4* x = reinterpret_cast<const uint4*>(src);
  for (int b0 = begin; b0 < end; b0 += kBlocksPerIter * kUnroll) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int b = b0 + u * kBlocksPerIter + grp;
      raw[u] = b < end ? __ldg(x + b * kLanesPerBlock + sub) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int b = b0 + u * kBlocksPerIter + grp;
      const Raw* e = reinterpret_cast<const Raw*>(&raw[u]);
      float f[kEpv];
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < kEpv; ++i) {
        f[i] = Cv::load(e[i]);
        amax = fmaxf(amax, fabsf(f[i]));
      }
#pragma unroll
      for (int o = kLanesPerBlock / 2; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, o));
      const float scale = __fdiv_rn(amax, 448.0f);
      uint32_t words[kEpv / 4] = {};
#pragma unroll
      for (int i = 0; i < kEpv; ++i) {
        const uint32_t q = scale == 0.0f ? 0u : to_e4m3(__fdiv_rn(f[i], scale));
        words[i / 4] |= q << (8 * (i % 4));
      }
      Packed packed;
      memcpy(&packed, words, sizeof packed);
      if (b >= end) continue;
      for (int j = 0; j < m->ndst; ++j) {
        reinterpret_cast<Packed*>(m->dst_x[j] + b * 128)[sub] = packed;
        if (sub == 0) m->dst_scale[j][b] = scale;
      }
    }
  }
}

enum PayloadKind : int { kCopy16, kCopy8, kCopy4, kCopy2, kQuantBf16, kQuantFp16, kQuantFp32 };

__device__ PayloadKind payload_kind(const DispatchParams& p) {
  if (p.fp8) return p.dtype == EPD_DTYPE_BF16 ? kQuantBf16 : p.dtype == EPD_DTYPE_FP16 ? kQuantFp16 : kQuantFp32;
  switch (vec_bytes_for(p.in_row_bytes)) {
    case 16: return kCopy16;
    case 8: return kCopy8;
    case 4: return kCopy4;
    default: return kCopy2;
  }
}

__device__ int payload_bytes(PayloadKind k) {
  return k == kCopy16 ? 16 : k == kCopy8 ? 8 : k == kCopy4 ? 4 : 2;
}

// The end of the scatter phase: padding rows, per-local-expert counts and
// totals of the ranks this launch serves.
__device__ __forceinline__ void write_padding_and_counts(const DispatchParams& p, int blk, int nblk) {
  const int64_t WM = static_cast<int64_t>(p.world) * p.max_tokens;
  const int K = p.top_k;
  const int64_t nthreads = static_cast<int64_t>(nblk) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blk) * blockDim.x + threadIdx.x;
  const int groups = p.rank_major ? p.world : p.experts;
  const int I = p.rank_major ? K : 1;
  for (int64_t u = tid; u < groups * WM; u += nthreads) {
    const int g = static_cast<int>(u / WM);
    const int64_t i = u % WM;
    if (!serves_dest(p, p.rank_major ? p.experts + g : g)) continue;
    if (i < p.scratch.totals[p.rank_major ? p.experts + g : g]) continue;
    const DevRank& dst = p.ranks[p.rank_major ? g : p.owner[g]];
    const int64_t row = p.rank_major ? i : p.local_index[g] * WM + i;
    for (int j = 0; j < I; ++j) {
      dst.recv_ids[row * I + j] = -1;
      dst.recv_weights[row * I + j] = 0.0f;
    }
    dst.recv_src[row * 2] = -1;
    dst.recv_src[row * 2 + 1] = -1;
  }
  for (int64_t e = tid; e < p.experts; e += nthreads)
    if (serves_dest(p, static_cast<int>(e))) p.ranks[p.owner[e]].recv_counts[p.local_index[e]] = p.scratch.totals[e];
  for (int64_t r = p.rank_lo + tid; r < p.rank_hi; r += nthreads) {
    int32_t total = 0;
    if (p.rank_major) {
      total = p.scratch.totals[p.experts + r];
    } else {
      for (int e = 0; e < p.experts; ++e)
        if (p.owner[e] == r) total += p.scratch.totals[e];
    }
    *p.ranks[r].recv_total = total;
  }
}

__device__ void scatter_phase(const DispatchParams& p, uint8_t* smem, int blk, int nblk) {
  if (load_volatile(p.scratch.abort)) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  TokenMeta* m = reinterpret_cast<TokenMeta*>(smem) + warp;
  const int64_t WM = static_cast<int64_t>(p.world) * p.max_tokens;
  const int K = p.top_k;
  const PayloadKind kind = payload_kind(p);
  const int units = (p.rank_hi - p.rank_lo) * p.max_tokens * p.parts;
  for (int u = blk * kWarps + warp; u < units; u += nblk * kWarps) {
    const int part = u % p.parts, token_slot = u / p.parts;
    const int s = p.rank_lo + token_slot / p.max_tokens, t = token_slot % p.max_tokens;
    const DevRank& src = p.ranks[s];
    // One read, broadcast: the word is in worker-mapped memory and every lane must agree.
    const int n = __shfl_sync(kFull, min(static_cast<int>(load_volatile(&control(src)->slot[p.slot].n_captured)), p.max_tokens), 0);
    if (t >= n) continue;
    const uint32_t below = (1u << (t % 32)) - 1u;
    const int64_t cu = (static_cast<int64_t>(s) * p.chunks + t / 32) * p.dests;
    for (int k = lane; k < K; k += 32) {
      const int32_t e = src.send_ids[static_cast<int64_t>(t) * K + k];
      int32_t rank = -1, row = -1;
      if (e >= 0 && e < p.experts) {
        const int32_t r = p.owner[e];
        const int d = p.rank_major ? p.experts + r : e;
        const int32_t within = p.scratch.offsets[cu + d] + __popc(p.scratch.bitmaps[cu + d] & below);
        // Always true unless the ids changed since the count phase (worker-mapped memory).
        if (within < WM) {
          rank = r;
          row = static_cast<int32_t>((p.rank_major ? 0 : p.local_index[e] * WM) + within);
        }
      }
      m->ids[k] = rank >= 0 ? e : -1;
      m->w[k] = src.send_weights[static_cast<int64_t>(t) * K + k];
      m->rank[k] = rank;
      m->row[k] = row;
      if (part == 0) src.route_row[static_cast<int64_t>(t) * K + k] = row;
    }
    __syncwarp();
    if (lane == 0) {
      int nd = 0;
      for (int k = 0; k < K; ++k) {
        const int32_t r = m->rank[k];
        if (r < 0) continue;
        bool seen = false;
        if (p.rank_major)
          for (int j = 0; j < k; ++j) seen |= m->rank[j] == r;
        if (seen) continue;
        const DevRank& dst = p.ranks[r];
        m->dst_rank[nd] = r;
        m->dst_row[nd] = m->row[k];
        m->dst_k[nd] = k;
        m->dst_x[nd] = dst.recv_x + static_cast<int64_t>(m->row[k]) * p.recv_row_bytes;
        m->dst_scale[nd] = p.fp8 ? dst.recv_scales + static_cast<int64_t>(m->row[k]) * (p.hidden / 128) : nullptr;
        ++nd;
      }
      m->ndst = nd;
    }
    __syncwarp();
    for (int j = 0; j < (part == 0 ? m->ndst : 0); ++j) {
      const DevRank& dst = p.ranks[m->dst_rank[j]];
      const int64_t row = m->dst_row[j];
      if (p.rank_major) {
        for (int k = lane; k < K; k += 32) {
          const bool local = m->rank[k] == m->dst_rank[j];
          dst.recv_ids[row * K + k] = local ? m->ids[k] : -1;
          dst.recv_weights[row * K + k] = local ? m->w[k] : 0.0f;
        }
      } else if (lane == 0) {
        dst.recv_ids[row] = m->ids[m->dst_k[j]];
        dst.recv_weights[row] = m->w[m->dst_k[j]];
      }
      if (lane == 0) {
        dst.recv_src[row * 2] = s;
        dst.recv_src[row * 2 + 1] = t;
      }
    }
    const uint8_t* x = src.send_x + static_cast<int64_t>(t) * p.in_row_bytes;
    // This warp's slice of the row: vectors (copy) or 128-element blocks (fp8).
    const int pieces = p.fp8 ? p.hidden / 128 : static_cast<int>(p.in_row_bytes / payload_bytes(kind));
    const int begin = static_cast<int>(static_cast<int64_t>(pieces) * part / p.parts);
    const int end = static_cast<int>(static_cast<int64_t>(pieces) * (part + 1) / p.parts);
    switch (kind) {
      case kCopy16: copy_payload<uint4>(x, m, begin, end, lane); break;
      case kCopy8: copy_payload<uint2>(x, m, begin, end, lane); break;
      case kCopy4: copy_payload<uint32_t>(x, m, begin, end, lane); break;
      case kCopy2: copy_payload<uint16_t>(x, m, begin, end, lane); break;
      case kQuantBf16: quantize_payload<Bf16>(x, m, begin, end, lane); break;
      case kQuantFp16: quantize_payload<Fp16>(x, m, begin, end, lane); break;
      case kQuantFp32: quantize_payload<Fp32>(x, m, begin, end, lane); break;
    }
    __syncwarp();
  }
  write_padding_and_counts(p, blk, nblk);
}

__global__ void __launch_bounds__(kThreads) dispatch_count(DispatchParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  count_phase(p, smem, blockIdx.x, gridDim.x);
}

__global__ void __launch_bounds__(kThreads) dispatch_prefix(DispatchParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  prefix_phase(p, smem, blockIdx.x, gridDim.x);
}

// The last launch of a dispatch sequence; under the armed executor its last
// block also writes the operation's completion.
__global__ void __launch_bounds__(kThreads) dispatch_scatter(DispatchParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  scatter_phase(p, smem, blockIdx.x, gridDim.x);
  if (p.done.bases) last_block_completes(p.scratch.barrier + kExit, p.done);
}

// low_latency: the three phases in one ordinary launch. Each block takes a
// ticket; tickets [0, count_blocks) count, the next prefix_blocks wait for
// every GPU's count blocks and scan, the rest wait for every prefix block and
// scatter. A block only waits for blocks holding lower tickets (running
// already) or for other GPUs, so no co-residency is needed and the launch can
// sit behind an armed stream wait. Phase words are monotonic: launch n of the
// slot on this GPU waits for (n + 1) * blocks * GPUs arrivals; the last block
// out resets the tickets and counts the launch.
__global__ void __launch_bounds__(kThreads) dispatch_ordered(DispatchParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ uint32_t ticket, launches;
  uint32_t* words = p.scratch.barrier;
  uint64_t* const st = p.stamps;  // benchmarks: KernelStampPoints, thread 0 of each block
  const bool t0 = threadIdx.x == 0;
  if (t0) {
    ticket = atomicAdd(words + kTicket, 1u);
    launches = load_volatile(words + kLaunches);
    if (st && ticket == 0) kernel_stamp(st, kKsFirstBlockStart);
    kernel_stamp(st, kKsLastBlockStart);
  }
  __syncthreads();
  const uint64_t deadline = global_timer_ns() + p.timeout_ns;
  const int v = static_cast<int>(ticket);
  const int nc = p.count_blocks, np = p.prefix_blocks, ns = static_cast<int>(gridDim.x) - nc - np;
  const uint32_t gpus = static_cast<uint32_t>(p.n_shards);
  if (v < nc) {
    count_phase(p, smem, v, nc);
    phase_arrive(p.scratch.phase + 0, p.n_shards > 1);
    if (t0) kernel_stamp(st, kKsCountDone);
  } else if (v < nc + np) {
    const bool go = phase_wait(p.scratch.phase + 0, (launches + 1) * gpus * nc, deadline, p);
    if (t0) kernel_stamp(st, kKsPrefixReleased);
    if (go) prefix_phase(p, smem, v - nc, np);
    phase_arrive(p.scratch.phase + 1, p.n_shards > 1);
    if (t0) kernel_stamp(st, kKsPrefixDone);
  } else {
    const bool go = phase_wait(p.scratch.phase + 1, (launches + 1) * gpus * np, deadline, p);
    if (t0) kernel_stamp(st, kKsScatterReleased);
    if (go) scatter_phase(p, smem, v - nc - np, ns);
  }
  if (st) {  // the same for every thread of the block
    __syncthreads();
    if (t0) kernel_stamp(st, kKsWorkDone);
  }
  if (last_block_completes(words + kExit, p.done) && t0) {
    words[kTicket] = 0;
    words[kLaunches] = launches + 1;
    __threadfence();
    kernel_stamp(st, kKsExitDone);
  }
}

__global__ void __launch_bounds__(32) shard_barrier_kernel(ShardBarrier b) {
  if (threadIdx.x == 0) shard_barrier_arrive_wait(b);
}

uint64_t count_smem(const DispatchParams& p) { return static_cast<uint64_t>(kWarps) * p.dests * 4; }
uint64_t scatter_smem() { return static_cast<uint64_t>(kWarps) * sizeof(TokenMeta); }

}  // namespace

int launch_shard_barrier(const ShardBarrier& b, void* stream) {
  shard_barrier_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>(b);
  return static_cast<int>(cudaGetLastError());
}

uint64_t dispatch_smem_bytes(const DispatchParams& p) {
  const uint64_t a = count_smem(p), b = scatter_smem();
  return a > b ? a : b;
}

int prepare_dispatch_kernels(const DispatchParams& p) {
  const int bytes = static_cast<int>(dispatch_smem_bytes(p));
  for (const void* f : {reinterpret_cast<const void*>(dispatch_count), reinterpret_cast<const void*>(dispatch_scatter),
                        reinterpret_cast<const void*>(dispatch_ordered)}) {
    cudaError_t e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  return 0;
}

int dispatch_ordered_blocks_per_sm(const DispatchParams& p, int* blocks) {
  return static_cast<int>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(dispatch_ordered), kThreads, dispatch_smem_bytes(p)));
}

int launch_dispatch_count(const DispatchParams& p, int32_t blocks, void* stream) {
  dispatch_count<<<blocks, kThreads, count_smem(p), static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int launch_dispatch_prefix(const DispatchParams& p, int32_t blocks, void* stream) {
  dispatch_prefix<<<blocks, kThreads, kWarps * sizeof(int32_t), static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int launch_dispatch_scatter(const DispatchParams& p, int32_t blocks, void* stream) {
  dispatch_scatter<<<blocks, kThreads, scatter_smem(), static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int launch_dispatch_ordered(const DispatchParams& p, int32_t blocks, void* stream) {
  dispatch_ordered<<<blocks, kThreads, dispatch_smem_bytes(p), static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace epd::gpu
