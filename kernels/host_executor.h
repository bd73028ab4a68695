// host_executor.h — dispatch and combine for every rank of a group on host
// memory: the embedded default executor and the reference for GPU results.
//
// The executor works on workspaces it does not own (rank_bases[r] points at
// rank r's workspace, laid out by layout.h; host shared memory in the daemon,
// plain memory in tests). It treats everything in them as untrusted: token
// counts and ids are read once into private state, validated, then used; a bad
// value fails the whole call with a status naming rank, token, k and value, and
// nothing is written. Routing for combine is the private copy captured by the
// dispatch of the same slot, never ids read again.
//
// Row order is deterministic (source rank, then source token, then k), and
// combine sums in a fixed order with fp32 accumulation:
//   rank_major:   out[t] = sum over destination ranks, ascending, of combine_in rows
//   expert_major: out[t] = sum over k ascending of w[t][k] * y (apply) or y
// (each product rounded to fp32 before the add: no fused multiply-add).
// Thread-safety: one call at a time per executor (the daemon serialises per
// group); internally parallel over the thread pool.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "epd/types.h"
#include "layout.h"
#include "staging.h"
#include "spec.h"
#include "status.h"
#include "thread_pool.h"

namespace epd {

class HostExecutor {
 public:
  // spec must be valid; rank_bases has world_size entries, each 64-byte aligned.
  HostExecutor(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
               ThreadPool* pool = nullptr);

  Status dispatch(int32_t slot);
  Status combine(int32_t slot, epd_weight_mode_t mode);

  const GroupLayout& layout() const { return layout_; }
  const GroupSpec& spec() const { return spec_; }

 private:
  struct SlotState {
    bool dispatched = false;
    std::vector<int32_t> n;                      // per source rank
    std::vector<std::vector<int32_t>> route_rank; // [src][t*K + k]
    std::vector<std::vector<int32_t>> route_row;  // [src][t*K + k]
    std::vector<std::vector<float>> weight;       // [src][t*K + k], private copy
    bool inline_work = false;                     // small call: no pool
  };

  Status read_and_check(int32_t slot, std::vector<std::vector<int32_t>>& ids,
                        std::vector<std::vector<float>>& weights);
  uint8_t* at(int32_t r, uint64_t off) const { return bases_[r] + off; }
  // Runs fn(0..world_size-1): inline for a small call, else on the pool.
  void for_each_rank(const std::function<void(int64_t)>& fn);

  // Below this many (token x hidden x k) elements a call runs on the calling
  // thread: waking the pool costs more than the copies.
  static constexpr int64_t kInlineElements = 1 << 16;
  bool inline_ = false;  // for the call in progress (from its slot's dispatch)

  GroupSpec spec_;
  GroupLayout layout_;
  std::vector<uint8_t*> bases_;
  ThreadPool* pool_;
  std::vector<int32_t> local_index_;
  std::vector<SlotState> slots_;
  // fp8 staging per source rank: quantised payload and scales
  std::vector<std::vector<uint8_t>> q_;
  std::vector<std::vector<float>> scales_;
};

}  // namespace epd
