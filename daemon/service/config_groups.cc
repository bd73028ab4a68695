// config_groups.cc — the [[group]] tables of epd.toml: read and printed by
// walking the spec's field list (core/spec_fields.h), so a new scalar field
// needs nothing here. name, placement and expert_owner are hand-written.
#include <climits>
#include <limits>
#include <type_traits>

#include "config_toml.h"

namespace epd::config_detail {
namespace {

std::string placement_text(const epd_placement_t& p) {
  return std::to_string(p.node) + ":" + (p.gpu == EPD_GPU_HOST ? std::string("host") : std::to_string(p.gpu));
}

bool owners_contiguous(const GroupSpec& g) {
  for (int32_t e = 0; e < static_cast<int32_t>(g.expert_owner.size()); ++e)
    if (g.expert_owner[e] != GroupSpec::contiguous_owner(e, g.num_experts, g.world_size)) return false;
  return true;
}

bool placement_default(const GroupSpec& g) {
  for (const auto& p : g.placement)
    if (p.node != 0 || p.gpu != EPD_GPU_HOST) return false;
  return true;
}

// A scalar field as a TOML value: an integer, or the enum's name as a string.
template <typename T>
std::string toml_value(T v) {
  if constexpr (std::is_enum_v<T>) {
    return toml_string(enum_name(v));
  } else {
    return std::to_string(v);
  }
}

}  // namespace

void print_group(std::ostream& o, const GroupSpec& g) {
  o << "\n[[group]]\n";
  for_each_spec_field([&](const auto& f) {
    if constexpr (kIsSpecHand<decltype(f)>) {
      switch (f.id) {
        case SpecFieldId::name: o << "name = " << toml_string(g.name) << "\n"; break;
        case SpecFieldId::placement:
          if (!placement_default(g))
            o << "placement = "
              << toml_array(g.placement, [](const epd_placement_t& p) { return toml_string(placement_text(p)); })
              << "\n";
          break;
        case SpecFieldId::expert_owner:
          if (!owners_contiguous(g))
            o << "expert_owner = " << toml_array(g.expert_owner, [](int32_t r) { return std::to_string(r); })
              << "\n";
          break;
        default: break;
      }
    } else if (f.has(kSpecConfig)) {
      o << f.name << " = " << toml_value(g.*f.member) << "\n";
    }
  });
}

#if EPD_HAVE_TOMLPLUSPLUS

namespace {

// "host", "<gpu>", "<node>:<gpu>", "<node>:host".
bool parse_placement_text(const std::string& s, epd_placement_t* out) {
  const size_t colon = s.find(':');
  std::string node_text = colon == std::string::npos ? "0" : s.substr(0, colon);
  std::string gpu_text = colon == std::string::npos ? s : s.substr(colon + 1);
  uint64_t node = 0, gpu = 0;
  if (!parse_uint(node_text, 0, INT32_MAX, &node)) return false;
  if (gpu_text == "host") {
    *out = {static_cast<int32_t>(node), EPD_GPU_HOST};
    return true;
  }
  if (!parse_uint(gpu_text, 0, INT32_MAX, &gpu)) return false;
  *out = {static_cast<int32_t>(node), static_cast<int32_t>(gpu)};
  return true;
}

// Fills the defaults a config group may leave out (placement: every rank on the
// host of node 0; expert_owner: contiguous). Leaves bad sizes for validate().
void fill_group_defaults(GroupSpec* g) {
  if (g->placement.empty() && g->world_size >= 1 && g->world_size <= EPD_MAX_WORLD_SIZE)
    g->placement.assign(static_cast<size_t>(g->world_size), epd_placement_t{0, EPD_GPU_HOST});
  if (g->expert_owner.empty() && g->num_experts >= g->world_size && g->world_size >= 1 &&
      g->num_experts <= EPD_MAX_EXPERTS) {
    g->expert_owner.resize(static_cast<size_t>(g->num_experts));
    for (int32_t e = 0; e < g->num_experts; ++e)
      g->expert_owner[e] = GroupSpec::contiguous_owner(e, g->num_experts, g->world_size);
  }
}

// An integer field is read within its C type's range (TOML integers are
// int64), from 0 for a kNonNegative one; validate() then checks the field's
// own bounds and names the group.
template <typename T>
constexpr int64_t toml_min() {
  return static_cast<int64_t>(std::numeric_limits<T>::min());
}
template <typename T>
constexpr int64_t toml_max() {
  if constexpr (std::is_same_v<T, uint64_t>) {
    return INT64_MAX;
  } else {
    return static_cast<int64_t>(std::numeric_limits<T>::max());
  }
}

template <typename T>
void read_scalar(TomlReader& r, const toml::table& t, const std::string& prefix, const SpecScalar<T>& f, T* out) {
  const char* key = f.name;
  if constexpr (std::is_enum_v<T>) {
    const toml::node* n = t.get(key);
    std::string text;
    r.read_string(t, prefix, key, &text);
    if (!n || !r.ok()) return;
    Result<T> v = parse_enum<T>(text, key);
    if (!v) return r.fail(*n, prefix + key, "is not one of: " + enum_options<T>());
    *out = *v;
  } else {
    r.read_int(t, prefix, key, out, f.check == SpecCheck::kNonNegative ? 0 : toml_min<T>(), toml_max<T>());
  }
}

void read_placement(TomlReader& r, const toml::table& t, const std::string& prefix, GroupSpec* g) {
  const toml::array* a = r.array(t, prefix, "placement");
  for (size_t i = 0; a && i < a->size() && r.ok(); ++i) {
    const toml::node& el = *a->get(i);
    const std::string key = prefix + "placement[" + std::to_string(i) + "]";
    epd_placement_t p{};
    if (const auto* s = el.as_string()) {
      if (!parse_placement_text(s->get(), &p))
        return r.fail(el, key, "is not 'host', '<gpu>', '<node>:<gpu>' or '<node>:host'");
    } else if (el.as_integer()) {
      int64_t gpu = 0;
      if (!r.int_value(el, key, 0, INT32_MAX, &gpu)) return;
      p = {0, static_cast<int32_t>(gpu)};
    } else {
      return r.fail(el, key, "is neither a string nor a GPU ordinal");
    }
    g->placement.push_back(p);
  }
}

void read_owners(TomlReader& r, const toml::table& t, const std::string& prefix, GroupSpec* g) {
  const toml::array* a = r.array(t, prefix, "expert_owner");
  for (size_t i = 0; a && i < a->size() && r.ok(); ++i) {
    int64_t owner = 0;
    if (!r.int_value(*a->get(i), prefix + "expert_owner[" + std::to_string(i) + "]", 0, INT32_MAX, &owner)) return;
    g->expert_owner.push_back(static_cast<int32_t>(owner));
  }
}

void read_ids(TomlReader& r, const toml::table& t, const std::string& prefix, const char* key,
              std::vector<uint32_t>* out) {
  const toml::array* a = r.array(t, prefix, key);
  for (size_t i = 0; a && i < a->size() && r.ok(); ++i) {
    int64_t id = 0;
    if (r.int_value(*a->get(i), prefix + key + "[" + std::to_string(i) + "]", 0, UINT32_MAX - 1, &id))
      out->push_back(static_cast<uint32_t>(id));
  }
}

}  // namespace

void read_group(TomlReader& r, const toml::table& t, size_t index, uint32_t default_timeout, GroupSpec* g,
                GroupAccess* access) {
  const std::string prefix = "group[" + std::to_string(index) + "].";
  // Keys: the hand-written fields are all keys; `name` is required.
  std::vector<std::string_view> known, required;
  for_each_spec_field([&](const auto& f) {
    if constexpr (kIsSpecHand<decltype(f)>) {
      known.push_back(f.name);
      if (f.id == SpecFieldId::name) required.push_back(f.name);
    } else {
      if (f.has(kSpecConfig)) known.push_back(f.name);
      if (f.has(kSpecRequired)) required.push_back(f.name);
    }
  });
  known.push_back("allowed_uids");
  known.push_back("allowed_gids");
  r.check_keys(t, prefix, known);
  read_ids(r, t, prefix, "allowed_uids", &access->uids);
  read_ids(r, t, prefix, "allowed_gids", &access->gids);
  for (std::string_view key : required)
    if (!t.get(key) && r.ok())
      r.fail_plain(r.where(t) + ": " + prefix.substr(0, prefix.size() - 1) + " is missing the required key '" +
                   std::string(key) + "'");
  g->rank = 0;
  g->timeout_ms = 0;  // not given: server.join_timeout_ms
  for_each_spec_field([&](const auto& f) {
    if constexpr (kIsSpecHand<decltype(f)>) {
      switch (f.id) {
        case SpecFieldId::name: r.read_string(t, prefix, "name", &g->name); break;
        case SpecFieldId::placement: read_placement(r, t, prefix, g); break;
        case SpecFieldId::expert_owner: read_owners(r, t, prefix, g); break;
        default: break;
      }
    } else if (f.has(kSpecConfig)) {
      read_scalar(r, t, prefix, f, &(g->*f.member));
    }
  });
  if (!r.ok()) return;
  g->resolve_timeout(default_timeout);
  fill_group_defaults(g);
  Status st = g->validate();
  if (!st.is_ok())
    r.error = Status(st.code() == EPD_ERR_FP8_ALIGNMENT ? st.code() : EPD_ERR_INVALID_ARGUMENT,
                     r.where(t) + ": group[" + std::to_string(index) + "] ('" + g->name + "'): " + st.message());
}

#endif  // EPD_HAVE_TOMLPLUSPLUS

}  // namespace epd::config_detail
