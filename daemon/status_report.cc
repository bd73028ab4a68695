// status_report.cc — JSON and text rendering of the daemon snapshot for epctl.
#include "status_report.h"

#include "cluster.h"
#include "cpu_list.h"
#include "topology_view.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace epd {

std::string json_quote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

std::vector<StatusSnapshot::ClusterThreadRow> cluster_thread_rows(
    const cluster::ProxyPinning& pinning, const std::vector<cluster::ProxyThreadState>& threads) {
  std::vector<StatusSnapshot::ClusterThreadRow> rows;
  for (const cluster::ProxyThreadState& t : threads) {
    StatusSnapshot::ClusterThreadRow r;
    r.role = t.role;
    r.nic = pinning.nic;
    r.numa_node = pinning.numa_node;
    if (t.started) {
      r.tid = t.tid;
      r.pinned = t.pinned;
      // An unpinned thread may have read back its inherited affinity: that is not a pinning.
      if (t.pinned) r.cpus = t.affinity;
      r.detail = t.detail;
    } else {
      r.detail = "not started yet; pinning not known";
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

namespace {

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char b[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(b, sizeof b, f, ap);
  va_end(ap);
  return b;
}

std::string lost_list(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// A text table whose columns are as wide as their widest cell, header
// included, one space apart; numbers right-aligned, text left-aligned; the
// last column is not padded. Names and executors have no length bound, so
// fixed printf widths would push every later column out of line.
struct Column {
  const char* head;
  bool right;  // right-aligned (numbers)
};

std::string render_table(const std::vector<Column>& cols, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(cols.size());
  for (size_t c = 0; c < cols.size(); ++c) width[c] = std::strlen(cols[c].head);
  for (const auto& row : rows)
    for (size_t c = 0; c < cols.size() && c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string o;
    for (size_t c = 0; c < cols.size(); ++c) {
      const std::string& v = c < cells.size() ? cells[c] : std::string();
      const std::string pad(width[c] - std::min(width[c], v.size()), ' ');
      if (c) o += ' ';
      const bool last = c + 1 == cols.size();
      o += cols[c].right ? pad + v : (last ? v : v + pad);
    }
    return o + "\n";
  };
  std::vector<std::string> head;
  for (const Column& c : cols) head.push_back(c.head);
  std::string o = line(head);
  for (const auto& row : rows) o += line(row);
  return o;
}

std::string num(long long v) { return std::to_string(v); }
std::string unum(unsigned long long v) { return std::to_string(v); }

// Unknown values (tid 0, NUMA node -1, no NIC) are null; cpus is a list like
// "0-3,8" as in `epctl topology`'s proxies, "" when not pinned.
std::string json_cluster_threads(const StatusSnapshot& s) {
  // Concatenated, not fmt(): the detail has no length bound.
  std::string o = "[";
  for (size_t i = 0; i < s.cluster_threads.size(); ++i) {
    const auto& t = s.cluster_threads[i];
    o += std::string(i ? "," : "") + "{\"role\":" + json_quote(t.role) +
         ",\"tid\":" + (t.tid > 0 ? std::to_string(t.tid) : "null") +
         ",\"pinned\":" + (t.pinned ? "true" : "false") + ",\"cpus\":" + json_quote(format_cpu_list(t.cpus)) +
         ",\"numa_node\":" + (t.numa_node >= 0 ? std::to_string(t.numa_node) : "null") +
         ",\"nic\":" + (t.nic.empty() ? "null" : json_quote(t.nic)) + ",\"detail\":" + json_quote(t.detail) + "}";
  }
  return o + "]";
}

std::string json_limits(const StatusSnapshot& s) {
  const auto& l = s.limits;
  std::string o = fmt("{\"max_sessions\":%u,\"max_sessions_per_uid\":%u,\"max_groups\":%u,\"max_groups_per_uid\":%u,"
                      "\"max_workspace_bytes\":%llu,\"max_workspace_bytes_per_uid\":%llu,\"groups\":%u,"
                      "\"workspace_bytes\":%llu,\"per_uid\":[",
                      l.max_sessions, l.max_sessions_per_uid, l.max_groups, l.max_groups_per_uid,
                      static_cast<unsigned long long>(l.max_workspace_bytes),
                      static_cast<unsigned long long>(l.max_workspace_bytes_per_uid), l.total_groups,
                      static_cast<unsigned long long>(l.total_workspace_bytes));
  for (size_t i = 0; i < s.usage.size(); ++i) {
    const auto& u = s.usage[i];
    o += fmt("%s{\"uid\":%u,\"sessions\":%u,\"groups\":%u,\"workspace_bytes\":%llu}", i ? "," : "", u.uid,
             u.sessions, u.groups, static_cast<unsigned long long>(u.workspace_bytes));
  }
  return o + "]}";
}

// "limits: ..." then one line per uid: its use next to the per-uid limits ("-": none).
std::string text_limits(const StatusSnapshot& s) {
  const auto& l = s.limits;
  auto lim = [](unsigned long long v) { return v ? std::to_string(v) : std::string("-"); };
  std::string o = "limits: sessions " + lim(l.max_sessions) + " (per uid " + lim(l.max_sessions_per_uid) +
                  ")  groups " + std::to_string(l.total_groups) + "/" + lim(l.max_groups) + " (per uid " +
                  lim(l.max_groups_per_uid) + ")  workspace bytes " + std::to_string(l.total_workspace_bytes) + "/" +
                  lim(l.max_workspace_bytes) + " (per uid " + lim(l.max_workspace_bytes_per_uid) + ")\n";
  for (const auto& u : s.usage)
    o += "  uid " + std::to_string(u.uid) + ": sessions " + std::to_string(u.sessions) + "/" +
         lim(l.max_sessions_per_uid) + "  groups " + std::to_string(u.groups) + "/" + lim(l.max_groups_per_uid) +
         "  workspace bytes " + std::to_string(u.workspace_bytes) + "/" + lim(l.max_workspace_bytes_per_uid) + "\n";
  return o;
}

std::string json_status(const StatusSnapshot& s) {
  return fmt("{\"pid\":%d,\"uptime_s\":%.3f,\"version\":%s,\"executor\":%s,\"socket\":%s,\"log_target\":%s,"
             "\"sessions\":%u,\"groups\":%zu,\"shutting_down\":%s,\"gpu\":%s,",
             s.pid, s.uptime_s, json_quote(s.version).c_str(), json_quote(s.executor).c_str(),
             json_quote(s.socket_path).c_str(), json_quote(s.log_target).c_str(), s.sessions, s.groups.size(),
             s.shutting_down ? "true" : "false", json_quote(s.gpu).c_str()) +
         "\"limits\":" + json_limits(s) + ",\"cluster_threads\":" + json_cluster_threads(s) + "}";
}

std::string json_groups(const StatusSnapshot& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.groups.size(); ++i) {
    const auto& g = s.groups[i];
    o += fmt("%s{\"name\":%s,\"id\":%llu,\"generation\":%llu,\"state\":%s,\"world_size\":%d,\"joined\":%d,"
             "\"joining\":%d,\"lost\":[%s],\"num_experts\":%d,\"top_k\":%d,\"hidden\":%d,\"dtype\":%s,",
             i ? "," : "", json_quote(g.name).c_str(), static_cast<unsigned long long>(g.id),
             static_cast<unsigned long long>(g.generation), json_quote(g.state).c_str(), g.world_size, g.joined,
             g.joining, lost_list(g.lost).c_str(), g.num_experts, g.top_k, g.hidden, json_quote(g.dtype).c_str());
    o += fmt("\"dispatch_quant\":%s,\"layout\":%s,\"mode\":%s,\"max_tokens_per_rank\":%d,\"slots\":%d,"
             "\"timeout_ms\":%u,\"workspace_bytes\":%llu,\"executor\":%s}",
             json_quote(g.quant).c_str(), json_quote(g.layout).c_str(), json_quote(g.mode).c_str(), g.max_tokens,
             g.slots, g.timeout_ms, static_cast<unsigned long long>(g.workspace_bytes), json_quote(g.executor).c_str());
    o.pop_back();
    o += ",\"owner\":" + json_quote(g.owner) + "}";
    o.pop_back();  // the object's '}': the spec's fields follow
    o += ",\"spec\":{";
    for (size_t f = 0; f < g.spec.size(); ++f)
      o += (f ? "," : "") + json_quote(g.spec[f].first) + ":" + g.spec[f].second;
    o += "}}";
  }
  return o + "]";
}

std::string json_ranks(const StatusSnapshot& s, bool counters) {
  std::string o = "[";
  for (size_t i = 0; i < s.ranks.size(); ++i) {
    const auto& r = s.ranks[i];
    o += fmt("%s{\"group\":%s,\"generation\":%llu,\"rank\":%d,\"state\":%s,\"session\":%llu,\"pid\":%d,\"uid\":%u,"
             "\"last_progress_age_s\":%.3f",
             i ? "," : "", json_quote(r.group).c_str(), static_cast<unsigned long long>(r.generation), r.rank,
             json_quote(r.state).c_str(), static_cast<unsigned long long>(r.session), r.pid, r.uid,
             r.last_progress_age_s);
    if (counters) {
      const auto& c = r.counters;
      o += fmt(",\"dispatch_calls\":%llu,\"combine_calls\":%llu,\"tokens_sent\":%llu,\"rows_received\":%llu,"
               "\"bytes_sent\":%llu,\"bytes_received\":%llu,\"last_progress_ns\":%llu",
               static_cast<unsigned long long>(c.dispatch_calls), static_cast<unsigned long long>(c.combine_calls),
               static_cast<unsigned long long>(c.tokens_sent), static_cast<unsigned long long>(c.rows_received),
               static_cast<unsigned long long>(c.bytes_sent), static_cast<unsigned long long>(c.bytes_received),
               static_cast<unsigned long long>(c.last_progress_ns));
    }
    o += "}";
  }
  return o + "]";
}

std::string json_sessions(const StatusSnapshot& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.sessions_list.size(); ++i) {
    const auto& x = s.sessions_list[i];
    o += fmt("%s{\"session\":%llu,\"pid\":%d,\"uid\":%u,\"gid\":%u,\"name\":%s,\"memberships\":%u,"
             "\"connected_s\":%.3f}",
             i ? "," : "", static_cast<unsigned long long>(x.id), x.pid, x.uid, x.gid, json_quote(x.name).c_str(),
             x.memberships, x.connected_s);
  }
  return o + "]";
}

std::string text_sessions(const StatusSnapshot& s) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& x : s.sessions_list)
    rows.push_back({unum(x.id), num(x.pid), unum(x.uid), unum(x.gid), x.name, unum(x.memberships),
                    fmt("%.1fs", x.connected_s)});
  return render_table({{"SESSION", true}, {"PID", true}, {"UID", true}, {"GID", true}, {"CLIENT", false},
                       {"MEMBERSHIPS", true}, {"CONNECTED", false}},
                      rows);
}

std::string age(double s) { return s < 0 ? "never" : fmt("%.1fs ago", s); }

// One line per thread: role, tid, CPUs, NUMA node, NIC ("-": none / not
// known), then how the CPUs were chosen or why it is not pinned.
std::string text_cluster_threads(const StatusSnapshot& s) {
  if (s.cluster_threads.empty()) return {};
  std::string o = "cluster threads:\n";
  for (const auto& t : s.cluster_threads) {
    const std::string cpus = t.pinned && !t.cpus.empty() ? format_cpu_list(t.cpus) : "-";
    std::string line = fmt("  %-18s  tid %-7s  CPUs %-10s  NUMA %-3s  NIC %-10s  ", t.role.c_str(),
                           t.tid > 0 ? std::to_string(t.tid).c_str() : "-", cpus.c_str(),
                           t.numa_node >= 0 ? std::to_string(t.numa_node).c_str() : "-",
                           t.nic.empty() ? "-" : t.nic.c_str()) +
                       t.detail;  // no length bound, so not through fmt()
    while (!line.empty() && line.back() == ' ') line.pop_back();
    o += line + "\n";
  }
  return o;
}

std::string text_status(const StatusSnapshot& s) {
  return fmt("epd %s  pid %d  up %.1fs  executor %s  socket %s  log %s\nsessions %u  groups %zu%s\n",
             s.version.c_str(), s.pid, s.uptime_s, s.executor.c_str(), s.socket_path.c_str(), s.log_target.c_str(),
             s.sessions, s.groups.size(), s.shutting_down ? "  (shutting down)" : "") +
         text_limits(s) + "gpu: " + s.gpu + "\n" + text_cluster_threads(s);
}

std::string text_groups(const StatusSnapshot& s) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : s.groups)
    rows.push_back({g.name, unum(g.generation), g.state, fmt("%d/%d", g.joined, g.world_size), num(g.num_experts),
                    num(g.top_k), num(g.hidden), g.dtype, g.layout, g.mode, num(g.slots), num(g.max_tokens),
                    g.lost.empty() ? "-" : lost_list(g.lost), g.executor});
  return render_table({{"GROUP", false}, {"GEN", true}, {"STATE", false}, {"RANKS", true}, {"EXPERTS", true},
                       {"TOPK", true}, {"HIDDEN", true}, {"DTYPE", false}, {"LAYOUT", false}, {"MODE", false},
                       {"SLOTS", true}, {"MAXTOK", true}, {"LOST", false}, {"EXECUTOR", false}},
                      rows);
}

std::string text_ranks(const StatusSnapshot& s) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : s.ranks)
    rows.push_back({r.group, unum(r.generation), num(r.rank), r.state, unum(r.session), num(r.pid), unum(r.uid),
                    age(r.last_progress_age_s)});
  return render_table({{"GROUP", false}, {"GEN", true}, {"RANK", true}, {"STATE", false}, {"SESSION", true},
                       {"PID", true}, {"UID", true}, {"LAST PROGRESS", false}},
                      rows);
}

std::string text_counters(const StatusSnapshot& s) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : s.ranks) {
    const auto& c = r.counters;
    rows.push_back({r.group, num(r.rank), unum(c.dispatch_calls), unum(c.combine_calls), unum(c.tokens_sent),
                    unum(c.rows_received), unum(c.bytes_sent), unum(c.bytes_received), age(r.last_progress_age_s)});
  }
  return render_table({{"GROUP", false}, {"RANK", true}, {"DISPATCH", true}, {"COMBINE", true}, {"TOKENS", true},
                       {"ROWS_RECV", true}, {"BYTES_SENT", true}, {"BYTES_RECV", true}, {"LAST PROGRESS", false}},
                      rows);
}

}  // namespace

std::string render_status(const StatusSnapshot& s, proto::StatusWhat what, bool json) {
  using W = proto::StatusWhat;
  if (json) {
    switch (what) {
      case W::kStatus: return json_status(s);
      case W::kGroups: return json_groups(s);
      case W::kRanks: return json_ranks(s, false);
      case W::kCounters: return json_ranks(s, true);
      case W::kSessions: return json_sessions(s);
      case W::kTopology: return daemon_topology_json();
      case W::kAll:
        return "{\"daemon\":" + json_status(s) + ",\"groups\":" + json_groups(s) + ",\"ranks\":" + json_ranks(s, true) +
               ",\"sessions\":" + json_sessions(s) + ",\"topology\":" + daemon_topology_json() + "}";
    }
  }
  switch (what) {
    case W::kStatus: return text_status(s);
    case W::kGroups: return text_groups(s);
    case W::kRanks: return text_ranks(s);
    case W::kCounters: return text_counters(s);
    case W::kSessions: return text_sessions(s);
    case W::kTopology: return daemon_topology_text();
    case W::kAll:
      return text_status(s) + "\n" + text_groups(s) + "\n" + text_ranks(s) + "\n" + text_counters(s) + "\n" +
             text_sessions(s) + "\n" + daemon_topology_text();
  }
  return {};
}

}  // namespace epd
