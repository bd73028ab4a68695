// config.cc — epd.toml parsing (toml++), command-line overrides (CLI11) and the
// effective config printed back as TOML. See config.h; the [[group]] tables are
// in config_groups.cc.
//
// The printer is hand-written (not toml++'s formatter) so --print-config works
// in builds without toml++ and keeps a stable key order.
#include "config.h"

#include <sys/un.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <exception>
#include <set>
#include <sstream>
#include <string_view>

#include <CLI/CLI.hpp>

#include "config_toml.h"
#include "logging.h"

#ifndef EPD_VERSION_STRING
#define EPD_VERSION_STRING "unknown"
#endif

namespace epd {

namespace config_detail {

std::string quoted(const std::string& s) { return "'" + s + "'"; }

bool parse_uint(const std::string& s, uint64_t lo, uint64_t hi, uint64_t* out) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi)
    return false;
  *out = v;
  return true;
}

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (ch < 0x20 || ch == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

}  // namespace config_detail

namespace {

using namespace config_detail;

// ---- field checks: each returns "" when valid, else the reason ("is not ...") --

constexpr size_t kSunPathMax = sizeof(sockaddr_un{}.sun_path);  // incl. the NUL

std::string why_one_of(const std::string& v, std::initializer_list<const char*> options) {
  std::string list;
  for (const char* o : options) {
    if (v == o) return {};
    list += list.empty() ? "" : ", ";
    list += o;
  }
  return "is not one of: " + list;
}

std::string why_socket_path(const std::string& p) {
  if (p.empty() || p[0] != '/') return "is not an absolute path";
  if (p.size() >= kSunPathMax)
    return "is " + std::to_string(p.size()) + " bytes long; a Unix socket path has at most " +
           std::to_string(kSunPathMax - 1);
  return {};
}

std::string why_log_level(const std::string& v) {
  return why_one_of(v, {"trace", "debug", "info", "warn", "error", "critical", "off"});
}
std::string why_log_target(const std::string& v) {
  return why_one_of(v, {"auto", "stderr", "journal"});
}
std::string why_transport(const std::string& v) { return why_one_of(v, {"tcp", "rdma"}); }

// "host:port" or "[v6addr]:port", port in [1, 65535].
std::string why_address(const std::string& a) {
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size())
    return "is not of the form host:port";
  const std::string host = a.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') return "has an unterminated '[' in its host";
  unsigned port = 0;
  const char* b = a.data() + colon + 1;
  const char* e = a.data() + a.size();
  auto [ptr, ec] = std::from_chars(b, e, port);
  if (ec != std::errc() || ptr != e || port < 1 || port > 65535)
    return "has a port outside [1, 65535]";
  return {};
}

std::string why_listen_address(const std::string& a) { return a.empty() ? "" : why_address(a); }

// "0660", "660" or "0o660".
bool parse_mode_text(std::string s, uint32_t* out) {
  if (s.rfind("0o", 0) == 0) s = s.substr(2);
  uint32_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 8);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v > 0777) return false;
  *out = v;
  return true;
}

// ---- TOML input -----------------------------------------------------------------

#if EPD_HAVE_TOMLPLUSPLUS

Result<DaemonConfig> parse_toml_document(const std::string& text, const std::string& origin) {
  toml::table doc;
  try {
    doc = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "%s:%u:%u: %s", origin.c_str(),
                       e.source().begin.line, e.source().begin.column,
                       std::string(e.description()).c_str());
  }
  DaemonConfig c;
  TomlReader r(origin);
  r.check_keys(doc, "", {"server", "limits", "executor", "log", "group", "cluster"});
  if (const toml::table* s = r.table(doc, "server")) {
    r.check_keys(*s, "server.",
                 {"socket_path", "socket_mode", "socket_group", "max_sessions", "allowed_uids",
                  "join_timeout_ms", "admin_group", "exit_watch_ms"});
    r.read_string(*s, "server.", "socket_path", &c.socket_path, why_socket_path);
    if (const toml::node* n = s->get("socket_mode"); n && r.ok()) {
      if (const auto* str = n->as_string()) {
        if (!parse_mode_text(str->get(), &c.socket_mode))
          r.fail(*n, "server.socket_mode", "is not an octal mode up to 0777");
      } else {
        r.read_int(*s, "server.", "socket_mode", &c.socket_mode, 0, 0777);
      }
    }
    r.read_string(*s, "server.", "socket_group", &c.socket_group);
    r.read_int(*s, "server.", "max_sessions", &c.max_sessions, 1, UINT32_MAX);
    if (const toml::array* a = r.array(*s, "server.", "allowed_uids")) {
      for (size_t i = 0; i < a->size() && r.ok(); ++i) {
        int64_t uid = 0;
        if (r.int_value(*a->get(i), "server.allowed_uids[" + std::to_string(i) + "]", 0,
                        UINT32_MAX - 1, &uid))
          c.allowed_uids.push_back(static_cast<uint32_t>(uid));
      }
    }
    r.read_int(*s, "server.", "join_timeout_ms", &c.join_timeout_ms, 1, UINT32_MAX);
    r.read_string(*s, "server.", "admin_group", &c.admin_group);
    r.read_int(*s, "server.", "exit_watch_ms", &c.exit_watch_ms, 0, kMaxExitWatchMs);
  }
  if (const toml::table* l = r.table(doc, "limits")) {
    r.check_keys(*l, "limits.",
                 {"max_sessions_per_uid", "max_groups_per_uid", "max_groups", "max_workspace_bytes_per_uid",
                  "max_workspace_bytes"});
    r.read_int(*l, "limits.", "max_sessions_per_uid", &c.limits.max_sessions_per_uid, 0, UINT32_MAX);
    r.read_int(*l, "limits.", "max_groups_per_uid", &c.limits.max_groups_per_uid, 0, UINT32_MAX);
    r.read_int(*l, "limits.", "max_groups", &c.limits.max_groups, 0, UINT32_MAX);
    r.read_int(*l, "limits.", "max_workspace_bytes_per_uid", &c.limits.max_workspace_bytes_per_uid, 0, INT64_MAX);
    r.read_int(*l, "limits.", "max_workspace_bytes", &c.limits.max_workspace_bytes, 0, INT64_MAX);
  }
  if (const toml::table* e = r.table(doc, "executor")) {
    r.check_keys(*e, "executor.", {"host_threads"});
    r.read_int(*e, "executor.", "host_threads", &c.host_threads, 0, 4096);
  }
  if (const toml::table* l = r.table(doc, "log")) {
    r.check_keys(*l, "log.", {"level", "target"});
    r.read_string(*l, "log.", "level", &c.log_level, why_log_level);
    r.read_string(*l, "log.", "target", &c.log_target, why_log_target);
  }
  if (const toml::table* k = r.table(doc, "cluster")) {
    r.check_keys(*k, "cluster.",
                 {"node_id", "listen_address", "secret", "peers", "transport",
                  "rdma_fallback_to_tcp"});
    r.read_int(*k, "cluster.", "node_id", &c.node_id, 0, EPD_MAX_WORLD_SIZE - 1);
    r.read_string(*k, "cluster.", "listen_address", &c.listen_address, why_listen_address);
    r.read_string(*k, "cluster.", "secret", &c.cluster_secret);
    if (const toml::array* a = r.array(*k, "cluster.", "peers")) {
      for (size_t i = 0; i < a->size() && r.ok(); ++i) {
        const toml::node& el = *a->get(i);
        const std::string key = "cluster.peers[" + std::to_string(i) + "]";
        const auto* s = el.as_string();
        if (!s) {
          r.fail(el, key, "is not a string");
        } else if (std::string why = why_address(s->get()); !why.empty()) {
          r.fail(el, key, why);
        } else {
          c.peers.push_back(s->get());
        }
      }
    }
    r.read_string(*k, "cluster.", "transport", &c.transport, why_transport);
    r.read_bool(*k, "cluster.", "rdma_fallback_to_tcp", &c.rdma_fallback_to_tcp);
  }
  if (const toml::node* g = doc.get("group"); g && r.ok()) {
    const toml::array* a = g->as_array();
    if (!a || !a->is_array_of_tables()) {
      r.fail(*g, "group", "is not an array of tables (write each group as [[group]])");
    } else {
      for (size_t i = 0; i < a->size() && r.ok(); ++i) {
        GroupSpec spec;
        GroupAccess access;
        read_group(r, *a->get(i)->as_table(), i, c.join_timeout_ms, &spec, &access);
        if (!r.ok()) break;
        if (!access.empty()) c.group_access[spec.name] = std::move(access);
        c.groups.push_back(std::move(spec));
      }
    }
  }
  if (!r.ok()) return r.error;
  return c;
}

#endif  // EPD_HAVE_TOMLPLUSPLUS

// ---- command line -------------------------------------------------------------------

struct CliValues {
  std::string config = kDefaultConfigFile;
  std::string socket_path, socket_mode, socket_group, max_sessions, join_timeout_ms, exit_watch_ms;
  std::string host_threads, log_level, log_target, node_id, listen_address, transport;
  bool print_config = false;
};

Status read_file(const std::string& path, bool named, std::string* text, bool* missing) {
  *missing = false;
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) {
    const int err = errno;
    if (err == ENOENT && !named) {
      *missing = true;
      return Status::ok();
    }
    return make_status(EPD_ERR_INVALID_ARGUMENT, "config file '%s': %s", path.c_str(),
                       std::strerror(err));
  }
  char buf[65536];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text->append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "config file '%s': %s", path.c_str(),
                       std::strerror(err));
  return Status::ok();
}

Status cli_error(const char* flag, const std::string& value, const std::string& why) {
  return make_status(EPD_ERR_INVALID_ARGUMENT, "command line: %s = %s %s", flag,
                     quoted(value).c_str(), why.c_str());
}

Status apply_string(const CLI::App& app, const char* flag, const std::string& value,
                    std::string* out, std::string (*check)(const std::string&)) {
  if (app.count(flag) == 0) return Status::ok();
  if (check) {
    std::string why = check(value);
    if (!why.empty()) return cli_error(flag, value, why);
  }
  *out = value;
  return Status::ok();
}

Status apply_uint(const CLI::App& app, const char* flag, const std::string& value, uint64_t lo,
                  uint64_t hi, uint32_t* out) {
  if (app.count(flag) == 0) return Status::ok();
  uint64_t v = 0;
  if (!parse_uint(value, lo, hi, &v))
    return cli_error(flag, value,
                     "is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  *out = static_cast<uint32_t>(v);
  return Status::ok();
}

Status apply_overrides(const CLI::App& app, const CliValues& v, DaemonConfig* c) {
  EPD_RETURN_IF_ERROR(apply_string(app, "--socket", v.socket_path, &c->socket_path, why_socket_path));
  if (app.count("--socket-mode") && !parse_mode_text(v.socket_mode, &c->socket_mode))
    return cli_error("--socket-mode", v.socket_mode, "is not an octal mode up to 0777");
  EPD_RETURN_IF_ERROR(apply_string(app, "--socket-group", v.socket_group, &c->socket_group, nullptr));
  EPD_RETURN_IF_ERROR(apply_uint(app, "--max-sessions", v.max_sessions, 1, UINT32_MAX, &c->max_sessions));
  EPD_RETURN_IF_ERROR(
      apply_uint(app, "--join-timeout-ms", v.join_timeout_ms, 1, UINT32_MAX, &c->join_timeout_ms));
  EPD_RETURN_IF_ERROR(
      apply_uint(app, "--exit-watch-ms", v.exit_watch_ms, 0, kMaxExitWatchMs, &c->exit_watch_ms));
  EPD_RETURN_IF_ERROR(apply_uint(app, "--host-threads", v.host_threads, 0, 4096, &c->host_threads));
  EPD_RETURN_IF_ERROR(apply_string(app, "--log-level", v.log_level, &c->log_level, why_log_level));
  EPD_RETURN_IF_ERROR(apply_string(app, "--log-target", v.log_target, &c->log_target, why_log_target));
  EPD_RETURN_IF_ERROR(
      apply_uint(app, "--node-id", v.node_id, 0, EPD_MAX_WORLD_SIZE - 1, &c->node_id));
  EPD_RETURN_IF_ERROR(apply_string(app, "--listen-address", v.listen_address, &c->listen_address,
                                   why_listen_address));
  EPD_RETURN_IF_ERROR(apply_string(app, "--transport", v.transport, &c->transport, why_transport));
  return Status::ok();
}

}  // namespace

bool config_files_supported() { return EPD_HAVE_TOMLPLUSPLUS != 0; }

Status validate_config(const DaemonConfig& c, const std::string& origin) {
  const auto bad = [&](const std::string& key, const std::string& value, const std::string& why) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "%s: %s = %s %s", origin.c_str(), key.c_str(),
                       value.c_str(), why.c_str());
  };
  std::string why;
  if (!(why = why_socket_path(c.socket_path)).empty())
    return bad("server.socket_path", quoted(c.socket_path), why);
  if (c.socket_mode > 0777) {
    char mode[16];
    std::snprintf(mode, sizeof mode, "0o%o", c.socket_mode);
    return bad("server.socket_mode", mode, "is above 0o777");
  }
  if (c.max_sessions < 1) return bad("server.max_sessions", "0", "is outside [1, 4294967295]");
  for (size_t i = 0; i < c.allowed_uids.size(); ++i)
    if (c.allowed_uids[i] == UINT32_MAX)
      return bad("server.allowed_uids[" + std::to_string(i) + "]", std::to_string(UINT32_MAX),
                 "is not a valid uid");
  if (c.join_timeout_ms < 1) return bad("server.join_timeout_ms", "0", "is outside [1, 4294967295]");
  if (c.exit_watch_ms > kMaxExitWatchMs)
    return bad("server.exit_watch_ms", std::to_string(c.exit_watch_ms),
               "is outside [0, " + std::to_string(kMaxExitWatchMs) + "]");
  if (c.host_threads > 4096)
    return bad("executor.host_threads", std::to_string(c.host_threads), "is outside [0, 4096]");
  if (!(why = why_log_level(c.log_level)).empty()) return bad("log.level", quoted(c.log_level), why);
  if (!(why = why_log_target(c.log_target)).empty())
    return bad("log.target", quoted(c.log_target), why);
  if (!(why = why_listen_address(c.listen_address)).empty())
    return bad("cluster.listen_address", quoted(c.listen_address), why);
  for (size_t i = 0; i < c.peers.size(); ++i)
    if (!(why = why_address(c.peers[i])).empty())
      return bad("cluster.peers[" + std::to_string(i) + "]", quoted(c.peers[i]), why);
  if (!c.peers.empty() && c.node_id >= c.peers.size())
    return bad("cluster.node_id", std::to_string(c.node_id),
               "is not an index into cluster.peers (" + std::to_string(c.peers.size()) +
                   " entries)");
  if (!(why = why_transport(c.transport)).empty())
    return bad("cluster.transport", quoted(c.transport), why);
  std::set<std::string> names;
  for (size_t i = 0; i < c.groups.size(); ++i) {
    const std::string key = "group[" + std::to_string(i) + "]";
    Status st = c.groups[i].validate();
    if (!st.is_ok())
      return Status(st.code(), origin + ": " + key + " ('" + c.groups[i].name + "'): " + st.message());
    if (!names.insert(c.groups[i].name).second)
      return bad(key + ".name", quoted(c.groups[i].name), "is already the name of another group");
  }
  return Status::ok();
}

Result<DaemonConfig> parse_config_toml(const std::string& text, const std::string& origin) {
#if EPD_HAVE_TOMLPLUSPLUS
  Result<DaemonConfig> c = [&]() -> Result<DaemonConfig> {
    try {
      return parse_toml_document(text, origin);
    } catch (const std::exception& e) {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "%s: %s", origin.c_str(), e.what());
    }
  }();
  if (!c.is_ok()) return c;
  EPD_RETURN_IF_ERROR(validate_config(*c, origin));
  return c;
#else
  (void)text;
  return make_status(EPD_ERR_UNSUPPORTED,
                     "%s: config files need toml++, and this build of epd has none (install "
                     "libtomlplusplus-dev or configure with -DEPD_TOMLPLUSPLUS_INCLUDE_DIR=DIR, "
                     "then rebuild); run with --config '' and command-line options instead",
                     origin.c_str());
#endif
}

std::string print_config(const DaemonConfig& c) {
  std::ostringstream o;
  o << "# epd effective configuration";
  if (!c.config_file.empty()) o << " (file " << c.config_file << " plus command line)";
  o << "\n\n[server]\n";
  o << "socket_path = " << toml_string(c.socket_path) << "\n";
  char mode[16];
  std::snprintf(mode, sizeof mode, "0o%o", c.socket_mode);
  o << "socket_mode = " << mode << "\n";
  o << "socket_group = " << toml_string(c.socket_group) << "\n";
  o << "max_sessions = " << c.max_sessions << "\n";
  o << "allowed_uids = "
    << toml_array(c.allowed_uids, [](uint32_t u) { return std::to_string(u); }) << "\n";
  o << "join_timeout_ms = " << c.join_timeout_ms << "\n";
  o << "admin_group = " << toml_string(c.admin_group) << "\n";
  o << "exit_watch_ms = " << c.exit_watch_ms << "\n";
  o << "\n[limits]\nmax_sessions_per_uid = " << c.limits.max_sessions_per_uid << "\n";
  o << "max_groups_per_uid = " << c.limits.max_groups_per_uid << "\n";
  o << "max_groups = " << c.limits.max_groups << "\n";
  o << "max_workspace_bytes_per_uid = " << c.limits.max_workspace_bytes_per_uid << "\n";
  o << "max_workspace_bytes = " << c.limits.max_workspace_bytes << "\n";
  o << "\n[executor]\nhost_threads = " << c.host_threads << "\n";
  o << "\n[log]\nlevel = " << toml_string(c.log_level) << "\n";
  o << "target = " << toml_string(c.log_target) << "\n";
  o << "\n[cluster]\nnode_id = " << c.node_id << "\n";
  o << "listen_address = " << toml_string(c.listen_address) << "\n";
  o << (c.cluster_secret.empty() ? "# secret: not set\n" : "# secret: set (redacted)\n");
  o << "peers = " << toml_array(c.peers, toml_string) << "\n";
  o << "transport = " << toml_string(c.transport) << "\n";
  o << "rdma_fallback_to_tcp = " << (c.rdma_fallback_to_tcp ? "true" : "false") << "\n";
  auto ids = [](const std::vector<uint32_t>& v) { return toml_array(v, [](uint32_t u) { return std::to_string(u); }); };
  for (const GroupSpec& g : c.groups) {
    print_group(o, g);
    if (auto it = c.group_access.find(g.name); it != c.group_access.end()) {
      if (!it->second.uids.empty()) o << "allowed_uids = " << ids(it->second.uids) << "\n";
      if (!it->second.gids.empty()) o << "allowed_gids = " << ids(it->second.gids) << "\n";
    }
  }
  return o.str();
}

Result<LoadedConfig> load_config(int argc, const char* const* argv) {
  CliValues v;
  CLI::App app("epd: expert-parallel dispatch daemon (one per node)", "epd");
  app.set_version_flag("--version", std::string("epd ") + EPD_VERSION_STRING);
  app.add_option("-c,--config", v.config,
                 "TOML config file (default /etc/epd/epd.toml, ignored when missing; '' = none)")
      ->type_name("FILE");
  app.add_option("--socket", v.socket_path, "control socket path (server.socket_path)")
      ->type_name("PATH");
  app.add_option("--socket-mode", v.socket_mode, "control socket permissions, octal (server.socket_mode)")
      ->type_name("MODE");
  app.add_option("--socket-group", v.socket_group, "group owning the control socket (server.socket_group)")
      ->type_name("GROUP");
  app.add_option("--max-sessions", v.max_sessions, "client session limit (server.max_sessions)")
      ->type_name("N");
  app.add_option("--join-timeout-ms", v.join_timeout_ms, "default join deadline (server.join_timeout_ms)")
      ->type_name("MS");
  app.add_option("--exit-watch-ms", v.exit_watch_ms,
                 "period of the client exit watch, 0 = off (server.exit_watch_ms)")
      ->type_name("MS");
  app.add_option("--host-threads", v.host_threads, "host executor threads, 0 = all cores (executor.host_threads)")
      ->type_name("N");
  app.add_option("--log-level", v.log_level, "trace|debug|info|warn|error|critical|off (log.level)")
      ->type_name("LEVEL");
  app.add_option("--log-target", v.log_target, "auto|stderr|journal (log.target)")->type_name("TARGET");
  app.add_option("--node-id", v.node_id, "this node's index in cluster.peers (cluster.node_id)")
      ->type_name("N");
  app.add_option("--listen-address", v.listen_address, "daemon-to-daemon listener (cluster.listen_address)")
      ->type_name("HOST:PORT");
  app.add_option("--transport", v.transport, "tcp|rdma (cluster.transport)")->type_name("NAME");
  app.add_flag("--print-config", v.print_config, "print the effective config as TOML and exit");

  LoadedConfig out;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out.outcome = LoadOutcome::kHelp;
    out.text = app.help();
    return out;
  } catch (const CLI::CallForAllHelp&) {
    out.outcome = LoadOutcome::kHelp;
    out.text = app.help("", CLI::AppFormatMode::All);
    return out;
  } catch (const CLI::CallForVersion& e) {
    out.outcome = LoadOutcome::kVersion;
    out.text = std::string(e.what()) + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "command line: %s (see epd --help)", e.what());
  } catch (const std::exception& e) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "command line: %s", e.what());
  }

  const bool named = app.count("--config") > 0;
  if (!v.config.empty()) {
    std::string text;
    bool missing = false;
    EPD_RETURN_IF_ERROR(read_file(v.config, named, &text, &missing));
    if (!missing) {
      Result<DaemonConfig> parsed = parse_config_toml(text, v.config);
      if (!parsed.is_ok()) return parsed.status();
      out.config = std::move(*parsed);
      out.config.config_file = v.config;
    }
  }
  EPD_RETURN_IF_ERROR(apply_overrides(app, v, &out.config));
  EPD_RETURN_IF_ERROR(validate_config(
      out.config, out.config.config_file.empty() ? std::string("command line")
                                                 : out.config.config_file + " with command line"));
  if (v.print_config) {
    out.outcome = LoadOutcome::kPrintConfig;
    out.text = print_config(out.config);
  }
  return out;
}

}  // namespace epd
