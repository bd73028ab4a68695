// spec.h — epd::GroupSpec, the C++ form of epd_group_spec_t, with validation
// and field-by-field comparison.
//
// A GroupSpec owns its arrays (placement, expert_owner is always filled: the
// contiguous default is materialised), so it can outlive the C struct it was
// built from. Derived tables (local expert lists) are computed by `validate`.
// Thread-safety: a value type; const methods are safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "epd/types.h"
#include "status.h"

namespace epd {

struct GroupSpec {
  std::string name;
  uint64_t generation = 0;
  int32_t world_size = 0;
  int32_t rank = 0;
  std::vector<epd_placement_t> placement;  // world_size entries
  int32_t num_experts = 0;
  int32_t top_k = 0;
  std::vector<int32_t> expert_owner;  // num_experts entries
  int32_t hidden = 0;
  epd_dtype_t dtype = EPD_DTYPE_BF16;
  epd_quant_t dispatch_quant = EPD_QUANT_NONE;
  int32_t max_tokens_per_rank = 0;
  epd_mode_t mode = EPD_MODE_HIGH_THROUGHPUT;
  epd_layout_t layout = EPD_LAYOUT_RANK_MAJOR;
  int32_t slots = 2;
  uint32_t timeout_ms = 30000;
  int32_t sm_budget = 0;

  // Built from a C spec: copies the arrays, fills the defaults (contiguous
  // owners, host placement, timeout). Does not validate; call validate().
  static Result<GroupSpec> from_c(const epd_group_spec_t& c);
  // A C view of this spec; its pointers borrow from *this.
  epd_group_spec_t to_c() const;

  // Checks every field; the message names the field and the value.
  Status validate() const;

  // Compares everything but `rank` (and `generation`, which has its own rule).
  // Returns OK or EPD_ERR_SPEC_MISMATCH naming the first differing field with
  // both values ("hidden: group has 7168, join has 4096").
  Status compare(const GroupSpec& other) const;

  // Contiguous default owner of expert e.
  static int32_t contiguous_owner(int32_t e, int32_t num_experts, int32_t world_size);

  // Experts owned by `r`, ascending (the local expert order of expert_major).
  std::vector<int32_t> local_experts(int32_t r) const;
  // Index of expert e among its owner's local experts.
  std::vector<int32_t> local_index() const;
  bool on_host(int32_t r) const { return placement[r].gpu == EPD_GPU_HOST; }
};

// A combine weight mode valid for the spec's layout: rank_major rows are
// already reduced per rank, so only already_applied / ones; expert_major takes
// all three. EPD_ERR_BAD_WEIGHT_MODE naming the value otherwise.
Status check_weight_mode(const GroupSpec& spec, epd_weight_mode_t mode);

const char* dtype_name(epd_dtype_t d);
const char* quant_name(epd_quant_t q);
const char* mode_name(epd_mode_t m);
const char* layout_name(epd_layout_t l);
const char* weight_mode_name(epd_weight_mode_t w);
size_t dtype_bytes(epd_dtype_t d);

// Name <-> enum for config files and command lines ("bf16", "fp8_e4m3", "rank_major").
Result<epd_dtype_t> parse_dtype(const std::string& s);
Result<epd_quant_t> parse_quant(const std::string& s);
Result<epd_mode_t> parse_mode(const std::string& s);
Result<epd_layout_t> parse_layout(const std::string& s);
Result<epd_weight_mode_t> parse_weight_mode(const std::string& s);

}  // namespace epd
