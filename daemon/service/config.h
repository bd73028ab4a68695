// config.h — the daemon's configuration: /etc/epd/epd.toml plus command-line
// overrides (command line wins), and the effective config printed back as TOML.
//
// load_config never exits the process: --help / --version / --print-config are
// reported through LoadOutcome so main() decides. Errors name the file, key
// and value ("epd.toml:7: log.level = 'loud' is not one of: trace, debug, ...").
// The file's keys (tables [server] [limits] [executor] [log] [cluster] [[group]]) are
// documented in systemd/epd.toml.example; toml++ reads them (see
// config_files_supported()), the printer needs no library.
// Thread-safety: value types and pure functions (reads files).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "spec.h"
#include "status.h"

namespace epd {

// Who may join a group declared in the config (its [[group]] keys
// allowed_uids / allowed_gids). Both empty: root, server.admin_group and the
// uid epd runs as. Root and the admin group may always join; only they may
// retire (bump the generation of) a declared group.
struct GroupAccess {
  std::vector<uint32_t> uids;
  std::vector<uint32_t> gids;
  bool empty() const { return uids.empty() && gids.empty(); }
};

// [limits]: quotas counted at creation (sessions at HELLO, groups and their
// workspace bytes when a join creates the group) and released when they go.
// 0 = no limit. Groups declared in the config count towards the global totals
// but are never refused.
struct Limits {
  uint32_t max_sessions_per_uid = 256;
  uint32_t max_groups_per_uid = 64;
  uint32_t max_groups = 256;
  uint64_t max_workspace_bytes_per_uid = 256ull << 30;  // 256 GiB: host memfd + GPU bytes
  uint64_t max_workspace_bytes = 1ull << 40;            // 1 TiB over every uid
};

inline constexpr uint32_t kMaxExitWatchMs = 1000;  // server.exit_watch_ms is in [0, kMaxExitWatchMs]

struct DaemonConfig {
  // [server]
  std::string socket_path = "/run/epd/epd.sock";  // control socket (SOCK_SEQPACKET)
  uint32_t socket_mode = 0660;                    // permissions of the socket file
  std::string socket_group;                       // group owning the socket ("" = daemon's)
  uint32_t max_sessions = 1024;
  std::vector<uint32_t> allowed_uids;             // empty = any peer that can open the socket
  uint32_t join_timeout_ms = kDefaultTimeoutMs;   // deadline of a join (or [[group]]) whose timeout_ms is 0
  std::string admin_group;                        // members may join, retire and see every group ("" = root only)
  uint32_t exit_watch_ms = 5;                     // period of the client exit watch (server.h), 0 = off
  // [limits]
  Limits limits;
  // [executor]
  uint32_t host_threads = 0;                      // host executor threads, 0 = all cores
  // [log]
  std::string log_level = "info";                 // trace|debug|info|warn|error|critical|off
  std::string log_target = "auto";                // auto (journal under systemd) | stderr | journal
  // [[group]] tables: groups created at start-up so their memory exists before workers.
  std::vector<GroupSpec> groups;
  std::map<std::string, GroupAccess> group_access;  // by group name; absent = the default above
  // [cluster] (daemon-to-daemon, later)
  uint32_t node_id = 0;
  std::string listen_address;                     // "" = no daemon-to-daemon listener
  std::string cluster_secret;                     // never printed by print_config
  std::vector<std::string> peers;                 // node addresses "host:port", index = node id
  std::string transport = "tcp";                  // tcp | rdma
  bool rdma_fallback_to_tcp = true;

  std::string config_file;                        // the file that was read ("" = none)
};

enum class LoadOutcome { kRun, kHelp, kVersion, kPrintConfig };

struct LoadedConfig {
  DaemonConfig config;
  LoadOutcome outcome = LoadOutcome::kRun;
  std::string text;  // help/version text, or the effective config for kPrintConfig
};

inline constexpr const char* kDefaultConfigFile = "/etc/epd/epd.toml";

// Parses argv: --config FILE (default /etc/epd/epd.toml; a missing default file
// is fine, a missing named file is an error; --config '' reads no file), overrides
// such as --socket PATH, --log-level L, --log-target T, --host-threads N,
// --print-config, --help, --version (`epd --help` lists them all).
Result<LoadedConfig> load_config(int argc, const char* const* argv);

// Parses TOML text (`origin` names it in messages). Unknown keys are errors.
// Without toml++ in this build: EPD_ERR_UNSUPPORTED naming `origin`.
Result<DaemonConfig> parse_config_toml(const std::string& text, const std::string& origin);

// Checks every field and the relations between them (node_id < peers, unique
// group names, ...); parse_config_toml and load_config call it. The message
// names the key and the value; `origin` prefixes it.
Status validate_config(const DaemonConfig& c, const std::string& origin);

// Whether this build can read config files (toml++ was found at build time).
bool config_files_supported();

// The effective config as TOML (secrets redacted).
std::string print_config(const DaemonConfig& c);

}  // namespace epd
