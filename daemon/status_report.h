// status_report.h — what epctl sees: a plain-data snapshot of the daemon taken
// on the control thread, rendered as JSON or as text tables.
//
// The snapshot holds copies only (no pointers into daemon state), so rendering
// can run anywhere. Thread-safety: pure functions over values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "protocol.h"
#include "shm_layout.h"

namespace epd {

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
    std::vector<int32_t> lost;
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
  std::vector<GroupRow> groups;
  std::vector<RankRow> ranks;
  std::vector<SessionRow> sessions_list;
};

std::string render_status(const StatusSnapshot& s, proto::StatusWhat what, bool json);

// JSON string escaping (quotes included).
std::string json_quote(const std::string& s);

}  // namespace epd
