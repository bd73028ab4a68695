// status_report.h — what epctl sees: a plain-data snapshot of the daemon taken
// on the control thread, rendered as JSON or as text tables.
//
// The snapshot holds copies only (no pointers into daemon state), so rendering
// can run anywhere. Thread-safety: pure functions over values.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "protocol.h"
#include "shm_layout.h"

namespace epd {

namespace cluster {
struct ProxyPinning;
struct ProxyThreadState;
}  // namespace cluster

struct StatusSnapshot {
  int32_t pid = 0;
  double uptime_s = 0;
  std::string version, executor, socket_path, log_target;
  std::string gpu;  // GPU executor: devices and MPS state, or why GPU groups are unavailable
  uint32_t sessions = 0;
  bool shutting_down = false;
  struct GroupRow {
    std::string name, dtype, layout, mode, quant, state;
    std::string executor = "host";  // "host" or "gpu N" (+ health)
    uint64_t id = 0, generation = 0, workspace_bytes = 0;
    int32_t world_size = 0, joined = 0, joining = 0, num_experts = 0, top_k = 0, hidden = 0;
    int32_t max_tokens = 0, slots = 0;
    uint32_t timeout_ms = 0;
    std::string owner;  // "uid N", or "config" (with its allowed uids/gids) for a declared group
    std::vector<int32_t> lost;
    // Every scalar field of the group's spec, in the field list's order
    // (core/spec_fields.h): name and value as JSON (numbers bare, enums quoted).
    std::vector<std::pair<std::string, std::string>> spec;
  };
  struct RankRow {
    std::string group, state;
    uint64_t generation = 0, session = 0;
    int32_t rank = 0, pid = 0;
    uint32_t uid = 0;
    double last_progress_age_s = -1;  // -1: never
    shm::Counters counters{};
  };
  struct SessionRow {
    uint64_t id = 0;
    int32_t pid = 0;
    uint32_t uid = 0, gid = 0;
    std::string name;
    uint32_t memberships = 0;
    double connected_s = 0;
  };
  // One per thread of the cluster link that ships to / receives from the other
  // nodes (cluster_thread_rows()); empty when the daemon runs no cluster.
  struct ClusterThreadRow {
    std::string role;        // "shipping proxy" | "transport progress"
    int32_t tid = 0;         // OS thread id; 0: not known (not started yet)
    bool pinned = false;     // its affinity was set to the CPUs chosen near the NIC
    std::vector<int> cpus;   // pinned: its CPUs as read back; else empty
    std::string nic;         // the NIC the transport uses; "": not known
    int32_t numa_node = -1;  // that NIC's NUMA node; -1: not known
    std::string detail;      // how the CPUs were chosen, or why it is not pinned
  };
  // [limits] (0 = none) and what each uid uses of them; `total_*` over every
  // uid, config groups included.
  struct LimitsRow {
    uint32_t max_sessions = 0, max_sessions_per_uid = 0, max_groups = 0, max_groups_per_uid = 0;
    uint64_t max_workspace_bytes = 0, max_workspace_bytes_per_uid = 0;
    uint32_t total_groups = 0;
    uint64_t total_workspace_bytes = 0;
  };
  struct UsageRow {
    uint32_t uid = 0, sessions = 0, groups = 0;
    uint64_t workspace_bytes = 0;
  };
  LimitsRow limits;
  std::vector<UsageRow> usage;  // by uid, ascending
  std::vector<GroupRow> groups;
  std::vector<RankRow> ranks;
  std::vector<SessionRow> sessions_list;
  std::vector<ClusterThreadRow> cluster_threads;
};

// The rows for a cluster link's threads: `pinning` is what was asked for
// (ClusterLink::pinning()), `threads` what each thread got
// (ClusterLink::proxy_threads()).
std::vector<StatusSnapshot::ClusterThreadRow> cluster_thread_rows(
    const cluster::ProxyPinning& pinning, const std::vector<cluster::ProxyThreadState>& threads);

std::string render_status(const StatusSnapshot& s, proto::StatusWhat what, bool json);

// JSON string escaping (quotes included).
std::string json_quote(const std::string& s);

}  // namespace epd
