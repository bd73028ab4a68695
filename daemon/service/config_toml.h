// config_toml.h — internal to epd_service: what config.cc ([server] [executor]
// [log] [cluster], the command line) and config_groups.cc ([[group]] tables)
// share: the TOML reader, the TOML writing helpers and the group functions.
// Nothing outside daemon/service includes it.
// Thread-safety: TomlReader is used by one thread at a time; the functions are
// pure.
#pragma once

#include <cstdint>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#if EPD_HAVE_TOMLPLUSPLUS
#if __has_include(<toml++/toml.hpp>)
#include <toml++/toml.hpp>
#else
#include <toml++/toml.h>
#endif
#endif

#include "config.h"
#include "spec.h"
#include "status.h"

namespace epd::config_detail {

// 'value', for messages.
std::string quoted(const std::string& s);

// A TOML basic string, escaped.
std::string toml_string(const std::string& s);

template <typename T, typename F>
std::string toml_array(const std::vector<T>& v, F&& item) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + item(v[i]);
  return out + "]";
}

// Parses an unsigned decimal within [lo, hi].
bool parse_uint(const std::string& s, uint64_t lo, uint64_t hi, uint64_t* out);

// One [[group]] table of print_config: every key of the field list that has
// kSpecConfig, in its order; placement and expert_owner only when they are not
// the defaults.
void print_group(std::ostream& o, const GroupSpec& g);

#if EPD_HAVE_TOMLPLUSPLUS

// Reads typed values out of a parsed document. The first error is kept in
// `error` and every later read is a no-op, so callers check once at the end.
class TomlReader {
 public:
  explicit TomlReader(std::string origin) : origin_(std::move(origin)) {}

  bool ok() const { return error.is_ok(); }
  Status error;

  std::string where(const toml::node& n) const {
    const auto line = n.source().begin.line;
    return line ? origin_ + ":" + std::to_string(line) : origin_;
  }

  void fail(const toml::node& n, const std::string& key, const std::string& why) {
    if (ok())
      error = make_status(EPD_ERR_INVALID_ARGUMENT, "%s: %s = %s %s", where(n).c_str(),
                          key.c_str(), render(n).c_str(), why.c_str());
  }
  void fail_plain(const std::string& msg) {
    if (ok()) error = Status(EPD_ERR_INVALID_ARGUMENT, msg);
  }

  static std::string render(const toml::node& n) {
    if (const auto* s = n.as_string()) return quoted(s->get());
    std::ostringstream os;
    n.visit([&](const auto& v) { os << v; });
    std::string text = os.str();
    for (char& ch : text)
      if (ch == '\n') ch = ' ';
    if (text.size() > 80) text = text.substr(0, 77) + "...";
    return text;
  }

  // Every key of `t` must be in `known`.
  void check_keys(const toml::table& t, const std::string& prefix,
                  const std::vector<std::string_view>& known) {
    for (auto&& [k, v] : t) {
      bool found = false;
      for (auto name : known) found = found || k.str() == name;
      if (!found && ok())
        error = make_status(EPD_ERR_INVALID_ARGUMENT, "%s: unknown key '%s%s' (known: %s)",
                            where(v).c_str(), prefix.c_str(), std::string(k.str()).c_str(),
                            join(known).c_str());
    }
  }

  void read_string(const toml::table& t, const std::string& prefix, const char* key,
                   std::string* out, std::string (*check)(const std::string&) = nullptr) {
    const toml::node* n = t.get(key);
    if (!n || !ok()) return;
    const auto* s = n->as_string();
    if (!s) return fail(*n, prefix + key, "is not a string");
    if (check) {
      std::string why = check(s->get());
      if (!why.empty()) return fail(*n, prefix + key, why);
    }
    *out = s->get();
  }

  template <typename Int>
  void read_int(const toml::table& t, const std::string& prefix, const char* key, Int* out,
                int64_t lo, int64_t hi) {
    const toml::node* n = t.get(key);
    if (!n || !ok()) return;
    int64_t v = 0;
    if (!int_value(*n, prefix + key, lo, hi, &v)) return;
    *out = static_cast<Int>(v);
  }

  bool int_value(const toml::node& n, const std::string& key, int64_t lo, int64_t hi,
                 int64_t* out) {
    const auto* i = n.as_integer();
    if (!i) {
      fail(n, key, "is not an integer");
      return false;
    }
    if (i->get() < lo || i->get() > hi) {
      fail(n, key, "is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return false;
    }
    *out = i->get();
    return true;
  }

  void read_bool(const toml::table& t, const std::string& prefix, const char* key, bool* out) {
    const toml::node* n = t.get(key);
    if (!n || !ok()) return;
    const auto* b = n->as_boolean();
    if (!b) return fail(*n, prefix + key, "is not true or false");
    *out = b->get();
  }

  const toml::array* array(const toml::table& t, const std::string& prefix, const char* key) {
    const toml::node* n = t.get(key);
    if (!n || !ok()) return nullptr;
    const auto* a = n->as_array();
    if (!a) fail(*n, prefix + key, "is not an array");
    return a;
  }

  const toml::table* table(const toml::table& t, const char* key) {
    const toml::node* n = t.get(key);
    if (!n || !ok()) return nullptr;
    const auto* tt = n->as_table();
    if (!tt) fail(*n, key, "is not a table ([" + std::string(key) + "])");
    return tt;
  }

  const std::string& origin() const { return origin_; }

 private:
  static std::string join(const std::vector<std::string_view>& names) {
    std::string s;
    for (auto n : names) s += (s.empty() ? "" : ", ") + std::string(n);
    return s;
  }

  std::string origin_;
};

// Reads [[group]] number `index` into *g (and its allowed_uids / allowed_gids
// into *access) and validates it; errors go to `r`. A group without
// timeout_ms (or with 0) gets `default_timeout` (server.join_timeout_ms).
void read_group(TomlReader& r, const toml::table& t, size_t index, uint32_t default_timeout,
                GroupSpec* g, GroupAccess* access);

#endif  // EPD_HAVE_TOMLPLUSPLUS

}  // namespace epd::config_detail
