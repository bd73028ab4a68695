// rendezvous.cc — the groups' lifecycle: creation (config and joins), joins
// completing, members leaving or lost, generations replaced, deadlines and
// shutdown. The slot rendezvous is in rendezvous_slots.cc, what crosses nodes
// in rendezvous_cluster.cc.
#include "rendezvous.h"

#include <grp.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gpu_group.h"
#include "logging.h"

namespace epd {

namespace {

std::string rank_list(const std::vector<int32_t>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

void signal_eventfd(int fd) {
  const uint64_t one = 1;
  if (write(fd, &one, sizeof one) < 0) {
    // eventfd counter saturation is impossible at this rate.
  }
}

}  // namespace

Result<std::unique_ptr<Rendezvous>> Rendezvous::create(const DaemonConfig& config, ThreadPool* pool, SessionSink& sink) {
  std::unique_ptr<Rendezvous> r(new Rendezvous(config, pool, sink));
  EPD_RETURN_IF_ERROR(r->init());
  return r;
}

Status Rendezvous::init() {
  completion_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  rings_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (completion_fd_ < 0 || rings_fd_ < 0) return errno_status("eventfd", errno);
  daemon_uid_ = static_cast<uint32_t>(geteuid());
  if (!config_.admin_group.empty()) {
    struct group grp{}, *found = nullptr;
    std::vector<char> buf(16384);
    const int err = getgrnam_r(config_.admin_group.c_str(), &grp, buf.data(), buf.size(), &found);
    if (err != 0 || !found)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "server.admin_group = '%s': %s", config_.admin_group.c_str(),
                         err ? std::strerror(err) : "no such group");
    admin_gid_ = found->gr_gid;
  }
  EPD_RETURN_IF_ERROR(init_cluster());
  // Groups declared in the config exist (with their memory) before any worker joins.
  for (GroupSpec spec : config_.groups) {
    spec.resolve_timeout(config_.join_timeout_ms);
    if (Status st = spec.validate(); !st)
      return make_status(st.code(), "config group '%s': %s", spec.name.c_str(), st.message().c_str());
    if (groups_.count(spec.name))
      return make_status(EPD_ERR_INVALID_SPEC, "config declares group '%s' twice", spec.name.c_str());
    auto g = create_group(spec, nullptr, false);
    if (!g) return make_status(g.status().code(), "config group '%s': %s", spec.name.c_str(), g.status().message().c_str());
    g.value()->pinned = true;
    if (auto a = config_.group_access.find(spec.name); a != config_.group_access.end()) {
      g.value()->allowed_uids = a->second.uids;
      g.value()->allowed_gids = a->second.gids;
    }
  }
  return Status::ok();
}

Rendezvous::~Rendezvous() {
  pending_.clear();
  groups_.clear();
  retired_.clear();
  cluster_.reset();
  for (int fd : {completion_fd_, rings_fd_})
    if (fd >= 0) close(fd);
}

Result<Group*> Rendezvous::create_group(const GroupSpec& spec, const Session* creator, bool pending) {
  // Quotas are checked on the layout's bytes before anything is allocated.
  const GroupLayout layout = GroupLayout::compute(spec);
  if (creator) EPD_RETURN_IF_ERROR(check_quota(spec.name, creator->uid, layout.total_bytes));
  const uint64_t gid = next_group_id_++;
  BackendEnv env;
  env.node_id = static_cast<int32_t>(config_.node_id);
  const int rings = rings_fd_;
  env.wake = [rings] { signal_eventfd(rings); };
  const int done = completion_fd_;
  auto g = Group::create(gid, spec, env, pool_, [this, done](Completion c) {
    {
      std::lock_guard<std::mutex> lk(completions_mu_);
      completions_.push_back(std::move(c));
    }
    signal_eventfd(done);
  });
  const LogContext ctx{spec.name, -1, 0, -1};
  if (!g) {
    log_message(LogLevel::kWarn, ctx, "group refused: " + g.status().message());
    return g.status();
  }
  g.value()->created_ns = shm::monotonic_ns();
  Group* raw = g.value().get();
  if (Status st = attach_cluster(*raw); !st) return st;
  raw->owner_uid = creator ? creator->uid : daemon_uid_;
  raw->charged_bytes = raw->workspace().size() + raw->backend().device_bytes();
  raw->charged = true;
  if (creator) raw->charged_uid = creator->uid;
  total_.groups += 1;
  total_.workspace_bytes += raw->charged_bytes;
  if (creator) {
    Usage& u = usage_[creator->uid];
    u.groups += 1;
    u.workspace_bytes += raw->charged_bytes;
  }
  (pending ? pending_ : groups_).emplace(spec.name, std::move(g.value()));
  log_message(LogLevel::kInfo, ctx,
              std::string(pending ? "next generation created (the running one stays until it is complete)"
                                  : "group created") +
                  ": generation " + std::to_string(spec.generation) + ", world_size " +
                  std::to_string(spec.world_size) + ", " + raw->backend().kind() + " backend (" +
                  raw->backend().created_line() + "), host workspace " + std::to_string(raw->workspace().size()) +
                  " bytes");
  return raw;
}

Group* Rendezvous::group_by_id(uint64_t id) {
  for (auto* map : {&groups_, &pending_})
    for (auto& [n, g] : *map)
      if (g->id() == id) return g.get();
  for (auto& g : retired_)
    if (g->id() == id) return g.get();
  return nullptr;
}

Status Rendezvous::join(Session& s, uint32_t index, GroupSpec spec, uint64_t rid) {
  EPD_RETURN_IF_ERROR(check_placement(spec));
  if (auto devices = gpu_devices_of(spec); !devices) return devices.status();
  auto target = group_for_join(s, spec);
  if (!target) return target.status();
  Group& g = **target;
  if (Status st = g.spec().compare(spec); !st)
    return make_status(st.code(), "group '%s': %s", spec.name.c_str(), st.message().c_str());
  if (const auto& holder = g.members()[static_cast<size_t>(spec.rank)])
    return make_status(EPD_ERR_DUPLICATE_RANK, "group '%s': rank %d is already %s by session %llu (pid %d)",
                       spec.name.c_str(), spec.rank, holder->joined ? "joined" : "joining",
                       static_cast<unsigned long long>(holder->session_id), holder->pid);
  auto m = std::make_shared<Member>();
  m->session = &s;
  m->shm = s.shm;
  m->session_id = s.id;
  m->pid = s.pid;
  m->uid = s.uid;
  m->group = &g;
  m->rank = spec.rank;
  m->index = index;
  m->join_request = rid;
  m->join_deadline_ns = shm::monotonic_ns() + static_cast<int64_t>(spec.timeout_ms) * 1000000LL;
  s.members[index] = m;
  g.members()[static_cast<size_t>(spec.rank)] = m;
  cluster_present_changed(g);
  maybe_complete_joins(g);
  return Status::ok();
}

// Which generation a join goes to. A newer generation than the live one is
// assembled beside it (pending_) while the live one runs (has joined ranks),
// and replaces it only once complete (promote_if_complete): one mis-launched
// process cannot stop a running job. A live generation that runs nothing (a
// declared group without members, a group still forming) is retired at once.
Result<Group*> Rendezvous::group_for_join(const Session& s, const GroupSpec& spec) {
  auto live_it = groups_.find(spec.name);
  auto next_it = pending_.find(spec.name);
  Group* live = live_it != groups_.end() ? live_it->second.get() : nullptr;
  Group* next = next_it != pending_.end() ? next_it->second.get() : nullptr;
  if (!live) return create_group(spec, &s, false);
  for (Group* g : {live, next})
    if (g && !may_use(*g, s)) return not_owner(*g, s, "join");
  const uint64_t gen = spec.generation;
  if (gen == live->spec().generation) return live;
  if (next && gen == next->spec().generation) return next;
  const uint64_t newest = next ? next->spec().generation : live->spec().generation;
  if (gen < newest)
    return make_status(EPD_ERR_STALE_GENERATION, "group '%s': generation %llu is older than the group's %llu%s",
                       spec.name.c_str(), static_cast<unsigned long long>(gen),
                       static_cast<unsigned long long>(newest), next ? " (being assembled)" : "");
  if (live->pinned && !s.admin)
    return make_status(EPD_ERR_NOT_OWNER,
                       "group '%s' is declared in the config: uid %u may not retire its generation %llu "
                       "(only root%s%s may)",
                       spec.name.c_str(), s.uid, static_cast<unsigned long long>(live->spec().generation),
                       config_.admin_group.empty() ? "" : " or members of admin group ", config_.admin_group.c_str());
  const std::string by = " (by uid " + std::to_string(s.uid) + ")";
  if (next) retire_pending(spec.name, "replaced by generation " + std::to_string(gen) + by);
  const Access heir = access_of(*live);  // what a declared group's next generation keeps
  if (live->joined() > 0) {
    auto g = create_group(spec, &s, true);
    if (g) inherit(heir, **g, false);  // pinned once it replaces the live one
    return g;
  }
  retire_group(spec.name, "replaced by generation " + std::to_string(gen) + by);
  auto g = create_group(spec, &s, false);
  if (g) inherit(heir, **g, true);
  return g;
}

Rendezvous::Access Rendezvous::access_of(const Group& g) {
  return Access{g.pinned, g.owner_uid, g.allowed_uids, g.allowed_gids};
}

void Rendezvous::inherit(const Access& a, Group& to, bool pin) {
  if (!a.pinned) return;  // a group a join created belongs to its creator
  to.pinned = pin;
  to.owner_uid = a.owner_uid;
  to.allowed_uids = a.uids;
  to.allowed_gids = a.gids;
}

void Rendezvous::promote_if_complete(Group& g) {
  auto it = pending_.find(g.spec().name);
  if (it == pending_.end() || it->second.get() != &g || g.joined() == 0 || g.joined() != g.present()) return;
  std::unique_ptr<Group> next = std::move(it->second);
  pending_.erase(it);
  const std::string name = g.spec().name;
  if (auto live = groups_.find(name); live != groups_.end()) {
    inherit(access_of(*live->second), g, true);
    retire_group(name, "replaced by generation " + std::to_string(g.spec().generation) + ", now complete");
  }
  groups_.emplace(name, std::move(next));
}

void Rendezvous::retire_pending(const std::string& name, const std::string& why) {
  auto it = pending_.find(name);
  if (it == pending_.end()) return;
  std::unique_ptr<Group> g = std::move(it->second);
  pending_.erase(it);
  retire(std::move(g), why);
}

void Rendezvous::complete_join(Member& m) {
  Group& g = *m.group;
  auto ex = g.backend().export_rank(m.rank, g.workspace());
  if (!ex) return reply_join_error(m, ex.status());  // stays pending; its join deadline removes it
  shm::Membership* e = shm::membership(m.shm->data(), m.index);
  std::memset(static_cast<void*>(e), 0, sizeof *e);
  e->rank = m.rank;
  e->group_id = g.id();
  shm::word(e->active).store(1, std::memory_order_release);
  m.joined = true;
  m.joined_at_ns = shm::monotonic_ns();
  m.slots = {};
  auto& lost = g.lost()[static_cast<size_t>(m.rank)];
  const bool rejoin = lost.lost;
  lost = Group::LostRank{};
  if (rejoin) forgive_if_whole(g);
  log_message(LogLevel::kInfo, LogContext{g.spec().name, m.rank, m.session_id, m.pid},
              rejoin ? "rank re-joined" : "rank joined");
  proto::JoinReply r;
  r.member_index = m.index;
  r.group_id = g.id();
  r.generation = g.spec().generation;
  r.workspace_bytes = ex->workspace_bytes;  // what the backend exports: a memfd, or a GPU workspace
  r.gpu_device = ex->gpu_device;
  r.gpu_mapped_bytes = ex->gpu_mapped_bytes;
  if (m.session) sink_.send(*m.session, proto::encode(r, m.join_request), {ex->fd});
  else close(ex->fd);
}

void Rendezvous::forgive_if_whole(Group& g) {
  for (const Group::LostRank& l : g.lost())
    if (l.lost) return;
  if (missing_ranks(g).empty()) g.forgive_idle_slots();
}

void Rendezvous::reply_join_error(Member& m, const Status& st) {
  if (!m.session) return;
  proto::JoinReply r;
  r.status = st.code();
  r.message = st.message();
  sink_.send(*m.session, proto::encode(r, m.join_request), {});
}

void Rendezvous::refuse_pending_joins(Group& g, const Status& st, LogLevel level, const std::string& log_line) {
  std::vector<std::shared_ptr<Member>> refused;
  for (auto& m : g.members())
    if (m && !m->joined) {
      reply_join_error(*m, st);
      refused.push_back(m);
    }
  log_message(level, LogContext{g.spec().name, -1, 0, -1}, log_line);
  for (auto& m : refused) remove_member(m, log_line);
}

void Rendezvous::remove_member(std::shared_ptr<Member> m, const std::string& reason) {
  Group* g = m->group;
  if (m->session) {
    m->session->members[m->index] = nullptr;
    shm::word(shm::membership(m->shm->data(), m->index)->active).store(0);
  }
  m->session = nullptr;
  if (!g) return;
  auto& slot_ref = g->members()[static_cast<size_t>(m->rank)];
  if (slot_ref == m) slot_ref = nullptr;
  const bool was_joined = m->joined;
  m->joined = false;
  const LogContext ctx{g->spec().name, m->rank, m->session_id, m->pid};
  if (was_joined && !g->closed && !shutting_down_) {
    auto& lost = g->lost()[static_cast<size_t>(m->rank)];
    lost.lost = true;
    lost.pid = m->pid;
    lost.session_id = m->session_id;
    lost.since_ns = shm::monotonic_ns();
    lost.reason = reason;
    // A rank that left (LEAVE) is gone as surely as a lost one for the
    // others' pending ops, but it is not called lost in the log or epctl.
    lost.left = reason.find(" left the group") != std::string::npos;
    const std::string msg = "group '" + g->spec().name + "': " +
                            (lost.left ? reason : "rank " + std::to_string(m->rank) + " was lost: " + reason);
    log_message(lost.left ? LogLevel::kInfo : LogLevel::kWarn, ctx, msg);
    g->backend().rank_gone(m->rank, ctx);
    // Pending ops fail now; every other slot of every member fails its next op once.
    const Status st(EPD_ERR_PEER_LOST, msg);
    for (int32_t slot = 0; slot < g->spec().slots; ++slot) g->fail_slot(slot, st);
  } else if (!was_joined) {
    log_message(LogLevel::kInfo, ctx, "pending join withdrawn: " + reason);
  }
  m->group = nullptr;
  cluster_present_changed(*g);
  maybe_destroy_group(g);
}

void Rendezvous::retire_group(const std::string& name, const std::string& why) {
  auto it = groups_.find(name);
  if (it == groups_.end()) return;
  std::unique_ptr<Group> g = std::move(it->second);
  groups_.erase(it);
  retire(std::move(g), why);
}

void Rendezvous::retire(std::unique_ptr<Group> g, const std::string& why) {
  const std::string name = g->spec().name;
  g->closed = true;
  log_message(LogLevel::kInfo, LogContext{name, -1, 0, -1},
              "group generation " + std::to_string(g->spec().generation) + " closed: " + why);
  const Status st = make_status(EPD_ERR_GROUP_CLOSED, "group '%s' generation %llu was %s", name.c_str(),
                                static_cast<unsigned long long>(g->spec().generation), why.c_str());
  std::vector<std::shared_ptr<Member>> pending;
  for (auto& m : g->members())
    if (m && !m->joined) {
      reply_join_error(*m, st);
      pending.push_back(m);
    }
  for (int32_t slot = 0; slot < g->spec().slots; ++slot)
    if (!g->rendezvous(slot).in_flight) fail_pending(*g, slot, st, Phase::kIdle);
  Group* raw = g.get();
  // The pending members go first, while the group is in no list: the last
  // one's maybe_destroy_group then finds nothing to free, and the group is
  // freed (or kept for its joined members) only by the call below. Listed
  // first, it was freed inside the loop and read afterwards (a use after free
  // found by the whole-tree libFuzzer build of epd_fuzz_requests).
  for (auto& m : pending) remove_member(m, "group replaced");
  retired_.push_back(std::move(g));
  maybe_destroy_group(raw);
}

void Rendezvous::maybe_destroy_group(Group* g) {
  if (g->present() > 0 || g->in_flight() > 0 || (g->pinned && !g->closed)) return;
  auto forget = [&] {
    if (cluster_) cluster_->detach(g->spec().name, g->spec().generation);
    remote_seen_.erase(g->id());
    release_quota(*g);
  };
  for (auto it = groups_.begin(); it != groups_.end(); ++it)
    if (it->second.get() == g) {
      log_message(LogLevel::kInfo, LogContext{g->spec().name, -1, 0, -1}, "group destroyed: no members left");
      forget();
      const std::string name = it->first;
      groups_.erase(it);  // joins the idle worker
      // A newer generation being assembled becomes the live one: nothing runs to protect.
      if (auto next = pending_.find(name); next != pending_.end()) {
        groups_.emplace(name, std::move(next->second));
        pending_.erase(next);
      }
      return;
    }
  for (auto it = pending_.begin(); it != pending_.end(); ++it)
    if (it->second.get() == g) {
      log_message(LogLevel::kInfo, LogContext{g->spec().name, -1, 0, -1},
                  "generation " + std::to_string(g->spec().generation) + " destroyed before it was complete");
      forget();
      pending_.erase(it);
      return;
    }
  for (auto it = retired_.begin(); it != retired_.end(); ++it)
    if (it->get() == g) {
      forget();
      retired_.erase(it);
      return;
    }
}

// ---- owners and quotas -------------------------------------------------------------------
void Rendezvous::resolve_credentials(Session& s) const {
  s.groups.assign(1, s.gid);
  struct passwd pw{}, *found = nullptr;
  std::vector<char> buf(16384);
  if (getpwuid_r(static_cast<uid_t>(s.uid), &pw, buf.data(), buf.size(), &found) == 0 && found) {
    int n = 64;
    std::vector<gid_t> list(static_cast<size_t>(n));
    if (getgrouplist(found->pw_name, static_cast<gid_t>(s.gid), list.data(), &n) < 0 && n > 64) {
      list.resize(static_cast<size_t>(n));
      if (getgrouplist(found->pw_name, static_cast<gid_t>(s.gid), list.data(), &n) < 0) n = 0;
    }
    for (int i = 0; i < n && i < static_cast<int>(list.size()); ++i)
      if (list[static_cast<size_t>(i)] != s.gid) s.groups.push_back(list[static_cast<size_t>(i)]);
  }
  s.admin = s.uid == 0;
  if (admin_gid_ >= 0)
    for (uint32_t g : s.groups) s.admin = s.admin || static_cast<int64_t>(g) == admin_gid_;
}

bool Rendezvous::may_use(const Group& g, const Session& s) const {
  if (s.admin) return true;
  if (g.allowed_uids.empty() && g.allowed_gids.empty()) return s.uid == g.owner_uid;
  if (std::find(g.allowed_uids.begin(), g.allowed_uids.end(), s.uid) != g.allowed_uids.end()) return true;
  for (uint32_t gid : s.groups)
    if (std::find(g.allowed_gids.begin(), g.allowed_gids.end(), gid) != g.allowed_gids.end()) return true;
  return false;
}

bool Rendezvous::may_see_group(uint64_t group_id, const Session& s) const {
  for (const auto* map : {&groups_, &pending_})
    for (const auto& [n, g] : *map)
      if (g->id() == group_id) return may_use(*g, s);
  for (const auto& g : retired_)
    if (g->id() == group_id) return may_use(*g, s);
  return false;
}

Status Rendezvous::not_owner(const Group& g, const Session& s, const char* what) const {
  auto ids = [](const std::vector<uint32_t>& v) {
    std::string t;
    for (uint32_t x : v) t += (t.empty() ? "" : ",") + std::to_string(x);
    return t;
  };
  std::string whose = !g.allowed_uids.empty() || !g.allowed_gids.empty()
                          ? "is declared in the config for uids [" + ids(g.allowed_uids) + "] and gids [" +
                                ids(g.allowed_gids) + "]"
                          : g.pinned ? "is declared in the config for uid " + std::to_string(g.owner_uid) +
                                           " (the daemon's own)"
                                     : "belongs to uid " + std::to_string(g.owner_uid);
  const std::string admins =
      config_.admin_group.empty() ? "root" : "root or admin group '" + config_.admin_group + "'";
  log_message(LogLevel::kWarn, LogContext{g.spec().name, -1, s.id, s.pid},
              "refused " + std::string(what) + " by uid " + std::to_string(s.uid) + ": the group " + whose);
  return make_status(EPD_ERR_NOT_OWNER, "group '%s' %s; uid %u may not %s it (only its owner or %s)",
                     g.spec().name.c_str(), whose.c_str(), s.uid, what, admins.c_str());
}

Status Rendezvous::check_quota(const std::string& name, uint32_t uid, uint64_t bytes) const {
  const Limits& l = config_.limits;
  Usage u;
  if (auto it = usage_.find(uid); it != usage_.end()) u = it->second;
  auto ull = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  if (l.max_groups_per_uid && u.groups >= l.max_groups_per_uid)
    return make_status(EPD_ERR_QUOTA_EXCEEDED,
                       "limits.max_groups_per_uid = %u: uid %u already holds %u groups, so group '%s' is refused",
                       l.max_groups_per_uid, uid, u.groups, name.c_str());
  if (l.max_groups && total_.groups >= l.max_groups)
    return make_status(EPD_ERR_QUOTA_EXCEEDED,
                       "limits.max_groups = %u: %u groups exist, so group '%s' of uid %u is refused", l.max_groups,
                       total_.groups, name.c_str(), uid);
  // bytes <= EPD_MAX_GROUP_WORKSPACE_BYTES (validated) and the sums stay below the limits: no wrap.
  const uint64_t uid_room =
      l.max_workspace_bytes_per_uid - std::min(u.workspace_bytes, l.max_workspace_bytes_per_uid);
  const uint64_t room = l.max_workspace_bytes - std::min(total_.workspace_bytes, l.max_workspace_bytes);
  if (l.max_workspace_bytes_per_uid && bytes > uid_room)
    return make_status(EPD_ERR_QUOTA_EXCEEDED,
                       "limits.max_workspace_bytes_per_uid = %llu: uid %u holds %llu bytes and group '%s' needs %llu "
                       "more",
                       ull(l.max_workspace_bytes_per_uid), uid, ull(u.workspace_bytes), name.c_str(), ull(bytes));
  if (l.max_workspace_bytes && bytes > room)
    return make_status(EPD_ERR_QUOTA_EXCEEDED,
                       "limits.max_workspace_bytes = %llu: the daemon holds %llu bytes and group '%s' of uid %u needs "
                       "%llu more",
                       ull(l.max_workspace_bytes), ull(total_.workspace_bytes), name.c_str(), uid, ull(bytes));
  return Status::ok();
}

void Rendezvous::release_quota(Group& g) {
  if (!g.charged) return;
  g.charged = false;
  total_.groups -= std::min<uint32_t>(total_.groups, 1);
  total_.workspace_bytes -= std::min(total_.workspace_bytes, g.charged_bytes);
  if (!g.charged_uid) return;
  auto it = usage_.find(*g.charged_uid);
  if (it == usage_.end()) return;
  it->second.groups -= std::min<uint32_t>(it->second.groups, 1);
  it->second.workspace_bytes -= std::min(it->second.workspace_bytes, g.charged_bytes);
  if (it->second.groups == 0) usage_.erase(it);
}

// ---- deadlines and shutdown --------------------------------------------------------------
void Rendezvous::expire_joins(Group& g, int64_t now, std::vector<std::shared_ptr<Member>>& expired) {
  const std::vector<int32_t> missing = missing_ranks(g);
  for (auto& m : g.members()) {
    if (!m || m->joined || now < m->join_deadline_ns) continue;
    reply_join_error(*m, make_status(EPD_ERR_TIMEOUT, "group '%s': rank%s %s of world_size %d did not join within %u ms",
                                     g.spec().name.c_str(), missing.size() > 1 ? "s" : "", rank_list(missing).c_str(),
                                     g.spec().world_size, g.spec().timeout_ms));
    expired.push_back(m);
  }
}

void Rendezvous::expire_slots(Group& g, int64_t now) {
  for (int32_t slot = 0; slot < g.spec().slots; ++slot) {
    Group::SlotRendezvous& rv = g.rendezvous(slot);
    if (rv.rung_count == 0 || rv.in_flight) continue;
    if (now - rv.first_ring_ns < static_cast<int64_t>(g.spec().timeout_ms) * 1000000LL) continue;
    std::vector<int32_t> late;
    for (int32_t r = 0; r < g.spec().world_size; ++r)
      if (!rv.rung[static_cast<size_t>(r)]) late.push_back(r);
    fail_pending(g, slot,
                 make_status(EPD_ERR_TIMEOUT, "group '%s' slot %d: %s waited %u ms for rank%s %s", g.spec().name.c_str(),
                             slot, op_name(rv.op), g.spec().timeout_ms, late.size() > 1 ? "s" : "",
                             rank_list(late).c_str()),
                 Phase::kDispatched);
  }
}

void Rendezvous::on_timers(int64_t now) {
  std::vector<std::shared_ptr<Member>> expired;
  for (auto& [name, g] : groups_) {
    expire_joins(*g, now, expired);
    expire_slots(*g, now);
  }
  for (auto& [name, g] : pending_) expire_joins(*g, now, expired);
  for (auto& m : expired) remove_member(m, "join timed out");
}

int64_t Rendezvous::next_deadline_ns(int64_t limit) const {
  int64_t next = limit;
  for (const auto& [n, gp] : pending_)
    for (const auto& m : gp->members())
      if (m && !m->joined) next = std::min(next, m->join_deadline_ns);
  for (const auto& [n, gp] : groups_) {
    Group& g = *gp;
    for (const auto& m : g.members())
      if (m && !m->joined) next = std::min(next, m->join_deadline_ns);
    for (int32_t s = 0; s < g.spec().slots; ++s) {
      const auto& rv = g.rendezvous(s);
      if (rv.rung_count > 0 && !rv.in_flight)
        next = std::min<int64_t>(next, rv.first_ring_ns + static_cast<int64_t>(g.spec().timeout_ms) * 1000000LL);
    }
  }
  return next;
}

void Rendezvous::begin_shutdown(const Status& st) {
  shutting_down_ = true;
  auto drain = [&](Group& g) {
    for (auto& m : g.members())
      if (m && !m->joined) reply_join_error(*m, st);
    for (int32_t slot = 0; slot < g.spec().slots; ++slot)
      if (!g.rendezvous(slot).in_flight) fail_pending(g, slot, st, Phase::kIdle);
  };
  for (auto& [n, g] : groups_) drain(*g);
  for (auto& [n, g] : pending_) drain(*g);
  for (auto& g : retired_) drain(*g);
}

int32_t Rendezvous::busy() const {
  int32_t busy = 0;
  for (const auto& [name, g] : groups_) busy += g->in_flight();
  for (const auto& g : retired_) busy += g->in_flight();
  return busy;
}

int32_t Rendezvous::ranks_joined() const {
  int32_t ranks = 0;
  for (const auto& [name, g] : groups_) ranks += g->joined();
  return ranks;
}

}  // namespace epd
