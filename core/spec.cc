// spec.cc — GroupSpec construction, validation and comparison.
#include "spec.h"

#include <algorithm>
#include <climits>
#include <cstring>

namespace epd {

namespace {

bool valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

template <typename E>
struct EnumName {
  E value;
  const char* name;
};

constexpr EnumName<epd_dtype_t> kDtypes[] = {
    {EPD_DTYPE_BF16, "bf16"}, {EPD_DTYPE_FP16, "fp16"}, {EPD_DTYPE_FP32, "fp32"}};
constexpr EnumName<epd_quant_t> kQuants[] = {{EPD_QUANT_NONE, "none"},
                                             {EPD_QUANT_FP8_E4M3_BLOCK128, "fp8_e4m3"}};
constexpr EnumName<epd_mode_t> kModes[] = {{EPD_MODE_HIGH_THROUGHPUT, "high_throughput"},
                                           {EPD_MODE_LOW_LATENCY, "low_latency"}};
constexpr EnumName<epd_layout_t> kLayouts[] = {{EPD_LAYOUT_RANK_MAJOR, "rank_major"},
                                               {EPD_LAYOUT_EXPERT_MAJOR, "expert_major"}};
constexpr EnumName<epd_weight_mode_t> kWeightModes[] = {
    {EPD_WEIGHTS_APPLY, "apply"},
    {EPD_WEIGHTS_ALREADY_APPLIED, "already_applied"},
    {EPD_WEIGHTS_ONES, "ones"}};

template <typename E, size_t N>
const char* name_of(const EnumName<E> (&table)[N], E v) {
  for (const auto& e : table)
    if (e.value == v) return e.name;
  return "invalid";
}

template <typename E, size_t N>
Result<E> parse_enum(const EnumName<E> (&table)[N], const std::string& s, const char* what) {
  std::string options;
  for (const auto& e : table) {
    if (s == e.name) return e.value;
    options += options.empty() ? "" : ", ";
    options += e.name;
  }
  return make_status(EPD_ERR_INVALID_ARGUMENT, "%s '%s' is not one of: %s", what, s.c_str(),
                     options.c_str());
}

template <typename E, size_t N>
bool known(const EnumName<E> (&table)[N], E v) {
  for (const auto& e : table)
    if (e.value == v) return true;
  return false;
}

}  // namespace

const char* dtype_name(epd_dtype_t d) { return name_of(kDtypes, d); }
const char* quant_name(epd_quant_t q) { return name_of(kQuants, q); }
const char* mode_name(epd_mode_t m) { return name_of(kModes, m); }
const char* layout_name(epd_layout_t l) { return name_of(kLayouts, l); }
const char* weight_mode_name(epd_weight_mode_t w) { return name_of(kWeightModes, w); }

Result<epd_dtype_t> parse_dtype(const std::string& s) { return parse_enum(kDtypes, s, "dtype"); }
Result<epd_quant_t> parse_quant(const std::string& s) {
  return parse_enum(kQuants, s, "dispatch_quant");
}
Result<epd_mode_t> parse_mode(const std::string& s) { return parse_enum(kModes, s, "mode"); }
Result<epd_layout_t> parse_layout(const std::string& s) {
  return parse_enum(kLayouts, s, "layout");
}
Result<epd_weight_mode_t> parse_weight_mode(const std::string& s) {
  return parse_enum(kWeightModes, s, "weight mode");
}

Status check_weight_mode(const GroupSpec& spec, epd_weight_mode_t mode) {
  if (!known(kWeightModes, mode))
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
  s.generation = c.generation;
  s.world_size = c.world_size;
  s.rank = c.rank;
  s.num_experts = c.num_experts;
  s.top_k = c.top_k;
  s.hidden = c.hidden;
  s.dtype = c.dtype;
  s.dispatch_quant = c.dispatch_quant;
  s.max_tokens_per_rank = c.max_tokens_per_rank;
  s.mode = c.mode;
  s.layout = c.layout;
  s.slots = c.slots;
  s.timeout_ms = c.timeout_ms == 0 ? 30000 : c.timeout_ms;
  s.sm_budget = c.sm_budget;
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
  c.generation = generation;
  c.world_size = world_size;
  c.rank = rank;
  c.placement = placement.data();
  c.num_experts = num_experts;
  c.top_k = top_k;
  c.expert_owner = expert_owner.data();
  c.hidden = hidden;
  c.dtype = dtype;
  c.dispatch_quant = dispatch_quant;
  c.max_tokens_per_rank = max_tokens_per_rank;
  c.mode = mode;
  c.layout = layout;
  c.slots = slots;
  c.timeout_ms = timeout_ms;
  c.sm_budget = sm_budget;
  return c;
}

Status GroupSpec::validate() const {
  const auto bad = [](const char* fmt, auto... args) {
    return make_status(EPD_ERR_INVALID_SPEC, fmt, args...);
  };
  if (name.empty() || name.size() >= EPD_NAME_MAX) return bad("name '%s' must have 1 to %d characters", name.c_str(), EPD_NAME_MAX - 1);
  for (char ch : name)
    if (!valid_name_char(ch))
      return bad("name '%s' has character '%c' outside [A-Za-z0-9._-]", name.c_str(), ch);
  if (world_size < 1 || world_size > EPD_MAX_WORLD_SIZE)
    return bad("world_size = %d is outside [1, %d]", world_size, EPD_MAX_WORLD_SIZE);
  if (rank < 0 || rank >= world_size)
    return bad("rank = %d is outside [0, world_size = %d)", rank, world_size);
  if (static_cast<int32_t>(placement.size()) != world_size)
    return bad("placement has %zu entries, world_size is %d", placement.size(), world_size);
  for (int32_t r = 0; r < world_size; ++r) {
    if (placement[r].node < 0)
      return bad("placement[%d].node = %d is negative", r, placement[r].node);
    if (placement[r].gpu < EPD_GPU_HOST)
      return bad("placement[%d].gpu = %d is neither a device ordinal nor host (-1)", r,
                 placement[r].gpu);
  }
  if (num_experts < world_size || num_experts > EPD_MAX_EXPERTS)
    return bad("num_experts = %d is outside [world_size = %d, %d]", num_experts, world_size,
               EPD_MAX_EXPERTS);
  if (static_cast<int32_t>(expert_owner.size()) != num_experts)
    return bad("expert_owner has %zu entries, num_experts is %d", expert_owner.size(),
               num_experts);
  std::vector<int32_t> owned(static_cast<size_t>(world_size), 0);
  for (int32_t e = 0; e < num_experts; ++e) {
    if (expert_owner[e] < 0 || expert_owner[e] >= world_size)
      return bad("expert_owner[%d] = %d is outside [0, world_size = %d)", e, expert_owner[e],
                 world_size);
    owned[expert_owner[e]]++;
  }
  for (int32_t r = 0; r < world_size; ++r)
    if (owned[r] == 0) return bad("rank %d owns no expert in expert_owner", r);
  if (top_k < 1 || top_k > EPD_MAX_TOP_K || top_k > num_experts)
    return bad("top_k = %d is outside [1, min(%d, num_experts = %d)]", top_k, EPD_MAX_TOP_K,
               num_experts);
  if (hidden < 1 || hidden > (1 << 20)) return bad("hidden = %d is outside [1, %d]", hidden, 1 << 20);
  if (dtype_bytes(dtype) == 0) return bad("dtype = %d is not a known epd_dtype_t", static_cast<int>(dtype));
  if (!known(kQuants, dispatch_quant))
    return bad("dispatch_quant = %d is not a known epd_quant_t", static_cast<int>(dispatch_quant));
  if (dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128 && hidden % EPD_FP8_BLOCK != 0)
    return make_status(EPD_ERR_FP8_ALIGNMENT,
                       "hidden = %d is not divisible by %d, needed by fp8_e4m3 block quantisation",
                       hidden, EPD_FP8_BLOCK);
  if (max_tokens_per_rank < 1 || max_tokens_per_rank > (1 << 20))
    return bad("max_tokens_per_rank = %d is outside [1, %d]", max_tokens_per_rank, 1 << 20);
  {
    // Received rows are indexed with int32: the largest rank's rows must fit.
    const int64_t per_expert = static_cast<int64_t>(world_size) * max_tokens_per_rank;
    const int32_t most = *std::max_element(owned.begin(), owned.end());
    const int64_t rows = layout == EPD_LAYOUT_EXPERT_MAJOR ? per_expert * most : per_expert;
    if (rows > INT32_MAX)
      return bad("world_size * max_tokens_per_rank%s = %lld receive rows exceed %d", 
                 layout == EPD_LAYOUT_EXPERT_MAJOR ? " * local_experts" : "",
                 static_cast<long long>(rows), INT32_MAX);
  }
  if (!known(kModes, mode)) return bad("mode = %d is not a known epd_mode_t", static_cast<int>(mode));
  if (!known(kLayouts, layout))
    return bad("layout = %d is not a known epd_layout_t", static_cast<int>(layout));
  if (slots < 2 || slots > EPD_MAX_SLOTS)
    return bad("slots = %d is outside [2, %d]", slots, EPD_MAX_SLOTS);
  if (sm_budget < 0) return bad("sm_budget = %d is negative", sm_budget);
  return Status::ok();
}

Status GroupSpec::compare(const GroupSpec& o) const {
  const auto differ = [](const char* field, auto mine, auto theirs, const char* fmt) {
    char a[128], b[128];
    std::snprintf(a, sizeof a, fmt, mine);
    std::snprintf(b, sizeof b, fmt, theirs);
    return make_status(EPD_ERR_SPEC_MISMATCH, "%s: group has %s, join has %s", field, a, b);
  };
  if (name != o.name) return differ("name", name.c_str(), o.name.c_str(), "'%s'");
  if (world_size != o.world_size) return differ("world_size", world_size, o.world_size, "%d");
  if (num_experts != o.num_experts) return differ("num_experts", num_experts, o.num_experts, "%d");
  if (top_k != o.top_k) return differ("top_k", top_k, o.top_k, "%d");
  if (hidden != o.hidden) return differ("hidden", hidden, o.hidden, "%d");
  if (dtype != o.dtype) return differ("dtype", dtype_name(dtype), dtype_name(o.dtype), "%s");
  if (dispatch_quant != o.dispatch_quant)
    return differ("dispatch_quant", quant_name(dispatch_quant), quant_name(o.dispatch_quant), "%s");
  if (max_tokens_per_rank != o.max_tokens_per_rank)
    return differ("max_tokens_per_rank", max_tokens_per_rank, o.max_tokens_per_rank, "%d");
  if (mode != o.mode) return differ("mode", mode_name(mode), mode_name(o.mode), "%s");
  if (layout != o.layout) return differ("layout", layout_name(layout), layout_name(o.layout), "%s");
  if (slots != o.slots) return differ("slots", slots, o.slots, "%d");
  if (timeout_ms != o.timeout_ms) return differ("timeout_ms", timeout_ms, o.timeout_ms, "%u");
  if (sm_budget != o.sm_budget) return differ("sm_budget", sm_budget, o.sm_budget, "%d");
  for (size_t r = 0; r < placement.size() && r < o.placement.size(); ++r) {
    if (placement[r].node != o.placement[r].node || placement[r].gpu != o.placement[r].gpu) {
      char field[64], a[64], b[64];
      std::snprintf(field, sizeof field, "placement[%zu]", r);
      std::snprintf(a, sizeof a, "node %d gpu %d", placement[r].node, placement[r].gpu);
      std::snprintf(b, sizeof b, "node %d gpu %d", o.placement[r].node, o.placement[r].gpu);
      return differ(field, a, b, "%s");
    }
  }
  for (size_t e = 0; e < expert_owner.size() && e < o.expert_owner.size(); ++e) {
    if (expert_owner[e] != o.expert_owner[e]) {
      char field[64];
      std::snprintf(field, sizeof field, "expert_owner[%zu]", e);
      return differ(field, expert_owner[e], o.expert_owner[e], "%d");
    }
  }
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
  spec->dtype = EPD_DTYPE_BF16;
  spec->dispatch_quant = EPD_QUANT_NONE;
  spec->mode = EPD_MODE_HIGH_THROUGHPUT;
  spec->layout = EPD_LAYOUT_RANK_MAJOR;
  spec->slots = 2;
  spec->timeout_ms = 30000;
}
