// group.cc — group workspace, rendezvous bookkeeping and the worker thread.
#include "group.h"

#include <cstdlib>
#include <cstring>

namespace epd {

std::vector<uint64_t> rank_offsets(const GroupLayout& layout) {
  std::vector<uint64_t> off;
  uint64_t at = 0;
  for (const RankLayout& r : layout.ranks) {
    off.push_back(at);
    at += r.bytes;
  }
  return off;
}

Result<std::unique_ptr<Group>> Group::create(uint64_t id, const GroupSpec& spec, const BackendEnv& env,
                                             ThreadPool* pool, CompletionSink sink) {
  auto backend = make_backend(spec, env);
  if (!backend) return backend.status();
  const GroupLayout layout = GroupLayout::compute(spec);
  if (layout.overflowed)  // validate() refuses such specs first; never size a region from a wrapped total
    return make_status(EPD_ERR_INVALID_SPEC, "group '%s': workspace size overflows 64 bits", spec.name.c_str());
  const std::string name = "epd-ws-" + spec.name;
  auto ws = SharedRegion::create(name.c_str(), backend.value()->host_workspace_bytes(layout));
  if (!ws) return ws.status();
  std::unique_ptr<Group> g(new Group(id, spec, std::move(backend.value()), std::move(ws.value()), pool, std::move(sink)));
  std::vector<uint8_t*> bases;
  if (g->workspace_->size() >= layout.total_bytes)
    for (uint64_t off : g->offsets_) bases.push_back(g->workspace_->data() + off);
  EPD_RETURN_IF_ERROR(g->backend_->start(bases));
  return g;
}

Group::Group(uint64_t id, GroupSpec spec, std::unique_ptr<GroupBackend> backend, std::shared_ptr<SharedRegion> ws,
             ThreadPool* pool, CompletionSink sink)
    : id_(id), spec_(std::move(spec)), layout_(GroupLayout::compute(spec_)), workspace_(std::move(ws)),
      offsets_(rank_offsets(layout_)), backend_(std::move(backend)), sink_(std::move(sink)) {
  if (backend_->runs_host_executor()) {
    std::vector<uint8_t*> bases;
    for (uint64_t off : offsets_) bases.push_back(workspace_->data() + off);
    executor_ = std::make_unique<HostExecutor>(spec_, bases, pool);
  }
  members_.resize(static_cast<size_t>(spec_.world_size));
  lost_.resize(static_cast<size_t>(spec_.world_size));
  slots_.resize(static_cast<size_t>(spec_.slots));
  for (auto& s : slots_) s.rung.assign(static_cast<size_t>(spec_.world_size), 0);
  const char* spin = std::getenv("EPD_WORKER_SPIN_US");
  spin_ns_ = (spin && *spin ? std::atoll(spin) : 0) * 1000;
  worker_ = std::thread([this] { worker_loop(); });
}

Group::~Group() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

int32_t Group::present() const {
  int32_t n = 0;
  for (const auto& m : members_) n += m != nullptr;
  return n;
}

int32_t Group::joined() const {
  int32_t n = 0;
  for (const auto& m : members_) n += m != nullptr && m->joined;
  return n;
}

void Group::fail_slot(int32_t slot, const Status& st) {
  SlotRendezvous& rv = rendezvous(slot);
  for (auto& p : members_) {
    if (!p || !p->joined) continue;
    Member::SlotState& ss = p->slots[static_cast<size_t>(slot)];
    using Owed = Member::SlotState::Owed;
    if (ss.owed == Owed::kNone) p->peer_lost_msg = st.message();  // an owed report keeps its first cause
    if (!rv.in_flight && rv.rung[static_cast<size_t>(p->rank)]) {
      notify(*p, slot, rv.op, ss.seq, st);
      ss.owed = Owed::kNone;
    } else {
      // The phase before the reset says whether a pair is open: kDispatched
      // (its dispatch done or running), else idle (a running combine already
      // set it idle at submit: that pair completes).
      const bool open = ss.phase != Phase::kIdle || ss.owed == Owed::kNextOp;
      ss.owed = open ? Owed::kNextOp : Owed::kUntilWhole;
    }
    ss.phase = Phase::kIdle;
  }
  if (!rv.in_flight) clear_rendezvous(slot);
}

void Group::forgive_idle_slots() {
  for (auto& p : members_) {
    if (!p || !p->joined) continue;
    for (Member::SlotState& ss : p->slots)
      if (ss.owed == Member::SlotState::Owed::kUntilWhole) ss.owed = Member::SlotState::Owed::kNone;
  }
}

void Group::clear_rendezvous(int32_t slot) {
  SlotRendezvous& s = slots_[static_cast<size_t>(slot)];
  s.op = Op::kNone;
  std::fill(s.rung.begin(), s.rung.end(), 0);
  s.rung_count = 0;
  s.first_ring_ns = 0;
  s.shipped = false;
}

int32_t Group::in_flight() const {
  int32_t n = 0;
  for (const auto& s : slots_) n += s.in_flight;
  return n;
}

void Group::submit(int32_t slot, Op op, epd_weight_mode_t mode, std::vector<Target> targets) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.push_back(Job{slot, op, mode, std::move(targets)});
    queued_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_one();
}

void Group::worker_loop() {
  for (;;) {
    Job job;
    if (spin_ns_ > 0) {
      const int64_t until = shm::monotonic_ns() + spin_ns_;
      while (queued_.load(std::memory_order_acquire) == 0 && shm::monotonic_ns() < until) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
    }
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_ and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    try {
      run_job(job);
    } catch (...) {
      // Only allocation can throw here; tell the ranks instead of leaving them waiting.
      const Status st = make_status(EPD_ERR_NO_MEMORY, "daemon out of memory while finishing slot %d", job.slot);
      for (Target& t : job.targets) backend_->finish(t, job.slot, job.op, st, false);
      Completion c;
      c.group_id = id_;
      c.slot = job.slot;
      c.op = job.op;
      c.status = st;
      sink_(std::move(c));
    }
  }
}

void Group::run_job(Job& job) {
  Completion c;
  c.group_id = id_;
  c.slot = job.slot;
  c.op = job.op;
  // The executor must not throw; anything thrown is a bug reported as INTERNAL
  // rather than taking the daemon down.
  try {
    if (!executor_)
      c.status = make_status(EPD_ERR_INTERNAL, "group '%s' (%s backend) runs no host executor", spec_.name.c_str(),
                             backend_->kind());
    else
      c.status = job.op == Op::kDispatch ? executor_->dispatch(job.slot) : executor_->combine(job.slot, job.mode);
  } catch (const std::exception& e) {
    c.status = make_status(EPD_ERR_INTERNAL, "executor threw: %s", e.what());
  }
  if (c.status.is_ok() && job.op == Op::kDispatch) {
    // Counters from the executor's outputs (read once, clamped: shm is untrusted).
    for (int32_t r = 0; r < spec_.world_size; ++r) {
      const RankLayout& l = layout_.ranks[static_cast<size_t>(r)];
      const uint8_t* base = workspace_->data() + offsets_[static_cast<size_t>(r)];
      uint32_t n = 0;
      int32_t total = 0;
      std::memcpy(&n, base + l.slot[job.slot].send_hdr, 4);
      std::memcpy(&total, base + l.slot[job.slot].recv_total, 4);
      c.tokens_sent.push_back(static_cast<int32_t>(std::min<uint32_t>(n, static_cast<uint32_t>(spec_.max_tokens_per_rank))));
      c.rows_received.push_back(std::max(0, total));
    }
  }
  for (Target& t : job.targets) backend_->finish(t, job.slot, job.op, c.status, true);
  sink_(std::move(c));
}

void Group::notify(Member& m, int32_t slot, Op op, uint32_t seq, const Status& st) {
  if (!m.shm) return;
  backend_->finish(Target{m.shm, m.index, seq, m.rank}, slot, op, st, false);
}

}  // namespace epd
