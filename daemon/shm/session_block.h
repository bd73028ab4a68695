// session_block.h — what the daemon writes into a session's shared block for
// one op of one membership: its status, message and completion sequence, then
// a futex wake for the client's waiters (publish), plus the op and phase names
// the rendezvous and the backends share.
//
// The block is the client's shared memory (SharedRegion, core/wire/shm_layout.h):
// the daemon only writes the words of the entry it was given, never trusts what
// it reads there. Thread-safety: publish() is safe from any thread (the control
// thread for refusals, a group's worker for results).
#pragma once

#include <cstdint>

#include "shared_region.h"
#include "status.h"

namespace epd {

enum class Op : uint8_t { kNone, kDispatch, kCombine };
enum class Phase : uint8_t { kIdle, kDispatchRung, kDispatched, kCombineRung };

inline const char* op_name(Op op) { return op == Op::kDispatch ? "dispatch" : op == Op::kCombine ? "combine" : "none"; }

// Writes status, message and completion sequence of one op into entry `index`
// of a session block and wakes its futex waiters.
void publish(SharedRegion& shm, uint32_t index, int32_t slot, Op op, uint32_t seq, const Status& st);

}  // namespace epd
