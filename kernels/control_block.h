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
struct ControlSlot {
  uint32_t doorbell;
  uint32_t completion;
  uint32_t n_captured;   // valid count read by the last dispatch of this slot
  uint32_t n_raw;        // the raw send_hdr.n_tokens that dispatch read
  uint32_t reserved[12];
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

}  // namespace epd
