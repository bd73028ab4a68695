// status_snapshot.cc — what `epctl` sees, taken on the control thread: the
// daemon's facts and sessions (Server::snapshot) and every group with its
// ranks (Rendezvous::fill_snapshot), copied into a StatusSnapshot
// (status_report.h) that is rendered elsewhere.
#include <unistd.h>

#include <algorithm>
#include <map>
#include <type_traits>

#include "logging.h"
#include "rendezvous.h"
#include "server.h"

namespace epd {

StatusSnapshot Server::snapshot() const {
  StatusSnapshot s;
  s.pid = getpid();
  s.uptime_s = static_cast<double>(shm::monotonic_ns() - started_ns_) / 1e9;
  s.version = opts_.version;
  s.executor = "host";
  s.gpu = gpu_summary_;
  s.socket_path = opts_.config.socket_path;
  s.log_target = log_target_name();
  s.sessions = static_cast<uint32_t>(sessions_.size());
  s.shutting_down = shutting_down_;
  const Limits& l = opts_.config.limits;
  s.limits.max_sessions = opts_.config.max_sessions;
  s.limits.max_sessions_per_uid = l.max_sessions_per_uid;
  s.limits.max_groups = l.max_groups;
  s.limits.max_groups_per_uid = l.max_groups_per_uid;
  s.limits.max_workspace_bytes = l.max_workspace_bytes;
  s.limits.max_workspace_bytes_per_uid = l.max_workspace_bytes_per_uid;
  rendezvous_->fill_snapshot(s);
  std::map<uint32_t, uint32_t> sessions_by_uid;  // past HELLO, as limits.max_sessions_per_uid counts
  for (const auto& [sid, ss] : sessions_)
    if (ss->hello) ++sessions_by_uid[ss->uid];
  for (auto& u : s.usage)
    if (auto it = sessions_by_uid.find(u.uid); it != sessions_by_uid.end()) {
      u.sessions = it->second;
      sessions_by_uid.erase(it);
    }
  for (const auto& [uid, n] : sessions_by_uid) {
    StatusSnapshot::UsageRow u;
    u.uid = uid;
    u.sessions = n;
    s.usage.push_back(u);
  }
  std::sort(s.usage.begin(), s.usage.end(), [](const auto& a, const auto& b) { return a.uid < b.uid; });
  const int64_t now = shm::monotonic_ns();
  for (const auto& [sid, ss] : sessions_) {
    StatusSnapshot::SessionRow row;
    row.id = sid;
    row.pid = ss->pid;
    row.uid = ss->uid;
    row.gid = ss->gid;
    row.name = ss->name;
    for (const auto& m : ss->members) row.memberships += m != nullptr;
    row.connected_s = static_cast<double>(now - ss->connected_ns) / 1e9;
    s.sessions_list.push_back(row);
  }
  return s;
}

void Rendezvous::fill_snapshot(StatusSnapshot& s) const {
  if (cluster_) s.cluster_threads = cluster_thread_rows(cluster_->pinning(), cluster_->proxy_threads());
  for (const auto& [n, g] : groups_) add_group_rows(*g, s);
  for (const auto& [n, g] : pending_) add_group_rows(*g, s);  // a newer generation being assembled
  for (const auto& g : retired_) add_group_rows(*g, s);
  s.limits.total_groups = total_.groups;
  s.limits.total_workspace_bytes = total_.workspace_bytes;
  for (const auto& [uid, u] : usage_) {
    StatusSnapshot::UsageRow row;
    row.uid = uid;
    row.groups = u.groups;
    row.workspace_bytes = u.workspace_bytes;
    s.usage.push_back(row);
  }
}

void Rendezvous::add_group_rows(const Group& g, StatusSnapshot& s) const {
  const GroupSpec& sp = g.spec();
  StatusSnapshot::GroupRow row;
  row.name = sp.name;
  row.id = g.id();
  row.generation = sp.generation;
  row.world_size = sp.world_size;
  row.joined = g.joined();
  row.joining = g.present() - g.joined();
  row.num_experts = sp.num_experts;
  row.top_k = sp.top_k;
  row.hidden = sp.hidden;
  row.dtype = dtype_name(sp.dtype);
  row.layout = layout_name(sp.layout);
  row.mode = mode_name(sp.mode);
  row.quant = quant_name(sp.dispatch_quant);
  row.max_tokens = sp.max_tokens_per_rank;
  row.slots = sp.slots;
  row.timeout_ms = sp.timeout_ms;
  row.workspace_bytes = g.workspace().size() + g.backend().device_bytes();
  row.executor = g.backend().status_text();
  if (g.pinned) {
    auto ids = [](const std::vector<uint32_t>& v) {
      std::string t;
      for (uint32_t x : v) t += (t.empty() ? "" : ",") + std::to_string(x);
      return t;
    };
    row.owner = g.allowed_uids.empty() && g.allowed_gids.empty()
                    ? "config (uid " + std::to_string(g.owner_uid) + ")"
                    : "config (uids [" + ids(g.allowed_uids) + "] gids [" + ids(g.allowed_gids) + "])";
  } else {
    row.owner = "uid " + std::to_string(g.owner_uid);
  }
  for_each_spec_field([&](const auto& field) {
    if constexpr (!kIsSpecHand<decltype(field)>) {
      const auto v = sp.*(field.member);
      const std::string text = spec_value_text(v);
      row.spec.emplace_back(field.name, std::is_enum_v<std::decay_t<decltype(v)>> ? json_quote(text) : text);
    }
  });
  for (int32_t r = 0; r < sp.world_size; ++r)
    if (g.lost()[static_cast<size_t>(r)].lost) row.lost.push_back(r);
  int32_t local = 0;  // ranks this node serves (all of them on a single node)
  for (int32_t r = 0; r < sp.world_size; ++r) local += is_local(g, r);
  row.state = g.closed ? "closed"
              : !row.lost.empty() ? "degraded"
              : row.joined == local && missing_ranks(g).empty() ? "running"
              : g.present() == 0 ? "idle"
                                 : "joining";
  s.groups.push_back(row);
  const int64_t now_rt = shm::realtime_ns();
  for (int32_t r = 0; r < sp.world_size; ++r) {
    StatusSnapshot::RankRow rr;
    rr.group = sp.name;
    rr.generation = sp.generation;
    rr.rank = r;
    const auto& m = g.members()[static_cast<size_t>(r)];
    const auto& lost = g.lost()[static_cast<size_t>(r)];
    if (m) {
      rr.state = m->joined ? "joined" : "joining";
      rr.session = m->session_id;
      rr.pid = m->pid;
      rr.uid = m->uid;
      rr.counters = m->counters;
    } else {
      rr.state = lost.lost ? (lost.left ? "left" : "lost")
                 : is_local(g, r) ? "absent"
                                  : "on node " + std::to_string(sp.placement[static_cast<size_t>(r)].node);
      rr.session = lost.session_id;
      rr.pid = lost.pid;
    }
    if (rr.counters.last_progress_ns > 0)
      rr.last_progress_age_s = static_cast<double>(now_rt - static_cast<int64_t>(rr.counters.last_progress_ns)) / 1e9;
    s.ranks.push_back(rr);
  }
}

}  // namespace epd
