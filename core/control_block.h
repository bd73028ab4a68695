// control_block.h — the first kControlBytes (4 KiB) of every rank's workspace:
// the fault word the GPU kernels set instead of trapping, the token counts an
// executor captured at dispatch, and doorbell / completion words per slot.
//
// Shared by the CUDA kernels, the GPU executor, the daemon and clients (plain
// integers only, no pointers). The executor owns every word except `doorbell`,
// which the client writes (cuStreamWriteValue32) and the daemon's armed stream
// waits on. Fault words are sticky until the host reads and clears them
// (GpuExecutor::check_fault). Thread-safety: device-side words are written with
// atomics by kernels; host code reads them only after the stream is synchronised.
#pragma once

#include <cstdint>

#include "epd/types.h"
#include "layout.h"

namespace epd {

// Why a kernel gave up. 0 = no fault.
enum DeviceFaultKind : uint32_t {
  kFaultNone = 0,
  kFaultExpertId = 1,    // topk_ids[token][k] = value outside [-1, num_experts)
  kFaultDuplicate = 2,   // topk_ids[token] lists expert `value` twice (k and an earlier k)
  kFaultCapacity = 3,    // send_hdr.n_tokens = value above max_tokens_per_rank
  kFaultTimeout = 4,     // a spin-wait passed its %globaltimer deadline
  kFaultBadRoute = 5,    // combine found route_rank/route_row[token][k] = value out of range
};

// Per slot: doorbell (client -> daemon), completion (daemon -> client), and the
// token count the dispatch captured (combine uses it, never send_hdr again).
// The armed executor (gpu_armed.h) added the fields after n_raw in place of
// reserved words: all zero means "none", so version 1 readers are unaffected.
struct ControlSlot {
  uint32_t doorbell;     // kRing* bits, written by the client; kArmedAbortBit by the daemon
  uint32_t completion;   // kDone* bits | status, written by the daemon (see completion_word)
  uint32_t n_captured;   // valid count read by the last dispatch of this slot
  uint32_t n_raw;        // the raw send_hdr.n_tokens that dispatch read
  uint32_t weight_mode;  // epd_weight_mode_t of the next combine, written by the client before kRingCombine
  uint32_t calls_done;   // armed executor: operations completed on this slot (wraps)
  uint32_t last_fault;   // DeviceFaultKind behind the last failed completion, 0 if none
  int32_t last_fault_rank, last_fault_token, last_fault_k;
  int64_t last_fault_value;
  uint32_t reserved[4];
};
static_assert(sizeof(ControlSlot) == 64, "ControlSlot is 64 bytes");

struct ControlBlock {
  uint32_t magic;        // kControlMagic once the executor initialised it
  uint32_t version;      // kControlVersion
  uint32_t fault;        // DeviceFaultKind of the first fault, 0 if none
  int32_t fault_rank;    // source rank of the offending input
  int32_t fault_token;   // token index (-1 when not about a token)
  int32_t fault_k;       // k index (-1 when not about a k)
  int64_t fault_value;   // the offending value
  int32_t fault_slot;    // slot of the call
  uint32_t fault_op;     // 1 = dispatch, 2 = combine
  uint32_t reserved0[54];
  ControlSlot slot[EPD_MAX_SLOTS];  // at offset 256
};
static_assert(sizeof(ControlBlock) <= kControlBytes, "control block fits its 4 KiB region");

constexpr uint32_t kControlMagic = 0x45504443u;  // "EPDC"
constexpr uint32_t kControlVersion = 1;

// Armed-executor doorbell protocol (gpu_armed.h has the whole story). Values are
// constants, so a client's enqueue is the same on every CUDA graph replay:
// dispatch and combine strictly alternate per slot, the client rings
// kRingDispatch / kRingCombine and waits (CU_STREAM_WAIT_VALUE_AND) for
// kDoneDispatch / kDoneCombine; each ring overwrites the other bit, so nothing
// needs resetting between calls. The daemon releases armed waits by writing
// kRingDispatch | kRingCombine | kArmedAbortBit into the doorbells.
constexpr uint32_t kRingDispatch = 1u;
constexpr uint32_t kRingCombine = 2u;
constexpr uint32_t kDoneDispatch = 1u;
constexpr uint32_t kDoneCombine = 2u;
constexpr uint32_t kArmedAbortBit = 0x80000000u;

// Completion word: done bits | (-status) << 8 | abort bit. status is an epd_status_t (<= 0).
constexpr uint32_t completion_word(uint32_t done_bits, int32_t status, bool aborted) {
  return done_bits | (static_cast<uint32_t>(-status) & 0xffffu) << 8 | (aborted ? kArmedAbortBit : 0u);
}
constexpr epd_status_t completion_status(uint32_t word) {
  return static_cast<epd_status_t>(-static_cast<int32_t>((word >> 8) & 0xffffu));
}

}  // namespace epd
