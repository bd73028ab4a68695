// spec.h — epd::GroupSpec, the C++ form of epd_group_spec_t, with validation
// and field-by-field comparison, and for_each_spec_field, which walks the field
// list of spec_fields.h for code that handles every field the same way.
//
// A GroupSpec owns its arrays (placement, expert_owner is always filled: the
// contiguous default is materialised), so it can outlive the C struct it was
// built from. Derived tables (local expert lists) are computed by `validate`.
// Thread-safety: a value type; const methods are safe from any thread.
#pragma once

#include <cstring>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "epd/types.h"
#include "spec_fields.h"
#include "status.h"

namespace epd {

struct GroupSpec {
  // One member per row of EPD_GROUP_SPEC_FIELDS, in its order, starting at
  // the row's C default.
#define EPD_SPEC_MEMBER(n, type, c_default, ...) type n = c_default;
#define EPD_SPEC_HAND_MEMBER(n, cpp_type) cpp_type n;
  EPD_GROUP_SPEC_FIELDS(EPD_SPEC_MEMBER, EPD_SPEC_HAND_MEMBER)
#undef EPD_SPEC_MEMBER
#undef EPD_SPEC_HAND_MEMBER

  // Built from a C spec: copies the arrays, fills the defaults (contiguous
  // owners, host placement). timeout_ms 0 stays 0 (the daemon's default).
  // Does not validate; call validate().
  static Result<GroupSpec> from_c(const epd_group_spec_t& c);
  // A C view of this spec; its pointers borrow from *this.
  epd_group_spec_t to_c() const;

  // Checks every field; the message names the field and the value.
  Status validate() const;

  // Compares everything but `rank` (and `generation`, which has its own rule).
  // Returns OK or EPD_ERR_SPEC_MISMATCH naming the first differing field with
  // both values ("hidden: group has 7168, join has 4096").
  Status compare(const GroupSpec& other) const;

  // timeout_ms 0 becomes the daemon's configured default (server.join_timeout_ms):
  // the daemon does it on a spec it received, before the spec is compared or a
  // group made; libepd-client does it at join with the value the daemon sent
  // in its HELLO reply (0 from a daemon older than protocol 1.2: unchanged).
  void resolve_timeout(uint32_t daemon_default_ms) {
    if (timeout_ms == 0) timeout_ms = daemon_default_ms;
  }
  // The deadline for a client's own waits: timeout_ms, or kDefaultTimeoutMs
  // when it is still 0 (a daemon that did not say its default).
  uint32_t effective_timeout_ms() const { return timeout_ms != 0 ? timeout_ms : kDefaultTimeoutMs; }

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

// ---- the field list, walked -----------------------------------------------------------
// One X row of EPD_GROUP_SPEC_FIELDS as for_each_spec_field hands it out.
template <typename T>
struct SpecScalar {
  using Type = T;
  using Member = T GroupSpec::*;
  using CMember = T epd_group_spec_t::*;
  SpecFieldId id;
  const char* name;
  Member member;
  CMember c_member;
  T c_default;
  SpecCheck check;
  int64_t lo, hi;
  unsigned flags;
  bool has(unsigned flag) const { return (flags & flag) != 0; }
};
// One H row: every site has its own code for it.
struct SpecHand {
  SpecFieldId id;
  const char* name;
};
template <typename F>
inline constexpr bool kIsSpecHand = std::is_same_v<std::decay_t<F>, SpecHand>;

// Calls f(SpecScalar<T>) or f(SpecHand) for every row, in the list's order.
template <typename F>
void for_each_spec_field(F&& f) {
#define EPD_SPEC_VISIT_X(n, type, c_default, check, lo, hi, flags)                                 \
  f(SpecScalar<type>{SpecFieldId::n, #n, &GroupSpec::n, &epd_group_spec_t::n, c_default, SpecCheck::check, \
                     lo, hi, flags});
#define EPD_SPEC_VISIT_H(n, cpp_type) f(SpecHand{SpecFieldId::n, #n});
  EPD_GROUP_SPEC_FIELDS(EPD_SPEC_VISIT_X, EPD_SPEC_VISIT_H)
#undef EPD_SPEC_VISIT_X
#undef EPD_SPEC_VISIT_H
}

// ---- enum names (EnumNames<E> in spec_fields.h) ----------------------------------------
template <typename E>
const char* enum_name(E v) {
  for (const auto& e : EnumNames<E>::kNames)
    if (e.value == v) return e.name;
  return "invalid";
}

template <typename E>
bool enum_known(E v) {
  for (const auto& e : EnumNames<E>::kNames)
    if (e.value == v) return true;
  return false;
}

// Whether the bits of a C enum field (any int a C caller stored) name a value
// of E: checked before they are read as E, which for other values would be
// undefined behaviour in C++.
template <typename E>
bool enum_bits_known(const E& field, int64_t* raw) {
  int32_t bits = 0;
  static_assert(sizeof(E) == sizeof bits, "a C enum field is an int");
  std::memcpy(&bits, &field, sizeof bits);
  *raw = bits;
  for (const auto& e : EnumNames<E>::kNames)
    if (static_cast<int64_t>(e.value) == bits) return true;
  return false;
}

// The names, comma-separated ("bf16, fp16, fp32").
template <typename E>
std::string enum_options() {
  std::string options;
  for (const auto& e : EnumNames<E>::kNames) {
    options += options.empty() ? "" : ", ";
    options += e.name;
  }
  return options;
}

// Name -> value; EPD_ERR_INVALID_ARGUMENT "<what> '<s>' is not one of: a, b".
template <typename E>
Result<E> parse_enum(const std::string& s, const char* what) {
  for (const auto& e : EnumNames<E>::kNames)
    if (s == e.name) return e.value;
  return make_status(EPD_ERR_INVALID_ARGUMENT, "%s '%s' is not one of: %s", what, s.c_str(),
                     enum_options<E>().c_str());
}

// A field's value as text: an integer in decimal, an enum by its name.
template <typename T>
std::string spec_value_text(T v) {
  if constexpr (std::is_enum_v<T>) {
    return enum_name(v);
  } else {
    return std::to_string(v);
  }
}

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
