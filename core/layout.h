// layout.h — where everything of a group lives in its workspaces: the layout
// math shared by the host executor, the CUDA kernels, the daemon and clients.
//
// Each rank owns one workspace (host shared memory or GPU memory). It starts
// with a control block, followed by `slots` identical slot areas. Every
// region is 256-byte aligned. All offsets are bytes from the rank's workspace
// base and are plain integers, so the structs can be copied into shared memory,
// sent over the wire or passed to kernels by value.
//
// Slot area of rank r (M = max_tokens_per_rank, K = top_k, H = hidden):
//   send_hdr      SendHeader                  written by rank r before dispatch
//   send_x        [M][H] dtype                rank r's tokens
//   send_ids      [M][K] int32                rank r's routing (-1 = masked)
//   send_weights  [M][K] fp32                 rank r's router weights
//   route_rank    [M][K] int32                dispatch: destination rank of (t,k), -1 masked
//   route_row     [M][K] int32                dispatch: row at that destination
//   recv_total    int32 (+pad)                dispatch: rows received
//   recv_counts   [L] int32                   dispatch: (token, expert) pairs per local expert
//   recv_x        [R][row_bytes]              dispatch: payload (dtype, or fp8 bytes)
//   recv_scales   [R][H/128] fp32             dispatch: fp8 scales (0 bytes without fp8)
//   recv_ids      [R][I] int32                dispatch: global ids, -1 non-local and padding
//   recv_weights  [R][I] fp32                 dispatch: weights, 0 where the id is -1
//   recv_src      [R] {int32 rank, int32 token}  dispatch: source of each row, {-1,-1} padding
//   combine_in    [R][H] dtype                rank r's expert outputs, one per received row
//   combine_out   [M][H] dtype                combine: rank r's reduced outputs
// where L = rank r's local experts, and
//   rank_major:   R = world_size * M, I = K (one row per (token, destination rank))
//   expert_major: R = L * world_size * M, I = 1 (one row per (token, expert));
//                 rows of local expert l are [l * world_size * M, (l+1) * world_size * M).
// Every size and offset is computed with overflow-checked arithmetic
// (checked.h). GroupSpec::validate refuses a spec whose workspaces would wrap
// or exceed EPD_MAX_GROUP_WORKSPACE_BYTES (check_workspace_size), so for a
// valid spec every offset here fits easily in 64 bits.
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "epd/types.h"
#include "spec.h"
#include "status.h"

namespace epd {

constexpr uint64_t kRegionAlign = 256;
constexpr uint64_t kControlBytes = 4096;

// First bytes of a send slot: the per-call token count (read once by executors).
struct SendHeader {
  uint32_t n_tokens;
  uint32_t reserved[15];
};
static_assert(sizeof(SendHeader) == 64, "SendHeader is 64 bytes");

struct SlotOffsets {
  uint64_t send_hdr, send_x, send_ids, send_weights;
  uint64_t route_rank, route_row;
  uint64_t recv_total, recv_counts, recv_x, recv_scales, recv_ids, recv_weights, recv_src;
  uint64_t combine_in, combine_out;
};

struct RankLayout {
  int32_t rank = 0;
  int32_t local_experts = 0;   // L
  int64_t recv_rows = 0;       // R
  int32_t ids_per_row = 0;     // I
  int32_t scale_blocks = 0;    // H / 128 with fp8, else 0
  uint64_t in_row_bytes = 0;   // H * sizeof(dtype): send_x, combine_in, combine_out rows
  uint64_t recv_row_bytes = 0; // recv_x rows: H (fp8) or H * sizeof(dtype)
  uint64_t slot_bytes = 0;     // one slot area
  uint64_t bytes = 0;          // whole workspace of this rank
  SlotOffsets slot[EPD_MAX_SLOTS] = {};
  // A size did not fit in 64 bits (only for a spec that failed validate()):
  // bytes is then UINT64_MAX, so an allocation of it fails instead of wrapping.
  bool overflowed = false;
};

// Layout of every rank of a spec. The spec must have passed validate().
struct GroupLayout {
  std::vector<RankLayout> ranks;
  uint64_t total_bytes = 0;  // sum over ranks; UINT64_MAX when overflowed
  bool overflowed = false;   // some rank's layout or the sum did not fit (invalid spec only)

  static GroupLayout compute(const GroupSpec& spec);
  // Bytes on one GPU (sum over the ranks placed on (node, gpu)); gpu may be EPD_GPU_HOST.
  uint64_t bytes_on(const GroupSpec& spec, int32_t node, int32_t gpu) const;
};

RankLayout compute_rank_layout(const GroupSpec& spec, int32_t rank);

// Exact workspace bytes of one rank (== compute_rank_layout(spec, rank).bytes).
uint64_t workspace_bytes(const GroupSpec& spec, int32_t rank);

// The bytes of every rank's workspace together, computed with checked
// arithmetic from a spec whose fields are each in range (GroupSpec::validate
// calls it after its field checks). EPD_ERR_INVALID_SPEC when the sum exceeds
// EPD_MAX_GROUP_WORKSPACE_BYTES or does not fit in 64 bits; the message names
// the fields that make the size and the bytes ("... needs 2199023256576 bytes,
// above the limit of 1099511627776 ...").
Result<uint64_t> check_workspace_size(const GroupSpec& spec);

}  // namespace epd
