// data_path.cc — the doorbell rendezvous on the control thread: reading
// (untrusted) doorbells, matching the ranks of a slot, handing complete
// rendezvous to the group's worker, completions, deadlines, and what happens
// when a rank is lost or a group is replaced.
#include <unistd.h>

#include <cstring>

#include "logging.h"
#include "server.h"

namespace epd {

namespace {

std::string rank_list(const std::vector<int32_t>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

const char* op_name(Op op) { return op == Op::kDispatch ? "dispatch" : "combine"; }

}  // namespace

Group* Server::group_by_id(uint64_t id) {
  for (auto& [n, g] : groups_)
    if (g->id() == id) return g.get();
  for (auto& g : retired_)
    if (g->id() == id) return g.get();
  return nullptr;
}

void Server::on_doorbell(uint64_t sid) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  uint64_t v;
  while (read(s.doorbell_fd, &v, sizeof v) == sizeof v) {
  }
  for (auto& m : s.members)
    if (m && m->joined) scan_doorbells(*m);
}

void Server::scan_doorbells(Member& m) {
  Group& g = *m.group;
  shm::Membership* e = shm::membership(m.shm->data(), m.index);
  for (int32_t slot = 0; slot < g.spec().slots; ++slot) {
    if (g.rendezvous(slot).in_flight) continue;  // rescanned when the job completes
    Member::SlotState& ss = m.slots[static_cast<size_t>(slot)];
    shm::SlotWords& w = e->slot[slot];
    // Each word is read once; a doorbell may only advance by one.
    const uint32_t d = shm::word(w.dispatch_req).load(std::memory_order_acquire);
    if (d != ss.dispatch_seen) {
      const uint32_t expect = ss.dispatch_seen + 1;
      ss.dispatch_seen = d;
      if (d != expect) {
        publish(*m.shm, m.index, slot, Op::kDispatch, d,
                make_status(EPD_ERR_PROTOCOL, "dispatch doorbell of slot %d jumped to %u (expected %u)", slot, d, expect));
        continue;
      }
      on_ring(m, slot, Op::kDispatch, d, 0);
      if (g.rendezvous(slot).in_flight) continue;
    }
    const uint32_t c = shm::word(w.combine_req).load(std::memory_order_acquire);
    if (c != ss.combine_seen) {
      const uint32_t expect = ss.combine_seen + 1;
      ss.combine_seen = c;
      const uint32_t mode = shm::word(w.combine_mode).load(std::memory_order_relaxed);
      if (c != expect) {
        publish(*m.shm, m.index, slot, Op::kCombine, c,
                make_status(EPD_ERR_PROTOCOL, "combine doorbell of slot %d jumped to %u (expected %u)", slot, c, expect));
        continue;
      }
      on_ring(m, slot, Op::kCombine, c, mode);
    }
  }
}

void Server::on_ring(Member& m, int32_t slot, Op op, uint32_t seq, uint32_t mode, bool staged) {
  Group& g = *m.group;
  Member::SlotState& ss = m.slots[static_cast<size_t>(slot)];
  auto refuse = [&](const Status& st) { g.notify(m, slot, op, seq, st); };
  if (shutting_down_) return refuse(make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  if (g.gpu)
    return refuse(make_status(EPD_ERR_UNSUPPORTED,
                              "group '%s' runs on %s: ring it with epd_dispatch_async / epd_combine_async, not "
                              "the host doorbells",
                              g.spec().name.c_str(), g.gpu->gpus().c_str()));
  if (g.stage && !staged)
    return refuse(make_status(EPD_ERR_UNSUPPORTED,
                              "group '%s' has GPU ranks: ring it with epd_dispatch_async / epd_combine_async, not the "
                              "host doorbells",
                              g.spec().name.c_str()));
  if (g.closed)
    return refuse(make_status(EPD_ERR_GROUP_CLOSED, "group '%s' generation %llu was replaced by a newer generation",
                              g.spec().name.c_str(), static_cast<unsigned long long>(g.spec().generation)));
  if (ss.owe_peer_lost) {
    ss.owe_peer_lost = false;
    ss.phase = Phase::kIdle;
    return refuse(Status(EPD_ERR_PEER_LOST, m.peer_lost_msg));
  }
  if (op == Op::kDispatch && ss.phase != Phase::kIdle)
    return refuse(make_status(EPD_ERR_SLOT_BUSY, "dispatch on slot %d while its previous %s is not finished", slot,
                              ss.phase == Phase::kDispatched ? "dispatch has no combine" : "operation"));
  if (op == Op::kCombine && ss.phase != Phase::kDispatched)
    return refuse(make_status(EPD_ERR_NO_DISPATCH, "combine on slot %d without a finished dispatch", slot));
  if (op == Op::kCombine && mode > EPD_WEIGHTS_ONES)
    return refuse(make_status(EPD_ERR_BAD_WEIGHT_MODE, "combine weight mode %u is not an epd_weight_mode_t", mode));
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  if (rv.rung_count == 0) {
    rv.op = op;
    rv.first_ring_ns = shm::monotonic_ns();
  }
  rv.rung[static_cast<size_t>(m.rank)] = 1;
  ++rv.rung_count;
  ss.phase = op == Op::kDispatch ? Phase::kDispatchRung : Phase::kCombineRung;
  ss.seq = seq;
  ss.mode = mode;
  try_submit(g, slot);
}

void Server::try_submit(Group& g, int32_t slot) {
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  const int32_t W = g.spec().world_size;
  if (rv.in_flight) return;
  if (!ship_if_ready(g, slot)) return;
  if (rv.rung_count != W) return;
  // Every rank rang the same op (phases guarantee it); combine modes must agree.
  std::vector<Group::Target> targets;
  uint32_t mode = 0;
  int32_t first = -1;
  for (int32_t r = 0; r < W; ++r) {
    if (!is_local(g, r)) continue;  // another node's rank: its node checks it
    Member& m = *g.members()[static_cast<size_t>(r)];
    const Member::SlotState& ss = m.slots[static_cast<size_t>(slot)];
    if (first < 0) {
      first = r;
      mode = ss.mode;
    }
    if (rv.op == Op::kCombine && ss.mode != mode) {
      const Status st = make_status(EPD_ERR_BAD_WEIGHT_MODE, "combine on slot %d: rank %d asked weight mode %u, rank %d asked %u",
                                    slot, r, ss.mode, first, mode);
      fail_pending(g, slot, st, Phase::kDispatched);
      return;
    }
    targets.push_back(Group::Target{m.shm, m.index, ss.seq, g.stage ? m.rank : -1});
  }
  for (auto& m : g.members()) {
    if (!m) continue;  // another node's rank
    Member::SlotState& ss = m->slots[static_cast<size_t>(slot)];
    ss.phase = rv.op == Op::kDispatch ? Phase::kDispatched : Phase::kIdle;
  }
  const Op op = rv.op;
  g.clear_rendezvous(slot);
  rv.in_flight = true;
  g.submit(slot, op, static_cast<epd_weight_mode_t>(mode), std::move(targets));
}

void Server::fail_pending(Group& g, int32_t slot, const Status& st, Phase reset_to) {
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  for (auto& m : g.members()) {
    if (!m || !m->joined || !rv.rung[static_cast<size_t>(m->rank)]) continue;
    Member::SlotState& ss = m->slots[static_cast<size_t>(slot)];
    g.notify(*m, slot, rv.op, ss.seq, st);
    ss.phase = rv.op == Op::kCombine && reset_to == Phase::kDispatched ? Phase::kDispatched : Phase::kIdle;
  }
  g.clear_rendezvous(slot);
}

void Server::on_stage_events() {
  uint64_t v;
  while (read(stage_fd_, &v, sizeof v) == sizeof v) {
  }
  for (auto& [name, g] : groups_) {
    if (!g->stage) continue;
    for (const GpuStage::Ring& r : g->stage->take_rings()) {
      const auto& m = g->members()[static_cast<size_t>(r.rank)];
      if (!m || !m->joined) continue;  // left since: its ring died with it
      Member::SlotState& ss = m->slots[static_cast<size_t>(r.slot)];
      const Op op = r.op == GpuStage::Op::kDispatch ? Op::kDispatch : Op::kCombine;
      on_ring(*m, r.slot, op, ss.seq + 1, r.mode, /*staged=*/true);
    }
  }
}

void Server::on_completions() {
  uint64_t v;
  while (read(completion_fd_, &v, sizeof v) == sizeof v) {
  }
  std::vector<Completion> done;
  {
    std::lock_guard<std::mutex> lk(completions_mu_);
    done.swap(completions_);
  }
  const uint64_t now_rt = static_cast<uint64_t>(shm::realtime_ns());
  for (Completion& c : done) {
    Group* g = group_by_id(c.group_id);
    if (!g) continue;
    g->rendezvous(c.slot).in_flight = false;
    if (!c.status)
      log_message(LogLevel::kWarn, LogContext{g->spec().name, -1, 0, -1},
                  std::string(op_name(c.op)) + " failed: " + c.status.to_string());
    const GroupLayout& L = g->layout();
    for (auto& m : g->members()) {
      if (!m || !m->joined) continue;
      shm::Counters& k = m->counters;
      if (c.status.is_ok()) {
        const size_t r = static_cast<size_t>(m->rank);
        if (c.op == Op::kDispatch) {
          ++k.dispatch_calls;
          if (r < c.tokens_sent.size()) {
            k.tokens_sent += static_cast<uint64_t>(c.tokens_sent[r]);
            k.rows_received += static_cast<uint64_t>(c.rows_received[r]);
            k.bytes_sent += static_cast<uint64_t>(c.tokens_sent[r]) * L.ranks[r].in_row_bytes;
            k.bytes_received += static_cast<uint64_t>(c.rows_received[r]) * L.ranks[r].recv_row_bytes;
          }
        } else {
          ++k.combine_calls;
        }
        k.last_progress_ns = now_rt;
      }
      // Mirror into the session block for the client's own use.
      std::memcpy(&shm::membership(m->shm->data(), m->index)->counters, &k, sizeof k);
    }
    if (shutting_down_) {
      fail_pending(*g, c.slot, make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"), Phase::kIdle);
      continue;
    }
    for (auto& m : g->members())
      if (m && m->joined) scan_doorbells(*m);
    apply_arrivals(*g, c.slot);
    maybe_destroy_group(g);
  }
}

void Server::on_timers(int64_t now) {
  std::vector<std::shared_ptr<Member>> expired;
  for (auto& [name, gp] : groups_) {
    Group& g = *gp;
    const int32_t W = g.spec().world_size;
    const std::vector<int32_t> missing = missing_ranks(g);
    for (auto& m : g.members()) {
      if (!m || m->joined || now < m->join_deadline_ns) continue;
      reply_join_error(*m, make_status(EPD_ERR_TIMEOUT,
                                       "group '%s': rank%s %s of world_size %d did not join within %u ms",
                                       name.c_str(), missing.size() > 1 ? "s" : "", rank_list(missing).c_str(), W,
                                       g.spec().timeout_ms));
      expired.push_back(m);
    }
    for (int32_t slot = 0; slot < g.spec().slots; ++slot) {
      Group::SlotRendezvous& rv = g.rendezvous(slot);
      if (rv.rung_count == 0 || rv.in_flight) continue;
      if (now - rv.first_ring_ns < static_cast<int64_t>(g.spec().timeout_ms) * 1000000LL) continue;
      std::vector<int32_t> late;
      for (int32_t r = 0; r < W; ++r)
        if (!rv.rung[static_cast<size_t>(r)]) late.push_back(r);
      fail_pending(g, slot,
                   make_status(EPD_ERR_TIMEOUT, "group '%s' slot %d: %s waited %u ms for rank%s %s", name.c_str(), slot,
                               op_name(rv.op), g.spec().timeout_ms, late.size() > 1 ? "s" : "", rank_list(late).c_str()),
                   Phase::kDispatched);
    }
  }
  for (auto& m : expired) remove_member(m, "join timed out");
}

void Server::remove_member(std::shared_ptr<Member> m, const std::string& reason) {
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
  if (was_joined && !g->closed && !shutting_down_) {
    auto& lost = g->lost()[static_cast<size_t>(m->rank)];
    lost.lost = true;
    lost.pid = m->pid;
    lost.session_id = m->session_id;
    lost.since_ns = shm::monotonic_ns();
    lost.reason = reason;
    const std::string msg = "group '" + g->spec().name + "': rank " + std::to_string(m->rank) + " was lost: " + reason;
    const bool left = reason.find(" left the group") != std::string::npos;
    log_message(left ? LogLevel::kInfo : LogLevel::kWarn, LogContext{g->spec().name, m->rank, m->session_id, m->pid}, msg);
    const Status st(EPD_ERR_PEER_LOST, msg);
    if (g->stage) g->stage->disarm(m->rank);  // a pending op of this rank fails below
    if (g->gpu) {
      // Every armed wait is released with PEER_LOST so no worker's stream
      // hangs; the survivors leave and join again, and the last join resets.
      const Status ab = g->gpu->abort(EPD_ERR_PEER_LOST);
      log_message(ab ? LogLevel::kInfo : LogLevel::kError, LogContext{g->spec().name, m->rank, m->session_id, m->pid},
                  ab ? "GPU streams aborted with PEER_LOST; every rank must leave and join again"
                     : "GPU streams did not drain after the abort: " + ab.message());
    }
    // Pending ops fail now; every other slot of every member fails its next op once.
    for (int32_t slot = 0; slot < g->spec().slots; ++slot) g->fail_slot(slot, st);
  } else if (!was_joined) {
    log_message(LogLevel::kInfo, LogContext{g->spec().name, m->rank, m->session_id, m->pid},
                "pending join withdrawn: " + reason);
  }
  m->group = nullptr;
  cluster_present_changed(*g);
  maybe_destroy_group(g);
}

void Server::retire_group(const std::string& name, const std::string& why) {
  auto it = groups_.find(name);
  if (it == groups_.end()) return;
  std::unique_ptr<Group> g = std::move(it->second);
  groups_.erase(it);
  g->closed = true;
  log_message(LogLevel::kInfo, LogContext{name, -1, 0, -1}, "group generation " +
              std::to_string(g->spec().generation) + " closed: " + why);
  const Status st = make_status(EPD_ERR_GROUP_CLOSED, "group '%s' generation %llu was %s", name.c_str(),
                                static_cast<unsigned long long>(g->spec().generation), why.c_str());
  for (auto& m : g->members())
    if (m && !m->joined) reply_join_error(*m, st);
  std::vector<std::shared_ptr<Member>> pending;
  for (auto& m : g->members())
    if (m && !m->joined) pending.push_back(m);
  for (int32_t slot = 0; slot < g->spec().slots; ++slot)
    if (!g->rendezvous(slot).in_flight) fail_pending(*g, slot, st, Phase::kIdle);
  Group* raw = g.get();
  retired_.push_back(std::move(g));
  for (auto& m : pending) remove_member(m, "group replaced");
  maybe_destroy_group(raw);
}

void Server::maybe_destroy_group(Group* g) {
  if (g->present() > 0 || g->in_flight() > 0 || (g->pinned && !g->closed)) return;
  for (auto it = groups_.begin(); it != groups_.end(); ++it)
    if (it->second.get() == g) {
      log_message(LogLevel::kInfo, LogContext{g->spec().name, -1, 0, -1}, "group destroyed: no members left");
      if (cluster_) cluster_->detach(g->spec().name, g->spec().generation);
      remote_seen_.erase(g->id());
      groups_.erase(it);  // joins the idle worker
      return;
    }
  for (auto it = retired_.begin(); it != retired_.end(); ++it)
    if (it->get() == g) {
      if (cluster_) cluster_->detach(g->spec().name, g->spec().generation);
      remote_seen_.erase(g->id());
      retired_.erase(it);
      return;
    }
}

}  // namespace epd
