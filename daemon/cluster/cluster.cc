// cluster.cc — group agreement, op shipping and peer state between node daemons.
#include "cluster.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "protocol.h"

namespace epd::cluster {

namespace {

constexpr uint32_t kStateVersion = 1;

class Writer {
 public:
  template <typename T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b_.insert(b_.end(), p, p + sizeof v);
  }
  void bytes(const void* d, size_t n) {
    put(static_cast<uint32_t>(n));
    const auto* p = static_cast<const uint8_t*>(d);
    b_.insert(b_.end(), p, p + n);
  }
  std::vector<uint8_t>& out() { return b_; }

 private:
  std::vector<uint8_t> b_;
};

class Reader {
 public:
  Reader(const void* d, size_t n) : p_(static_cast<const uint8_t*>(d)), n_(n) {}
  template <typename T>
  bool get(T* v) {
    if (n_ - at_ < sizeof(T)) return false;
    std::memcpy(v, p_ + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  bool bytes(const uint8_t** d, uint32_t* n, uint32_t max) {
    if (!get(n) || *n > max || n_ - at_ < *n) return false;
    *d = p_ + at_;
    at_ += *n;
    return true;
  }
  bool done() const { return at_ == n_; }

 private:
  const uint8_t* p_;
  size_t n_, at_ = 0;
};

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

const char* op_kind_name(OpKind op) { return op == OpKind::kDispatch ? "dispatch" : "combine"; }

std::vector<int32_t> ranks_on_node(const GroupSpec& spec, int32_t node) {
  std::vector<int32_t> r;
  for (int32_t i = 0; i < spec.world_size; ++i)
    if (spec.placement[static_cast<size_t>(i)].node == node) r.push_back(i);
  return r;
}

std::vector<NodeId> other_nodes(const GroupSpec& spec, NodeId self) {
  std::set<NodeId> s;
  for (const epd_placement_t& p : spec.placement)
    if (static_cast<NodeId>(p.node) != self) s.insert(static_cast<NodeId>(p.node));
  return {s.begin(), s.end()};
}

std::string rank_list(const std::vector<int32_t>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

std::vector<std::pair<uint64_t, uint64_t>> op_ranges(const GroupSpec& spec, const RankLayout& l,
                                                     const uint8_t* rank_base, int32_t slot, OpKind op) {
  const SlotOffsets& o = l.slot[slot];
  std::vector<std::pair<uint64_t, uint64_t>> r;
  if (op == OpKind::kDispatch) {
    // The header travels whole, even an over-capacity count: every node's
    // executor then refuses the call with the same error.
    const uint64_t n = std::min<uint64_t>(load_u32(rank_base + o.send_hdr),
                                          static_cast<uint64_t>(spec.max_tokens_per_rank));
    const uint64_t K = static_cast<uint64_t>(spec.top_k);
    r.push_back({o.send_hdr, sizeof(SendHeader)});
    if (n > 0) {
      r.push_back({o.send_x, n * l.in_row_bytes});
      r.push_back({o.send_ids, n * K * 4});
      r.push_back({o.send_weights, n * K * 4});
    }
    return r;
  }
  if (spec.layout == EPD_LAYOUT_RANK_MAJOR) {
    const int64_t total = std::clamp<int64_t>(static_cast<int32_t>(load_u32(rank_base + o.recv_total)), 0, l.recv_rows);
    if (total > 0) r.push_back({o.combine_in, static_cast<uint64_t>(total) * l.in_row_bytes});
    return r;
  }
  const int64_t per_expert = l.local_experts > 0 ? l.recv_rows / l.local_experts : 0;
  for (int32_t e = 0; e < l.local_experts; ++e) {
    const int64_t c = std::clamp<int64_t>(static_cast<int32_t>(load_u32(rank_base + o.recv_counts + 4u * e)), 0,
                                          per_expert);
    if (c > 0)
      r.push_back({o.combine_in + static_cast<uint64_t>(e * per_expert) * l.in_row_bytes,
                   static_cast<uint64_t>(c) * l.in_row_bytes});
  }
  return r;
}

// ---- lifetime -------------------------------------------------------------------------------
Status check_secret_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    return make_status(EPD_ERR_SYSTEM, "cluster secret file %s: stat: %s", path.c_str(), strerror(e));
  }
  const uid_t me = ::geteuid();
  const unsigned mode = static_cast<unsigned>(st.st_mode & 07777);
  if (st.st_uid != me && st.st_uid != 0) {
    return make_status(EPD_ERR_PERMISSION,
                       "cluster secret file %s is owned by uid %u (mode %04o); it must belong to this daemon's "
                       "uid %u or to root",
                       path.c_str(), static_cast<unsigned>(st.st_uid), mode, static_cast<unsigned>(me));
  }
  if ((st.st_mode & 077) != 0) {
    return make_status(EPD_ERR_PERMISSION,
                       "cluster secret file %s has mode %04o (owner uid %u): its group or others may access the "
                       "secret; chmod 600 it",
                       path.c_str(), mode, static_cast<unsigned>(st.st_uid));
  }
  return Status::ok();
}

Result<std::unique_ptr<ClusterLink>> ClusterLink::create(transport::TransportConfig config, ProxyPinning pinning) {
  if (!config.cluster_secret_file.empty()) EPD_RETURN_IF_ERROR(check_secret_file(config.cluster_secret_file));
  std::unique_ptr<ClusterLink> c(new ClusterLink(std::move(config), std::move(pinning)));
  c->event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->event_fd_ < 0) return errno_status("eventfd", errno);
  ClusterLink* self = c.get();
  c->threads_[0].role = "shipping proxy";
  c->threads_[1].role = "transport progress";
  c->cfg_.on_progress_thread_start = [self] { self->on_thread_start(1); };
  transport::TransportCallbacks cb;
  cb.on_message = [self](NodeId peer, uint32_t tag, const void* d, size_t n) { self->on_message(peer, tag, d, n); };
  cb.on_write = [](NodeId, uint32_t, size_t) {};  // OP_DONE, ordered after the writes, says it all
  cb.on_peer_state = [self](NodeId peer, const Status& st) { self->on_peer_state(peer, st); };
  auto t = transport::make_transport(c->cfg_, std::move(cb));
  if (!t) return t.status();
  c->transport_ = std::move(t.value());
  c->proxy_ = std::thread([self] { self->proxy_loop(); });
  c->connector_ = std::thread([self] { self->connector_loop(); });
  // Both threads pin themselves first thing; wait (bounded) to log what they got.
  std::vector<ProxyThreadState> got;
  {
    std::unique_lock<std::mutex> l(c->mu_);
    c->threads_cv_.wait_for(l, std::chrono::seconds(2),
                            [&] { return c->threads_[0].started && c->threads_[1].started; });
  }
  for (const ProxyThreadState& th : c->proxy_threads()) {
    std::string line = th.role + " thread of the " + c->transport_->name() + " transport";
    if (!th.started) {
      line += ": not started yet, pinning not known";
    } else if (th.pinned) {
      line += (c->pinning_.nic.empty() ? std::string() : " near NIC " + c->pinning_.nic) + " pinned to CPUs " +
              format_cpu_list(th.affinity) + " (" + th.detail + ")";
    } else {
      line += ": " + th.detail;
    }
    transport::transport_log(c->cfg_, th.pinned || c->pinning_.cpus.empty() ? transport::LogSeverity::kInfo
                                                                            : transport::LogSeverity::kWarn,
                             line);
  }
  return c;
}

ClusterLink::~ClusterLink() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  jobs_cv_.notify_all();
  if (transport_) transport_->shutdown();  // unblocks a connect(), send() or write() in progress
  if (connector_.joinable()) connector_.join();
  if (proxy_.joinable()) proxy_.join();
  transport_.reset();
  if (event_fd_ >= 0) close(event_fd_);
}

void ClusterLink::set_peer_address(NodeId node, const std::string& host_port) {
  std::lock_guard<std::mutex> l(mu_);
  cfg_.peers[node] = host_port;
  transport_->set_peer_address(node, host_port);
}

void ClusterLink::push_event(Event e) {
  events_.push_back(std::move(e));
  const uint64_t one = 1;
  if (write(event_fd_, &one, sizeof one) < 0) {
    // The counter cannot saturate: the control thread drains it on every wake-up.
  }
}

std::vector<Event> ClusterLink::take_events() {
  uint64_t v;
  while (read(event_fd_, &v, sizeof v) == sizeof v) {
  }
  std::lock_guard<std::mutex> l(mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

// Dials (or, for a higher node id, awaits) every node some attached group
// needs and is not connected; retried until the ClusterLink stops, backing
// off from 100 ms to 2 s per node while it keeps failing (a node refused for
// a wrong secret would otherwise fill both logs).
void ClusterLink::connector_loop() {
  using std::chrono::milliseconds;
  struct Backoff {
    transport::Clock::time_point next{};
    milliseconds delay{100};
  };
  std::map<NodeId, Backoff> backoff;
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    std::set<NodeId> want;
    for (const auto& [key, g] : groups_)
      for (NodeId n : g.nodes)
        if (!connected_.count(n)) want.insert(n);
    auto wake = transport::Clock::now() + milliseconds(1000);
    for (NodeId n : want) {
      Backoff& b = backoff[n];
      if (transport::Clock::now() < b.next) {
        wake = std::min(wake, b.next);
        continue;
      }
      l.unlock();
      const Status st = transport_->connect(n, transport::deadline_after(milliseconds(500)));
      l.lock();
      if (stop_) return;
      // Success also arrives through on_peer_state (which announces our groups).
      b.delay = st.is_ok() ? milliseconds(100) : std::min(b.delay * 2, milliseconds(2000));
      b.next = transport::Clock::now() + (st.is_ok() ? milliseconds(0) : b.delay);
      wake = std::min(wake, b.next);
    }
    for (auto& [n, b] : backoff)
      if (connected_.count(n)) b = Backoff{};
    // Woken early by a new group or a lost node.
    cv_.wait_until(l, wake);
  }
}

// ---- groups ---------------------------------------------------------------------------------
std::vector<uint8_t> ClusterLink::encode_state(const Attached& g) const {
  Writer w;
  w.put(kStateVersion);
  w.put(g.spec.generation);
  w.put(g.region_id);
  w.put(g.bytes);
  w.put(static_cast<uint32_t>(g.present.size()));
  for (int32_t r : g.present) w.put(r);
  proto::Join j;
  j.spec = g.spec;
  const std::vector<uint8_t> spec = proto::encode(j, 0);
  w.bytes(spec.data(), spec.size());
  return std::move(w.out());
}

void ClusterLink::announce(const Attached& g, NodeId peer) {
  if (!connected_.count(peer)) return;  // announced again once connected
  // Encoded now (detach() erases the group next); sent by the proxy thread, in
  // call order with shipping. A queued older state for the same node is void.
  for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
    if (it->kind == Job::Kind::kAnnounce && it->node == peer && it->group == g.spec.name &&
        it->generation == g.spec.generation) {
      jobs_.erase(it);
      break;  // at most one is queued
    }
  }
  Job j;
  j.kind = Job::Kind::kAnnounce;
  j.group = g.spec.name;
  j.generation = g.spec.generation;
  j.node = peer;
  j.message = encode_state(g);
  jobs_.push_back(std::move(j));
  jobs_cv_.notify_one();
}

Status ClusterLink::attach(const GroupSpec& spec, uint8_t* base, uint64_t bytes, std::shared_ptr<void> keepalive) {
  std::unique_lock<std::mutex> l(mu_);
  const auto key = std::make_pair(spec.name, spec.generation);
  if (groups_.count(key)) return Status::ok();
  for (const epd_placement_t& p : spec.placement)
    if (p.node < 0 || (static_cast<NodeId>(p.node) != cfg_.node_id && !cfg_.peers.count(static_cast<NodeId>(p.node))))
      return make_status(EPD_ERR_INVALID_SPEC,
                         "group '%s': placement names node %d, which this daemon's [cluster] peers do not list",
                         spec.name.c_str(), p.node);
  Attached g;
  g.spec = spec;
  g.layout = GroupLayout::compute(spec);
  uint64_t at = 0;
  for (const RankLayout& r : g.layout.ranks) {
    g.offsets.push_back(at);
    at += r.bytes;
  }
  if (at > bytes)
    return make_status(EPD_ERR_INTERNAL, "group '%s': mirror of %llu bytes is smaller than the layout's %llu",
                       spec.name.c_str(), static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(at));
  g.base = base;
  g.bytes = bytes;
  g.region_id = next_region_id_++;
  g.nodes = other_nodes(spec, cfg_.node_id);
  Status st = transport_->register_region(g.region_id, base, bytes);
  if (!st) return st;
  g.keepalive = std::move(keepalive);
  Attached& ref = groups_.emplace(key, std::move(g)).first->second;
  for (NodeId n : ref.nodes) {
    ref.remotes[n] = Remote{};
    auto a = announcements_.find({spec.name, n});
    if (a != announcements_.end() && a->second.first == spec.generation) apply_announcement(ref, n, a->second.second);
    announce(ref, n);
  }
  cv_.notify_all();  // the connector dials the new nodes
  return Status::ok();
}

void ClusterLink::detach(const std::string& name, uint64_t generation) {
  uint32_t region = 0;
  std::shared_ptr<void> mirror;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = groups_.find({name, generation});
    if (it == groups_.end()) return;
    it->second.present.clear();
    for (NodeId n : it->second.nodes) announce(it->second, n);
    region = it->second.region_id;
    mirror = std::move(it->second.keepalive);
    groups_.erase(it);
    // Queued shippings of the group find no entry and are skipped; a running one
    // finishes (its plan keeps the mirror mapped) and its outcome is dropped.
    for (auto s = ships_.begin(); s != ships_.end();)
      s = std::get<0>(s->first) == name && std::get<1>(s->first) == generation ? ships_.erase(s) : std::next(s);
  }
  // Outside mu_: the transport waits for its progress thread, whose callbacks take mu_.
  Status st = transport_->deregister_region(region);
  if (st) return;  // the mirror goes with `mirror` (once no shipping holds it)
  if (cfg_.log) cfg_.log(transport::LogSeverity::kWarn, "group '" + name + "': " + st.message() + "; its mirror is kept");
  std::lock_guard<std::mutex> l(mu_);
  unreleased_.push_back(std::move(mirror));
}

void ClusterLink::set_present(const std::string& name, uint64_t generation, const std::vector<int32_t>& ranks) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = groups_.find({name, generation});
  if (it == groups_.end() || it->second.present == ranks) return;
  it->second.present = ranks;
  for (NodeId n : it->second.nodes) announce(it->second, n);
}

Status ClusterLink::remote_present(const std::string& name, uint64_t generation, std::vector<uint8_t>* present) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = groups_.find({name, generation});
  if (it == groups_.end())
    return make_status(EPD_ERR_UNKNOWN_GROUP, "group '%s' generation %llu is not attached to the cluster",
                       name.c_str(), static_cast<unsigned long long>(generation));
  const Attached& g = it->second;
  present->assign(static_cast<size_t>(g.spec.world_size), 0);
  for (const auto& [node, rem] : g.remotes) {
    if (!rem.error.is_ok()) return rem.error;
    if (!rem.announced) continue;
    for (int32_t r : rem.present)
      if (r >= 0 && r < g.spec.world_size && g.spec.placement[static_cast<size_t>(r)].node == static_cast<int32_t>(node))
        (*present)[static_cast<size_t>(r)] = 1;
  }
  return Status::ok();
}

void ClusterLink::apply_announcement(Attached& g, NodeId peer, const Announcement& a) {
  Remote& rem = g.remotes[peer];
  rem.announced = true;
  rem.region_id = a.region_id;
  rem.region_bytes = a.region_bytes;
  rem.present = a.present;
  rem.error = Status::ok();
  Status cmp = g.spec.compare(a.spec);
  if (cmp.is_ok() && a.region_bytes < g.offsets.back() + g.layout.ranks.back().bytes)
    cmp = make_status(EPD_ERR_SPEC_MISMATCH, "mirror region of %llu bytes is smaller than the group's workspace",
                      static_cast<unsigned long long>(a.region_bytes));
  if (!cmp.is_ok())
    rem.error = make_status(EPD_ERR_SPEC_MISMATCH, "group '%s': node %u disagrees with node %u: %s", g.spec.name.c_str(),
                            peer, cfg_.node_id, cmp.message().c_str());
}

// ---- transport callbacks (progress thread) ---------------------------------------------------
void ClusterLink::on_message(NodeId peer, uint32_t tag, const void* data, size_t bytes) {
  Reader rd(data, bytes);
  std::lock_guard<std::mutex> l(mu_);
  if (tag == kTagGroupState) {
    uint32_t version = 0, region = 0, n = 0;
    uint64_t gen = 0, region_bytes = 0;
    if (!rd.get(&version) || version != kStateVersion || !rd.get(&gen) || !rd.get(&region) ||
        !rd.get(&region_bytes) || !rd.get(&n) || n > EPD_MAX_WORLD_SIZE) {
      transport::transport_log(cfg_, transport::LogSeverity::kWarn,
                               "cluster: malformed group state from node " + std::to_string(peer) + " ignored");
      return;
    }
    Announcement a;
    a.region_id = region;
    a.region_bytes = region_bytes;
    for (uint32_t i = 0; i < n; ++i) {
      int32_t r = 0;
      if (!rd.get(&r)) return;
      a.present.push_back(r);
    }
    const uint8_t* sp = nullptr;
    uint32_t sn = 0;
    if (!rd.bytes(&sp, &sn, 1u << 20) || !rd.done()) return;
    auto f = proto::decode_frame(sp, sn);
    if (!f) return;
    auto j = proto::decode_join(*f);
    if (!j) return;
    a.spec = std::move(j->spec);
    a.spec.generation = gen;
    if (Status v = a.spec.validate(); !v) {
      transport::transport_log(cfg_, transport::LogSeverity::kWarn,
                               "cluster: node " + std::to_string(peer) + " announced an invalid spec: " + v.message());
      return;
    }
    const std::string name = a.spec.name;
    auto it = groups_.find({name, gen});
    if (it != groups_.end()) {
      const bool had = it->second.remotes[peer].announced;
      apply_announcement(it->second, peer, a);
      // A node that starts announcing (again) may have missed ours.
      if (!had) announce(it->second, peer);
      push_event(Event{Event::Kind::kGroupState, name, gen, peer, -1, Status::ok()});
    }
    announcements_[{name, peer}] = {gen, std::move(a)};
    return;
  }
  if (tag == kTagOpDone) {
    uint64_t gen = 0;
    int32_t slot = 0;
    uint8_t op = 0;
    const uint8_t* np = nullptr;
    uint32_t nn = 0;
    if (!rd.get(&gen) || !rd.get(&slot) || !rd.get(&op) || !rd.bytes(&np, &nn, EPD_NAME_MAX) || !rd.done()) return;
    const std::string name(reinterpret_cast<const char*>(np), nn);
    auto it = groups_.find({name, gen});
    if (it == groups_.end() || slot < 0 || slot >= it->second.spec.slots ||
        (op != static_cast<uint8_t>(OpKind::kDispatch) && op != static_cast<uint8_t>(OpKind::kCombine)))
      return;
    it->second.remotes[peer].arrivals[slot].push_back(static_cast<OpKind>(op));
    push_event(Event{Event::Kind::kArrival, name, gen, peer, slot, Status::ok()});
  }
}

void ClusterLink::on_peer_state(NodeId peer, const Status& st) {
  std::lock_guard<std::mutex> l(mu_);
  if (peer == transport::kUnknownNode) return;  // refused before HELLO: the transport logged it
  if (st.is_ok()) {
    connected_.insert(peer);
    for (auto& [key, g] : groups_)
      if (std::find(g.nodes.begin(), g.nodes.end(), peer) != g.nodes.end()) announce(g, peer);
  } else {
    connected_.erase(peer);
    // Whatever that node had said is void: a restarted daemon announces afresh.
    for (auto& [key, g] : groups_) {
      auto r = g.remotes.find(peer);
      if (r != g.remotes.end()) r->second = Remote{};
    }
    for (auto it = announcements_.begin(); it != announcements_.end();)
      it = it->first.second == peer ? announcements_.erase(it) : std::next(it);
    cv_.notify_all();
  }
  push_event(Event{Event::Kind::kPeerState, "", 0, peer, -1, st});
}

// ---- data -----------------------------------------------------------------------------------
Status ClusterLink::plan_ship(const std::string& name, uint64_t generation, int32_t slot, OpKind op, ShipPlan* plan,
                              NodeId* failed_node) const {
  auto it = groups_.find({name, generation});
  if (it == groups_.end())
    return make_status(EPD_ERR_UNKNOWN_GROUP, "group '%s' generation %llu is not attached to the cluster", name.c_str(),
                       static_cast<unsigned long long>(generation));
  const Attached& g = it->second;
  if (slot < 0 || slot >= g.spec.slots)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "group '%s': slot %d is outside [0, %d)", name.c_str(), slot,
                       g.spec.slots);
  for (NodeId n : g.nodes) {
    const Remote& rem = g.remotes.at(n);
    if (failed_node) *failed_node = n;
    if (!connected_.count(n) || !rem.announced)
      return make_status(EPD_ERR_PEER_LOST, "group '%s' slot %d %s: node %u (ranks %s) is not connected", name.c_str(),
                         slot, op_kind_name(op), n,
                         rank_list(ranks_on_node(g.spec, static_cast<int32_t>(n))).c_str());
    plan->targets.push_back({n, rem.region_id});
  }
  for (int32_t r : ranks_on_node(g.spec, static_cast<int32_t>(cfg_.node_id))) {
    const uint64_t off = g.offsets[static_cast<size_t>(r)];
    for (const auto& rg : op_ranges(g.spec, g.layout.ranks[static_cast<size_t>(r)], g.base + off, slot, op))
      plan->ranges.push_back({off, rg});
  }
  Writer w;
  w.put(generation);
  w.put(slot);
  w.put(static_cast<uint8_t>(op));
  w.bytes(name.data(), name.size());
  plan->op_done = std::move(w.out());
  plan->base = g.base;
  plan->keepalive = g.keepalive;
  plan->imm = (static_cast<uint32_t>(slot) << 8) | static_cast<uint32_t>(op);
  return Status::ok();
}

Status ClusterLink::run_plan(const ShipPlan& plan, transport::Deadline deadline, NodeId* failed_node) {
  for (const ShipPlan::Target& t : plan.targets) {
    if (failed_node) *failed_node = t.node;
    for (const auto& [off, rg] : plan.ranges) {
      Status st = transport_->write(t.node, t.region, off + rg.first, plan.base + off + rg.first, rg.second, plan.imm,
                                    deadline);
      if (!st) return st;
    }
    Status st = transport_->send(t.node, kTagOpDone, plan.op_done.data(), plan.op_done.size(), deadline);
    if (!st) return st;
  }
  return Status::ok();
}

Status ClusterLink::send_op(const std::string& name, uint64_t generation, int32_t slot, OpKind op,
                            NodeId* failed_node) {
  ShipPlan plan;
  transport::Deadline deadline;
  {
    std::lock_guard<std::mutex> l(mu_);
    EPD_RETURN_IF_ERROR(plan_ship(name, generation, slot, op, &plan, failed_node));
    deadline = transport::deadline_after(std::chrono::milliseconds(groups_.at({name, generation}).spec.timeout_ms));
  }
  return run_plan(plan, deadline, failed_node);  // writes may wait for queue space; the progress thread needs mu_
}

bool ClusterLink::can_ship(const std::string& name, uint64_t generation) const {
  std::lock_guard<std::mutex> l(mu_);
  return can_ship_locked(name, generation);
}

bool ClusterLink::can_ship_locked(const std::string& name, uint64_t generation) const {
  auto it = groups_.find({name, generation});
  if (it == groups_.end()) return false;
  for (const auto& [node, rem] : it->second.remotes)
    if (!connected_.count(node) || !rem.announced || !rem.error.is_ok()) return false;
  return true;
}

std::optional<OpKind> ClusterLink::peek_arrival(const std::string& name, uint64_t generation, NodeId node,
                                                int32_t slot) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = groups_.find({name, generation});
  if (it == groups_.end()) return std::nullopt;
  auto r = it->second.remotes.find(node);
  if (r == it->second.remotes.end()) return std::nullopt;
  auto q = r->second.arrivals.find(slot);
  if (q == r->second.arrivals.end() || q->second.empty()) return std::nullopt;
  return q->second.front();
}

void ClusterLink::pop_arrival(const std::string& name, uint64_t generation, NodeId node, int32_t slot) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = groups_.find({name, generation});
  if (it == groups_.end()) return;
  auto r = it->second.remotes.find(node);
  if (r == it->second.remotes.end()) return;
  auto q = r->second.arrivals.find(slot);
  if (q != r->second.arrivals.end() && !q->second.empty()) q->second.pop_front();
}

}  // namespace epd::cluster
