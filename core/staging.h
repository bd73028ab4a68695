// staging.h — a rank's dispatch inputs as a caller holds them, checked and
// copied into the rank's send slot of a workspace laid out by layout.h.
//
// Shared by every side that stages inputs: libepd-client (host groups), the
// tests and benchmarks, and the executors' own checks of id rows. Nothing here
// owns memory: the caller owns both the inputs and the workspace.
// Thread-safety: pure functions; concurrent calls on different slots or ranks
// are safe, on the same slot of the same rank they race like any writer.
#pragma once

#include <cstdint>

#include "epd/types.h"
#include "layout.h"
#include "spec.h"
#include "status.h"

namespace epd {

// One rank's dispatch inputs as a caller holds them.
struct DispatchInputs {
  const void* x = nullptr;             // [n][hidden] in spec.dtype
  const void* topk_ids = nullptr;      // [n][top_k] int32 or int64
  epd_id_dtype_t id_dtype = EPD_ID_INT32;
  const float* topk_weights = nullptr; // [n][top_k]; may be NULL (weights 1)
  int32_t n_tokens = 0;
};

// A caller's token count: EPD_ERR_INVALID_ARGUMENT for a negative one,
// EPD_ERR_CAPACITY_EXCEEDED above max_tokens_per_rank; each message names the
// value ("n_tokens = -1 is negative"). Shared by the host and GPU dispatch paths.
Status check_token_count(const GroupSpec& spec, int64_t n_tokens);

// Checks one rank's inputs (n within capacity, ids in [-1, num_experts), no
// expert twice in a token) and copies them into the rank's send slot. Pointers
// may be NULL only when n_tokens == 0. Writes nothing on error.
Status stage_dispatch_inputs(const GroupSpec& spec, const RankLayout& layout, uint8_t* base,
                             int32_t slot, const DispatchInputs& in);

// Checks one id row; `where` prefixes the message ("rank 3: ").
Status check_id_row(const GroupSpec& spec, const int32_t* ids, int32_t token, const char* where);

}  // namespace epd
