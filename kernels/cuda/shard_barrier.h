// shard_barrier.h — a GpuExecutor::BarrierTicket as the kernels' ShardBarrier
// (private to kernels/cuda: the executor's own barrier launches and the armed
// executor's completion kernel join the same per-slot sequence).
// Thread-safety: a pure function.
#pragma once

#include "device_params.h"
#include "gpu_executor.h"

namespace epd::gpu {

inline ShardBarrier to_barrier(const GpuExecutor::BarrierTicket& t, const uint32_t* abort_word,
                               const GpuExecutor::Shard& sh, int32_t slot) {
  ShardBarrier b{};
  b.counter = t.counter;
  b.peers = t.peers;
  b.n_peers = t.n_peers;
  b.abort_word = abort_word;
  b.target = t.target;
  b.taken = t.taken;
  b.step = t.step;
  b.parties = t.parties;
  b.timeout_ns = t.timeout_ns;
  b.ranks = static_cast<const DevRank*>(t.ranks);
  b.rank_lo = sh.rank_lo;
  b.rank_hi = sh.rank_hi;
  b.slot = slot;
  return b;
}

}  // namespace epd::gpu
