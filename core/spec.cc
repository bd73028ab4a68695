// spec.cc — GroupSpec construction, validation and comparison, mostly by
// walking the field list (spec_fields.h); the hand-written parts are the name,
// the arrays and the checks that relate fields.
#include "spec.h"

#include "layout.h"

#include <algorithm>
#include <climits>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace epd {

namespace {

bool valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// ---- the field list against epd_group_spec_t ------------------------------------------
// Each row names a C member of its type (SpecScalar's member pointers need it
// too; this says so in words). And every C member has a row, in order: each
// row's member starts where the previous one ends, give or take padding, and
// the last one ends the struct.
#define EPD_SPEC_C_TYPE(n, type, ...)                                                \
  static_assert(std::is_same_v<decltype(epd_group_spec_t::n), type>,                 \
                "EPD_GROUP_SPEC_FIELDS: row '" #n "' has a type other than its member " \
                "in epd_group_spec_t (include/epd/types.h)");
#define EPD_SPEC_C_HAND(n, ...)
EPD_GROUP_SPEC_FIELDS(EPD_SPEC_C_TYPE, EPD_SPEC_C_HAND)
#undef EPD_SPEC_C_TYPE
#undef EPD_SPEC_C_HAND

struct CMember {
  size_t offset, size, align;
};
#define EPD_SPEC_C_MEMBER(n, ...) \
  CMember{offsetof(epd_group_spec_t, n), sizeof(epd_group_spec_t::n), alignof(decltype(epd_group_spec_t::n))},
constexpr CMember kCMembers[] = {EPD_SPEC_C_MEMBER(struct_size, uint32_t)
                                     EPD_GROUP_SPEC_FIELDS(EPD_SPEC_C_MEMBER, EPD_SPEC_C_MEMBER)};
#undef EPD_SPEC_C_MEMBER

constexpr bool rows_cover_the_c_struct() {
  size_t end = 0;
  for (const CMember& m : kCMembers) {
    if (m.offset < end || m.offset - end >= m.align) return false;
    end = m.offset + m.size;
  }
  return end <= sizeof(epd_group_spec_t) && sizeof(epd_group_spec_t) - end < alignof(epd_group_spec_t);
}
static_assert(rows_cover_the_c_struct(),
              "EPD_GROUP_SPEC_FIELDS and epd_group_spec_t disagree: a member without a row, or rows out of "
              "the struct's order");

// ---- validation -----------------------------------------------------------------------
Status bad(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
Status bad(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return Status(EPD_ERR_INVALID_SPEC, buf);
}

// A field's own check (SpecCheck).
template <typename T>
Status check_field(const SpecScalar<T>& f, T v) {
  switch (f.check) {
    case SpecCheck::kRange:
      if constexpr (std::is_integral_v<T>) {
        if (static_cast<int64_t>(v) < f.lo || static_cast<int64_t>(v) > f.hi)
          return bad("%s = %lld is outside [%lld, %lld]", f.name, static_cast<long long>(v),
                     static_cast<long long>(f.lo), static_cast<long long>(f.hi));
      }
      break;
    case SpecCheck::kNonNegative:
      if constexpr (std::is_signed_v<T>) {
        if (v < 0) return bad("%s = %lld is negative", f.name, static_cast<long long>(v));
      }
      break;
    case SpecCheck::kEnum:
      if constexpr (std::is_enum_v<T>) {
        if (!enum_known(v))
          return bad("%s = %d is not a known %s", f.name, static_cast<int>(v), EnumNames<T>::kCType);
      }
      break;
    case SpecCheck::kNone:
    case SpecCheck::kRelation: break;
  }
  return Status::ok();
}

// The checks that involve other fields, and the arrays'. Each runs at its
// field's place in the list, so the first bad field in list order is reported.
Status check_relations(const GroupSpec& s, SpecFieldId id) {
  switch (id) {
    case SpecFieldId::name:
      if (s.name.empty() || s.name.size() >= EPD_NAME_MAX)
        return bad("name '%s' must have 1 to %d characters", s.name.c_str(), EPD_NAME_MAX - 1);
      for (char ch : s.name)
        if (!valid_name_char(ch)) return bad("name '%s' has character '%c' outside [A-Za-z0-9._-]", s.name.c_str(), ch);
      break;
    case SpecFieldId::rank:
      if (s.rank < 0 || s.rank >= s.world_size)
        return bad("rank = %d is outside [0, world_size = %d)", s.rank, s.world_size);
      break;
    case SpecFieldId::placement:
      if (static_cast<int32_t>(s.placement.size()) != s.world_size)
        return bad("placement has %zu entries, world_size is %d", s.placement.size(), s.world_size);
      for (int32_t r = 0; r < s.world_size; ++r) {
        if (s.placement[r].node < 0) return bad("placement[%d].node = %d is negative", r, s.placement[r].node);
        if (s.placement[r].gpu < EPD_GPU_HOST)
          return bad("placement[%d].gpu = %d is neither a device ordinal nor host (-1)", r, s.placement[r].gpu);
      }
      break;
    case SpecFieldId::num_experts:
      if (s.num_experts < s.world_size || s.num_experts > EPD_MAX_EXPERTS)
        return bad("num_experts = %d is outside [world_size = %d, %d]", s.num_experts, s.world_size,
                   EPD_MAX_EXPERTS);
      break;
    case SpecFieldId::top_k:
      if (s.top_k < 1 || s.top_k > EPD_MAX_TOP_K || s.top_k > s.num_experts)
        return bad("top_k = %d is outside [1, min(%d, num_experts = %d)]", s.top_k, EPD_MAX_TOP_K, s.num_experts);
      break;
    case SpecFieldId::expert_owner: {
      if (static_cast<int32_t>(s.expert_owner.size()) != s.num_experts)
        return bad("expert_owner has %zu entries, num_experts is %d", s.expert_owner.size(), s.num_experts);
      // A rank may own no expert (redundant experts, rebalancing): it
      // receives no rows and still takes part in every call.
      for (int32_t e = 0; e < s.num_experts; ++e)
        if (s.expert_owner[e] < 0 || s.expert_owner[e] >= s.world_size)
          return bad("expert_owner[%d] = %d is outside [0, world_size = %d)", e, s.expert_owner[e], s.world_size);
      break;
    }
    case SpecFieldId::dispatch_quant:
      if (s.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128 && s.hidden % EPD_FP8_BLOCK != 0)
        return make_status(EPD_ERR_FP8_ALIGNMENT,
                           "hidden = %d is not divisible by %d, needed by fp8_e4m3 block quantisation", s.hidden,
                           EPD_FP8_BLOCK);
      break;
    case SpecFieldId::max_tokens_per_rank: {
      // Received rows are indexed with int32: the largest rank's rows must fit.
      std::vector<int32_t> owned(static_cast<size_t>(s.world_size), 0);
      for (int32_t o : s.expert_owner) owned[o]++;
      const int64_t per_expert = static_cast<int64_t>(s.world_size) * s.max_tokens_per_rank;
      const int32_t most = *std::max_element(owned.begin(), owned.end());
      const int64_t rows = s.layout == EPD_LAYOUT_EXPERT_MAJOR ? per_expert * most : per_expert;
      if (rows > INT32_MAX)
        return bad("world_size * max_tokens_per_rank%s = %lld receive rows exceed %d",
                   s.layout == EPD_LAYOUT_EXPERT_MAJOR ? " * local_experts" : "", static_cast<long long>(rows),
                   INT32_MAX);
      break;
    }
    case SpecFieldId::executor:
      // The inline executor runs every rank's launches as shards of one GPU
      // (kernels/gpu_inline.h); several GPUs and nodes stay with the daemon.
      if (s.executor == EPD_EXECUTOR_INLINE)
        for (int32_t r = 0; r < s.world_size; ++r)
          if (s.placement[r].gpu == EPD_GPU_HOST || s.placement[r].gpu != s.placement[0].gpu ||
              s.placement[r].node != s.placement[0].node)
            return bad("executor = inline needs every rank on one GPU of one node; placement[%d] is node %d gpu %d, "
                       "placement[0] node %d gpu %d (use executor = daemon)",
                       r, s.placement[r].node, s.placement[r].gpu, s.placement[0].node, s.placement[0].gpu);
      break;
    default: break;
  }
  return Status::ok();
}

}  // namespace

const char* dtype_name(epd_dtype_t d) { return enum_name(d); }
const char* quant_name(epd_quant_t q) { return enum_name(q); }
const char* mode_name(epd_mode_t m) { return enum_name(m); }
const char* layout_name(epd_layout_t l) { return enum_name(l); }
const char* weight_mode_name(epd_weight_mode_t w) { return enum_name(w); }

Result<epd_dtype_t> parse_dtype(const std::string& s) { return parse_enum<epd_dtype_t>(s, "dtype"); }
Result<epd_quant_t> parse_quant(const std::string& s) { return parse_enum<epd_quant_t>(s, "dispatch_quant"); }
Result<epd_mode_t> parse_mode(const std::string& s) { return parse_enum<epd_mode_t>(s, "mode"); }
Result<epd_layout_t> parse_layout(const std::string& s) { return parse_enum<epd_layout_t>(s, "layout"); }
Result<epd_weight_mode_t> parse_weight_mode(const std::string& s) {
  return parse_enum<epd_weight_mode_t>(s, "weight mode");
}

Status check_weight_mode(const GroupSpec& spec, epd_weight_mode_t mode) {
  if (!enum_known(mode))
    return make_status(EPD_ERR_BAD_WEIGHT_MODE, "weight mode = %d is not a known epd_weight_mode_t",
                       static_cast<int>(mode));
  if (spec.layout == EPD_LAYOUT_RANK_MAJOR && mode == EPD_WEIGHTS_APPLY)
    return make_status(EPD_ERR_BAD_WEIGHT_MODE,
                       "weight mode 'apply' needs layout expert_major; rank_major rows are already "
                       "reduced per rank (use already_applied or ones)");
  return Status::ok();
}

size_t dtype_bytes(epd_dtype_t d) {
  switch (d) {
    case EPD_DTYPE_BF16:
    case EPD_DTYPE_FP16: return 2;
    case EPD_DTYPE_FP32: return 4;
  }
  return 0;
}

int32_t GroupSpec::contiguous_owner(int32_t e, int32_t num_experts, int32_t world_size) {
  // Experts split into world_size contiguous runs; when num_experts is not a
  // multiple, the first (num_experts % world_size) ranks get one more.
  const int32_t base = num_experts / world_size, extra = num_experts % world_size;
  const int32_t cut = extra * (base + 1);
  return e < cut ? e / (base + 1) : extra + (e - cut) / base;
}

Result<GroupSpec> GroupSpec::from_c(const epd_group_spec_t& c) {
  if (c.struct_size < sizeof(epd_group_spec_t))
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "spec.struct_size = %u is smaller than this library's %zu (call "
                       "epd_group_spec_init)",
                       c.struct_size, sizeof(epd_group_spec_t));
  GroupSpec s;
  size_t len = strnlen(c.name, EPD_NAME_MAX);
  if (len == EPD_NAME_MAX)
    return make_status(EPD_ERR_INVALID_SPEC, "name is not NUL-terminated within %d bytes",
                       EPD_NAME_MAX);
  s.name.assign(c.name, len);
  Status bad_enum = Status::ok();
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) {
      using T = std::decay_t<decltype(c.*f.c_member)>;
      if constexpr (std::is_enum_v<T>) {
        int64_t raw = 0;
        if (!enum_bits_known(c.*f.c_member, &raw)) {
          if (bad_enum.is_ok())
            bad_enum = make_status(EPD_ERR_INVALID_SPEC, "%s = %lld is not a known %s", f.name,
                                   static_cast<long long>(raw), EnumNames<T>::kCType);
          return;
        }
      }
      s.*f.member = c.*f.c_member;
    }
  });
  if (!bad_enum.is_ok()) return bad_enum;
  if (c.world_size < 1 || c.world_size > EPD_MAX_WORLD_SIZE)
    return make_status(EPD_ERR_INVALID_SPEC, "world_size = %d is outside [1, %d]", c.world_size,
                       EPD_MAX_WORLD_SIZE);
  if (c.num_experts < 1 || c.num_experts > EPD_MAX_EXPERTS)
    return make_status(EPD_ERR_INVALID_SPEC, "num_experts = %d is outside [1, %d]",
                       c.num_experts, EPD_MAX_EXPERTS);
  if (c.placement) {
    s.placement.assign(c.placement, c.placement + c.world_size);
  } else {
    s.placement.assign(static_cast<size_t>(c.world_size), epd_placement_t{0, EPD_GPU_HOST});
  }
  if (c.expert_owner) {
    s.expert_owner.assign(c.expert_owner, c.expert_owner + c.num_experts);
  } else {
    s.expert_owner.resize(static_cast<size_t>(c.num_experts));
    for (int32_t e = 0; e < c.num_experts; ++e)
      s.expert_owner[e] = contiguous_owner(e, c.num_experts, c.world_size);
  }
  return s;
}

epd_group_spec_t GroupSpec::to_c() const {
  epd_group_spec_t c;
  epd_group_spec_init(&c);
  std::strncpy(c.name, name.c_str(), EPD_NAME_MAX - 1);
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) c.*f.c_member = this->*f.member;
  });
  c.placement = placement.data();
  c.expert_owner = expert_owner.data();
  return c;
}

Status GroupSpec::validate() const {
  Status st;
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) {
      if (st) st = check_field(f, this->*f.member);
    }
    if (st) st = check_relations(*this, f.id);
  });
  // Each field is within its maximum; their product may still not be.
  if (st) {
    auto bytes = check_workspace_size(*this);
    if (!bytes) st = bytes.status();
  }
  return st;
}

Status GroupSpec::compare(const GroupSpec& o) const {
  const auto differ = [](const std::string& field, const std::string& mine, const std::string& theirs) {
    return make_status(EPD_ERR_SPEC_MISMATCH, "%s: group has %s, join has %s", field.c_str(), mine.c_str(),
                       theirs.c_str());
  };
  if (name != o.name) return differ("name", "'" + name + "'", "'" + o.name + "'");
  Status st;
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) {
      if (st && f.has(kSpecCompared) && this->*f.member != o.*f.member)
        st = differ(f.name, spec_value_text(this->*f.member), spec_value_text(o.*f.member));
    }
  });
  if (!st) return st;
  const auto where = [](const epd_placement_t& p) {
    return "node " + std::to_string(p.node) + " gpu " + std::to_string(p.gpu);
  };
  for (size_t r = 0; r < placement.size() && r < o.placement.size(); ++r)
    if (placement[r].node != o.placement[r].node || placement[r].gpu != o.placement[r].gpu)
      return differ("placement[" + std::to_string(r) + "]", where(placement[r]), where(o.placement[r]));
  for (size_t e = 0; e < expert_owner.size() && e < o.expert_owner.size(); ++e)
    if (expert_owner[e] != o.expert_owner[e])
      return differ("expert_owner[" + std::to_string(e) + "]", std::to_string(expert_owner[e]),
                    std::to_string(o.expert_owner[e]));
  return Status::ok();
}

std::vector<int32_t> GroupSpec::local_experts(int32_t r) const {
  std::vector<int32_t> out;
  for (int32_t e = 0; e < num_experts; ++e)
    if (expert_owner[e] == r) out.push_back(e);
  return out;
}

std::vector<int32_t> GroupSpec::local_index() const {
  std::vector<int32_t> idx(static_cast<size_t>(num_experts));
  std::vector<int32_t> next(static_cast<size_t>(world_size), 0);
  for (int32_t e = 0; e < num_experts; ++e) idx[e] = next[expert_owner[e]]++;
  return idx;
}

}  // namespace epd

extern "C" void epd_group_spec_init(epd_group_spec_t* spec) {
  std::memset(spec, 0, sizeof *spec);
  spec->struct_size = sizeof *spec;
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) spec->*f.c_member = f.c_default;
  });
}
