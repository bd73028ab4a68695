// rendezvous_slots.cc — the per-slot rendezvous on the control thread: reading
// (untrusted) doorbells, matching the ranks of a slot, handing a complete
// rendezvous to the group (its backend), and completions.
#include <unistd.h>

#include <cstring>

#include "logging.h"
#include "rendezvous.h"

namespace epd {

void Rendezvous::on_doorbells(Session& s) {
  for (auto& m : s.members)
    if (m && m->joined) scan_doorbells(*m);
}

void Rendezvous::scan_doorbells(Member& m) {
  Group& g = *m.group;
  shm::Membership* e = shm::membership(m.shm->data(), m.index);
  for (int32_t slot = 0; slot < g.spec().slots; ++slot) {
    if (g.rendezvous(slot).in_flight) continue;  // rescanned when the job completes
    Member::SlotState& ss = m.slots[static_cast<size_t>(slot)];
    shm::SlotWords& w = e->slot[slot];
    // Each word is read once; a doorbell may only advance by one.
    const uint32_t d = shm::word(w.dispatch_req).load(std::memory_order_acquire);
    const uint32_t c = shm::word(w.combine_req).load(std::memory_order_acquire);
    const uint32_t mode = shm::word(w.combine_mode).load(std::memory_order_relaxed);
    struct Bell {
      Op op;
      uint32_t now;
      uint32_t& seen;
    } bells[] = {{Op::kDispatch, d, ss.dispatch_seen}, {Op::kCombine, c, ss.combine_seen}};
    for (Bell& b : bells) {
      if (b.now == b.seen) continue;
      const uint32_t expect = b.seen + 1;
      b.seen = b.now;
      if (b.now != expect) {
        publish(*m.shm, m.index, slot, b.op, b.now,
                make_status(EPD_ERR_PROTOCOL, "%s doorbell of slot %d jumped to %u (expected %u)", op_name(b.op), slot,
                            b.now, expect));
        continue;  // the other doorbell is read now: nothing may rely on a later scan
      }
      if (Status st = g.backend().accept_host_ring(); !st) {
        g.notify(m, slot, b.op, b.now, st);
        continue;
      }
      on_ring(m, slot, b.op, b.now, b.op == Op::kCombine ? mode : 0);
      if (g.rendezvous(slot).in_flight) break;
    }
  }
}

void Rendezvous::on_backend_rings() {
  uint64_t v;
  while (read(rings_fd_, &v, sizeof v) == sizeof v) {
  }
  for (auto& [name, g] : groups_) {
    for (const BackendRing& r : g->backend().take_rings()) {
      const auto& m = g->members()[static_cast<size_t>(r.rank)];
      if (!m || !m->joined) continue;  // left since: its ring died with it
      Member::SlotState& ss = m->slots[static_cast<size_t>(r.slot)];
      on_ring(*m, r.slot, r.op, ss.seq + 1, r.mode);
    }
  }
}

void Rendezvous::on_ring(Member& m, int32_t slot, Op op, uint32_t seq, uint32_t mode) {
  Group& g = *m.group;
  Member::SlotState& ss = m.slots[static_cast<size_t>(slot)];
  auto refuse = [&](const Status& st) { g.notify(m, slot, op, seq, st); };
  if (shutting_down_) return refuse(make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  if (g.closed)
    return refuse(make_status(EPD_ERR_GROUP_CLOSED, "group '%s' generation %llu was replaced by a newer generation",
                              g.spec().name.c_str(), static_cast<unsigned long long>(g.spec().generation)));
  if (ss.owed != Member::SlotState::Owed::kNone) {  // a loss before this op: see Member::SlotState::Owed
    ss.owed = Member::SlotState::Owed::kNone;
    ss.phase = Phase::kIdle;
    return refuse(Status(EPD_ERR_PEER_LOST, m.peer_lost_msg));
  }
  if (op == Op::kDispatch && ss.phase != Phase::kIdle)
    return refuse(make_status(EPD_ERR_SLOT_BUSY, "dispatch on slot %d while its previous %s is not finished", slot,
                              ss.phase == Phase::kDispatched ? "dispatch has no combine" : "operation"));
  if (op == Op::kCombine && ss.phase == Phase::kCombineRung)
    return refuse(make_status(EPD_ERR_SLOT_BUSY, "combine on slot %d while this dispatch's combine is pending", slot));
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

void Rendezvous::try_submit(Group& g, int32_t slot) {
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
      const Status st = make_status(EPD_ERR_BAD_WEIGHT_MODE,
                                    "combine on slot %d: rank %d asked weight mode %u, rank %d asked %u", slot, r,
                                    ss.mode, first, mode);
      fail_pending(g, slot, st, Phase::kDispatched);
      return;
    }
    targets.push_back(Group::Target{m.shm, m.index, ss.seq, m.rank});
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

void Rendezvous::fail_pending(Group& g, int32_t slot, const Status& st, Phase reset_to) {
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  for (auto& m : g.members()) {
    if (!m || !m->joined || !rv.rung[static_cast<size_t>(m->rank)]) continue;
    Member::SlotState& ss = m->slots[static_cast<size_t>(slot)];
    g.notify(*m, slot, rv.op, ss.seq, st);
    ss.phase = rv.op == Op::kCombine && reset_to == Phase::kDispatched ? Phase::kDispatched : Phase::kIdle;
  }
  g.clear_rendezvous(slot);
}

namespace {

// The member's counters after a completed op (the daemon's copy; mirrored
// into the session block for the client's own use).
void count(Member& m, const Completion& c, const GroupLayout& L, uint64_t now_rt) {
  shm::Counters& k = m.counters;
  if (c.status.is_ok()) {
    const size_t r = static_cast<size_t>(m.rank);
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
  std::memcpy(&shm::membership(m.shm->data(), m.index)->counters, &k, sizeof k);
}

}  // namespace

void Rendezvous::on_completions() {
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
    for (auto& m : g->members())
      if (m && m->joined) count(*m, c, g->layout(), now_rt);
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

}  // namespace epd
