// armed_kernels.h — the two small kernels the armed executor enqueues around
// GpuExecutor's launches (private to kernels/cuda): the weight-mode gate of an
// expert_major combine and the completion that turns fault words or the abort
// word into a status in every rank's completion word.
// Thread-safety: plain structs and stateless launch functions.
#pragma once

#include <cstdint>

#include "device_params.h"

namespace epd::gpu {

// Host-mapped, one per slot: what the re-arm thread reads to see progress.
struct ArmedProgress {
  uint32_t seq;     // sequence number of the last completed operation (+1; 0 = none)
  int32_t status;   // its epd_status_t
  uint32_t pad[14];
};
static_assert(sizeof(ArmedProgress) == 64, "one cache line per slot");

struct ArmedParams {
  uint8_t* const* bases = nullptr;   // [world] workspace bases (control block at offset 0), device array
  int32_t world = 0;
  int32_t slot = 0;
  uint32_t op = 0;                   // kDoneDispatch or kDoneCombine
  int32_t expert_major = 0;          // combine: weight mode chosen on the device (gate)
  const uint32_t* abort_word = nullptr;  // device: -reason once aborted, 0 otherwise
  uint32_t* saved_n = nullptr;       // [world] device scratch of this slot (gate)
  ArmedProgress* progress = nullptr; // device view of this slot's host-mapped progress
  uint32_t seq = 0;                  // this operation's sequence number + 1
  int32_t rank_lo = 0, rank_hi = 0;  // the ranks on this GPU: the gate and the writes cover only these
  // Multi-GPU (null counters on one GPU): every GPU's operation is done before
  // the fault words are read, and every GPU has read them before any is cleared.
  ShardBarrier before_read{}, before_write{};
};

// expert_major combine runs the combine kernel twice, with and without the
// dispatch-time weights; the gate zeroes every rank's n_captured for the
// variant the clients did not ask for (so it writes nothing) and restores it.
// phase 0 precedes the `apply` launch, phase 1 the plain-sum launch.
int launch_armed_gate(const ArmedParams& p, int phase, void* stream);  // cudaError_t
// Restores n_captured (expert_major combine), reads the abort word and fault
// words, writes every rank's completion word, last_fault fields and calls_done,
// clears the fault words it reported (kFaultTimeout excepted: the host resets
// the executor's barrier state) and finally the slot's progress word.
int launch_armed_complete(const ArmedParams& p, void* stream);  // cudaError_t

}  // namespace epd::gpu
