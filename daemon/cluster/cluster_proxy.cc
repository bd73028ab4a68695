// cluster_proxy.cc — the cluster link's proxy thread: announcements and
// shipping off the control thread, and pinning it and the transport's progress
// thread near the NIC (see cluster.h).
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cluster.h"
#include "cpu_list.h"

namespace epd::cluster {


Status pin_current_thread_to(const std::vector<int>& cpus, std::vector<int>* affinity) {
  if (cpus.empty()) return make_status(EPD_ERR_INVALID_ARGUMENT, "no CPUs to pin to");
  const int max_cpu = *std::max_element(cpus.begin(), cpus.end());
  if (*std::min_element(cpus.begin(), cpus.end()) < 0 || max_cpu >= (1 << 20))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "CPUs %s are not CPU numbers", format_cpu_list(cpus).c_str());
  const int ncpus = std::max(max_cpu + 1, CPU_SETSIZE);
  cpu_set_t* set = CPU_ALLOC(ncpus);
  if (set == nullptr) return errno_status("CPU_ALLOC", errno);
  const size_t size = CPU_ALLOC_SIZE(ncpus);
  CPU_ZERO_S(size, set);
  for (int c : cpus) CPU_SET_S(static_cast<size_t>(c), size, set);
  int rc = pthread_setaffinity_np(pthread_self(), size, set);
  Status st = Status::ok();
  if (rc != 0) {
    st = make_status(EPD_ERR_SYSTEM, "pthread_setaffinity_np(CPUs %s): %s", format_cpu_list(cpus).c_str(),
                     std::strerror(rc));
  }
  if (affinity != nullptr) {
    affinity->clear();
    CPU_ZERO_S(size, set);
    if (pthread_getaffinity_np(pthread_self(), size, set) == 0)
      for (int c = 0; c < ncpus; ++c)
        if (CPU_ISSET_S(static_cast<size_t>(c), size, set)) affinity->push_back(c);
  }
  CPU_FREE(set);
  return st;
}

void ClusterLink::on_thread_start(size_t index) {
  ProxyThreadState th;
  if (pinning_.cpus.empty()) {
    th.detail = pinning_.reason.empty() ? "no CPUs were chosen for it; not pinned" : pinning_.reason;
  } else {
    Status st = pin_current_thread_to(pinning_.cpus, &th.affinity);
    th.pinned = st.is_ok();
    th.detail = st.is_ok() ? pinning_.reason : "not pinned: " + st.message();
  }
  th.started = true;
  th.tid = static_cast<int32_t>(syscall(SYS_gettid));  // gettid() needs glibc 2.30
  {
    std::lock_guard<std::mutex> l(mu_);
    th.role = threads_[index].role;
    threads_[index] = std::move(th);
  }
  threads_cv_.notify_all();
}

std::vector<ProxyThreadState> ClusterLink::proxy_threads() const {
  std::lock_guard<std::mutex> l(mu_);
  return {threads_[0], threads_[1]};
}

void ClusterLink::proxy_loop() {
  on_thread_start(0);
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    jobs_cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) return;  // queued work belongs to groups of a link going away
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    if (job.kind == Job::Kind::kShip) {
      run_ship(l, job);
      continue;
    }
    l.unlock();
    // A failure shows up as a lost peer (the transport reports it).
    (void)transport_->send(job.node, kTagGroupState, job.message.data(), job.message.size(),
                           transport::deadline_after(std::chrono::milliseconds(1000)));
    l.lock();
  }
}

void ClusterLink::run_ship(std::unique_lock<std::mutex>& l, const Job& job) {
  const ShipKey key{job.group, job.generation, job.slot};
  auto it = ships_.find(key);
  if (it == ships_.end() || it->second.ticket != job.ticket) return;  // detached meanwhile
  ShipPlan plan;
  NodeId node = 0;
  Status st = plan_ship(job.group, job.generation, job.slot, it->second.op, &plan, &node);
  if (st) {
    l.unlock();  // writes may wait for queue space until the deadline; the progress thread needs mu_
    st = run_plan(plan, job.deadline, &node);
    l.lock();
  }
  it = ships_.find(key);
  if (it == ships_.end() || it->second.ticket != job.ticket) return;
  it->second.finished = true;
  it->second.status = st;
  it->second.node = node;
  push_event(Event{Event::Kind::kShipped, job.group, job.generation, node, job.slot, st});
}

ShipResult ClusterLink::ship(const std::string& name, uint64_t generation, int32_t slot, OpKind op, uint64_t ticket) {
  std::lock_guard<std::mutex> l(mu_);
  ShipResult r;
  const ShipKey key{name, generation, slot};
  auto it = ships_.find(key);
  if (it != ships_.end()) {
    Ship& s = it->second;
    if (!s.finished) {
      r.state = ShipResult::State::kPending;  // this ticket's, or an earlier rendezvous's still running
      return r;
    }
    if (s.ticket == ticket && s.op == op) {
      r.state = s.status.is_ok() ? ShipResult::State::kDone : ShipResult::State::kFailed;
      r.status = s.status;
      r.node = s.node;
      ships_.erase(it);
      return r;
    }
    ships_.erase(it);  // an earlier rendezvous's outcome, never taken: that rendezvous ended
  }
  auto g = groups_.find({name, generation});
  if (g == groups_.end()) {
    r.state = ShipResult::State::kFailed;
    r.status = make_status(EPD_ERR_UNKNOWN_GROUP, "group '%s' generation %llu is not attached to the cluster",
                           name.c_str(), static_cast<unsigned long long>(generation));
    return r;
  }
  if (!can_ship_locked(name, generation)) return r;  // kNotReady
  Ship s;
  s.ticket = ticket;
  s.op = op;
  ships_.emplace(key, s);
  Job j;
  j.kind = Job::Kind::kShip;
  j.group = name;
  j.generation = generation;
  j.slot = slot;
  j.ticket = ticket;
  j.deadline = transport::deadline_after(std::chrono::milliseconds(g->second.spec.timeout_ms));
  jobs_.push_back(std::move(j));
  jobs_cv_.notify_one();
  r.state = ShipResult::State::kPending;
  return r;
}

}  // namespace epd::cluster
