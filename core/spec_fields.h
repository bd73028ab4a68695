// spec_fields.h — the one list of group-spec fields, and the name tables of the
// spec's enums.
//
// EPD_GROUP_SPEC_FIELDS lists every member of epd_group_spec_t but struct_size,
// in the struct's order. GroupSpec's members, from_c / to_c /
// epd_group_spec_init, validate, compare, the JOIN wire codec and the
// [[group]] TOML reader and printer are all generated from it (through
// for_each_spec_field in spec.h), so a plain scalar field is one X row here
// plus its member in include/epd/types.h; spec.cc's static_asserts fail when
// the two disagree. Plain data and macros; no state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "epd/types.h"

namespace epd {

// The deadline of a spec whose timeout_ms is 0 ("the daemon's default"): the
// daemon's server.join_timeout_ms defaults to it, and libepd-client uses it
// for its own waits (GroupSpec::effective_timeout_ms).
inline constexpr uint32_t kDefaultTimeoutMs = 30000;

// How GroupSpec::validate checks a field on its own. Checks that involve other
// fields (rank < world_size, ...) and the arrays are hand-written in spec.cc
// and run at their field's place in the list.
enum class SpecCheck {
  kNone,         // every value is valid
  kRange,        // lo..hi: "<field> = <v> is outside [lo, hi]"
  kNonNegative,  // "<field> = <v> is negative"
  kEnum,         // in EnumNames<type>: "<field> = <v> is not a known <C enum type>"
  kRelation,     // bounds depend on other fields: by hand only
};

// Row flags.
inline constexpr unsigned kSpecCompared = 1u;  // a join must match the group's value (compare)
inline constexpr unsigned kSpecConfig = 2u;    // a key of a [[group]] table in epd.toml
inline constexpr unsigned kSpecRequired = 4u;  // ... that every [[group]] must set
inline constexpr unsigned kSpecShared = kSpecCompared | kSpecConfig;

// X(name, type, c_default, check, lo, hi, flags): a scalar or enum field;
//   type is the C member's type (int32_t, uint32_t, uint64_t or an epd_* enum),
//   c_default what epd_group_spec_init writes (and GroupSpec starts with),
//   check a SpecCheck enumerator, lo/hi its bounds (kRange only).
//   On the wire: int32_t i32, uint32_t and enums u32, uint64_t u64. In TOML: an
//   integer, or the enum's name as a string.
// H(name, cpp_type): a field with hand-written code everywhere (GroupSpec holds
//   it as cpp_type); listed so its place in the order is known.
// The order is the C struct's, the JOIN wire order, and the order of checks,
// comparisons and printed keys. Every bound is a documented maximum of
// include/epd/types.h (EPD_MAX_*); kNone rows take every value of their type.
// After the rows, validate checks the whole workspace against
// EPD_MAX_GROUP_WORKSPACE_BYTES (check_workspace_size in layout.h).
#define EPD_GROUP_SPEC_FIELDS(X, H)                                                                 \
  H(name, std::string)                                                                              \
  X(generation, uint64_t, 0, kNone, 0, 0, kSpecConfig)                                               \
  X(world_size, int32_t, 0, kRange, 1, EPD_MAX_WORLD_SIZE, kSpecShared | kSpecRequired)              \
  X(rank, int32_t, 0, kRelation, 0, 0, 0u) /* [0, world_size) */                                     \
  H(placement, std::vector<epd_placement_t>) /* world_size entries */                               \
  X(num_experts, int32_t, 0, kRelation, 0, 0, kSpecShared | kSpecRequired) /* [world_size, max] */   \
  X(top_k, int32_t, 0, kRelation, 0, 0, kSpecShared | kSpecRequired) /* [1, min(64, num_experts)] */ \
  H(expert_owner, std::vector<int32_t>) /* num_experts entries */                                   \
  X(hidden, int32_t, 0, kRange, 1, EPD_MAX_HIDDEN, kSpecShared | kSpecRequired)                             \
  X(dtype, epd_dtype_t, EPD_DTYPE_BF16, kEnum, 0, 0, kSpecShared)                                    \
  X(dispatch_quant, epd_quant_t, EPD_QUANT_NONE, kEnum, 0, 0, kSpecShared)                           \
  X(max_tokens_per_rank, int32_t, 0, kRange, 1, EPD_MAX_TOKENS_PER_RANK, kSpecShared | kSpecRequired)                \
  X(mode, epd_mode_t, EPD_MODE_HIGH_THROUGHPUT, kEnum, 0, 0, kSpecShared)                            \
  X(layout, epd_layout_t, EPD_LAYOUT_RANK_MAJOR, kEnum, 0, 0, kSpecShared)                           \
  X(slots, int32_t, 2, kRange, 2, EPD_MAX_SLOTS, kSpecShared)                                        \
  X(timeout_ms, uint32_t, kDefaultTimeoutMs, kNone, 0, 0, kSpecShared) /* 0 = daemon's default */    \
  X(sm_budget, int32_t, 0, kRange, 0, EPD_MAX_SM_BUDGET, kSpecShared)                                \
  X(executor, epd_executor_t, EPD_EXECUTOR_DAEMON, kEnum, 0, 0, kSpecShared)

// One enumerator per row, H rows included: lets hand-written code name a field.
#define EPD_SPEC_FIELD_ID(name, ...) name,
enum class SpecFieldId { EPD_GROUP_SPEC_FIELDS(EPD_SPEC_FIELD_ID, EPD_SPEC_FIELD_ID) };
#undef EPD_SPEC_FIELD_ID

// ---- enum names ----------------------------------------------------------------------
// EnumNames<E>: the C type's name and its values' names, for messages, config
// files and command lines. A new enum field needs one specialisation here.
template <typename E>
struct EnumName {
  E value;
  const char* name;
};

template <typename E>
struct EnumNames;

template <>
struct EnumNames<epd_dtype_t> {
  static constexpr const char* kCType = "epd_dtype_t";
  static constexpr EnumName<epd_dtype_t> kNames[] = {
      {EPD_DTYPE_BF16, "bf16"}, {EPD_DTYPE_FP16, "fp16"}, {EPD_DTYPE_FP32, "fp32"}};
};
template <>
struct EnumNames<epd_quant_t> {
  static constexpr const char* kCType = "epd_quant_t";
  static constexpr EnumName<epd_quant_t> kNames[] = {{EPD_QUANT_NONE, "none"},
                                                     {EPD_QUANT_FP8_E4M3_BLOCK128, "fp8_e4m3"}};
};
template <>
struct EnumNames<epd_mode_t> {
  static constexpr const char* kCType = "epd_mode_t";
  static constexpr EnumName<epd_mode_t> kNames[] = {{EPD_MODE_HIGH_THROUGHPUT, "high_throughput"},
                                                    {EPD_MODE_LOW_LATENCY, "low_latency"}};
};
template <>
struct EnumNames<epd_layout_t> {
  static constexpr const char* kCType = "epd_layout_t";
  static constexpr EnumName<epd_layout_t> kNames[] = {{EPD_LAYOUT_RANK_MAJOR, "rank_major"},
                                                      {EPD_LAYOUT_EXPERT_MAJOR, "expert_major"}};
};
template <>
struct EnumNames<epd_executor_t> {
  static constexpr const char* kCType = "epd_executor_t";
  static constexpr EnumName<epd_executor_t> kNames[] = {{EPD_EXECUTOR_DAEMON, "daemon"},
                                                        {EPD_EXECUTOR_INLINE, "inline"}};
};
// Not a spec field (a combine argument), but named the same way.
template <>
struct EnumNames<epd_weight_mode_t> {
  static constexpr const char* kCType = "epd_weight_mode_t";
  static constexpr EnumName<epd_weight_mode_t> kNames[] = {{EPD_WEIGHTS_APPLY, "apply"},
                                                           {EPD_WEIGHTS_ALREADY_APPLIED, "already_applied"},
                                                           {EPD_WEIGHTS_ONES, "ones"}};
};

}  // namespace epd
