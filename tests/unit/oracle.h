// oracle.h — an independent reference for the dispatch/combine contract and the
// wire formats, written from the contract text (ARCHITECTURE.md and the header
// comments of layout.h, host_executor.h, numeric.h), never from the code under
// test: plain loops over (source rank, token, k), its own bf16/fp16/fp8
// conversions and its own layout arithmetic. The library target that holds it
// does not link epd_core, so it cannot call the code it checks.
// Ownership: plain values. Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "epd/types.h"

namespace epd_test {

// ---- wire formats --------------------------------------------------------------
// float -> narrow: round to nearest, ties to even. fp8 e4m3 ("FN": bias 7, max
// 448, NaN 0x7f/0xff, no infinities) saturates finite overflow and infinities.
uint16_t oracle_float_to_bf16(float f);
float oracle_bf16_to_float(uint16_t h);
uint16_t oracle_float_to_fp16(float f);
float oracle_fp16_to_float(uint16_t h);
uint8_t oracle_float_to_fp8(float f);
float oracle_fp8_to_float(uint8_t v);

size_t oracle_dtype_bytes(epd_dtype_t d);
float oracle_load(const void* row, int64_t i, epd_dtype_t d);
void oracle_store(void* row, int64_t i, float v, epd_dtype_t d);

// One row of `hidden` elements: per 128-element block, scale = amax / 448
// (fp32), q = encode(x / scale); an all-zero block has scale 0 and codes 0.
void oracle_quantize_row(const void* row, int32_t hidden, epd_dtype_t d, uint8_t* q,
                         float* scales);

// Contiguous default placement: experts in world_size contiguous runs, the first
// (num_experts % world_size) ranks one expert more.
int32_t oracle_contiguous_owner(int32_t e, int32_t num_experts, int32_t world_size);

// ---- layout (from layout.h's region table) ----------------------------------------
struct OracleRegion {
  const char* name;
  uint64_t bytes;
};
// The regions of one slot area of `rank`, in the header's order, with their sizes.
struct OracleLayoutSpec {
  int32_t world_size = 0, num_experts = 0, top_k = 0, hidden = 0, max_tokens = 0, slots = 2;
  epd_dtype_t dtype = EPD_DTYPE_BF16;
  bool fp8 = false;
  epd_layout_t layout = EPD_LAYOUT_RANK_MAJOR;
  std::vector<int32_t> owner;  // num_experts entries
};
std::vector<OracleRegion> oracle_slot_regions(const OracleLayoutSpec& s, int32_t rank);
// Control block (4096) + slots * (sum of regions, each rounded up to 256).
uint64_t oracle_workspace_bytes(const OracleLayoutSpec& s, int32_t rank);

// ---- dispatch / combine ---------------------------------------------------------------
using OracleSpec = OracleLayoutSpec;

// One rank's caller inputs, as values.
struct OracleInput {
  int32_t n = 0;
  std::vector<uint8_t> x;       // [n][hidden] in dtype
  std::vector<int64_t> ids;     // [n][top_k], -1 masked
  std::vector<float> weights;   // [n][top_k]; empty = all 1 (caller passed NULL)
};

struct OracleRow {
  int64_t row = 0;
  int32_t src_rank = -1, src_token = -1;
  std::vector<int32_t> ids;     // ids_per_row entries
  std::vector<float> weights;   // ids_per_row entries
};

struct OracleRank {
  int32_t local_experts = 0;
  int64_t recv_rows = 0;
  int32_t ids_per_row = 0;
  int32_t total = 0;
  std::vector<int32_t> counts;  // per local expert
  std::vector<OracleRow> rows;  // every non-padding row, ascending row index
};

struct OracleDispatch {
  uint64_t recv_row_bytes = 0;
  int32_t scale_blocks = 0;
  std::vector<OracleRank> ranks;
  std::vector<std::vector<uint8_t>> payload;  // [src][t * recv_row_bytes]: bytes as received
  std::vector<std::vector<float>> scales;     // [src][t * scale_blocks]
  // [src][t * top_k + k] = {destination rank, row there}, {-1, -1} when masked.
  std::vector<std::vector<std::pair<int32_t, int64_t>>> route;
};

OracleDispatch oracle_dispatch(const OracleSpec& s, const std::vector<OracleInput>& in);

// Expected combine output of every rank ([n][hidden] in dtype), reading the
// expert outputs from combine_in[r] (rank r's combine_in region).
std::vector<std::vector<uint8_t>> oracle_combine(const OracleSpec& s,
                                                 const std::vector<OracleInput>& in,
                                                 const OracleDispatch& d, epd_weight_mode_t mode,
                                                 const std::vector<const uint8_t*>& combine_in);

}  // namespace epd_test
