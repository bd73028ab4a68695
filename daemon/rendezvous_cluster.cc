// rendezvous_cluster.cc — groups spanning nodes. A group whose placement names
// other nodes is attached to the cluster link (cluster/cluster.h); its join
// completes when every rank on every node is present; once all local ranks
// rang an op of a slot, their regions are shipped to the other nodes, whose
// OP_DONE arrivals count as those nodes' ranks ringing; a lost node (or its
// ranks leaving) fails this node's ranks with PEER_LOST naming the ranks, and
// a node that comes back (new daemon, same generation) is taken in again.
// Shipping runs on the cluster link's proxy thread (pinned near the NIC the
// transport uses): ship_if_ready() starts it and picks up its outcome when
// Event::kShipped comes back. Control thread only, like the rest of the Rendezvous.
#include <algorithm>
#include <map>

#include "logging.h"
#include "rendezvous.h"

#ifdef EPD_HAVE_HWLOC
#include "topology.h"
#endif

namespace epd {

namespace {

const char* plural(size_t n) { return n == 1 ? "" : "s"; }

cluster::OpKind kind_of(Op op) { return op == Op::kDispatch ? cluster::OpKind::kDispatch : cluster::OpKind::kCombine; }

// Where the link's proxy and progress threads run: the NUMA node of the RDMA
// NIC whose interface holds the listen address (the host executor has no GPU
// to pair with), else nowhere in particular, with the reason for the log.
cluster::ProxyPinning proxy_pinning(const std::string& listen_address) {
  cluster::ProxyPinning p;
  Result<std::string> dev = transport::interface_of_address(listen_address);
#ifdef EPD_HAVE_HWLOC
  Result<Topology> topo = Topology::load_live();
  if (!topo) {
    p.reason = "no topology (" + topo.status().message() + "); not pinned";
    return p;
  }
  const ProxyPlacement pl = topo->proxy_for_device(dev ? *dev : std::string());
  p.nic = pl.nic;
  p.numa_node = pl.numa_node;
  p.cpus = pl.cpus;
  p.reason = dev ? pl.reason : dev.status().message() + "; not pinned";
#else
  p.reason = "built without hwloc; not pinned";
  (void)dev;
#endif
  return p;
}

}  // namespace

Status Rendezvous::init_cluster() {
  const DaemonConfig& c = config_;
  if (c.listen_address.empty()) {
    if (!c.peers.empty())
      log_message(LogLevel::kWarn, "cluster.peers is set but cluster.listen_address is not: running as a single node");
    return Status::ok();
  }
  transport::TransportConfig t;
  t.kind = c.transport;
  t.rdma_fallback_to_tcp = c.rdma_fallback_to_tcp;
  t.node_id = c.node_id;
  t.listen_address = c.listen_address;
  t.cluster_secret = c.cluster_secret;
  t.cluster_secret_file = c.config_file;  // the secret comes from the config file: checked at start
  for (size_t i = 0; i < c.peers.size(); ++i)
    if (i != c.node_id) t.peers[static_cast<transport::NodeId>(i)] = c.peers[i];
  t.log = [](transport::LogSeverity sev, const std::string& msg) {
    log_message(sev == transport::LogSeverity::kError ? LogLevel::kError
                : sev == transport::LogSeverity::kWarn ? LogLevel::kWarn
                                                        : LogLevel::kInfo,
                "cluster: " + msg);
  };
  auto link = cluster::ClusterLink::create(std::move(t), proxy_pinning(c.listen_address));
  if (!link) return make_status(link.status().code(), "cluster: %s", link.status().message().c_str());
  cluster_ = std::move(link.value());
  return Status::ok();
}

int Rendezvous::cluster_fd() const { return cluster_ ? cluster_->event_fd() : -1; }

std::string Rendezvous::cluster_summary() const {
  if (!cluster_) return "single node";
  return "node " + std::to_string(cluster_->node_id()) + ", daemon-to-daemon transport " + cluster_->transport_name() +
         " on " + cluster_->listen_address();
}

bool Rendezvous::is_local(const Group& g, int32_t rank) const {
  return g.spec().placement[static_cast<size_t>(rank)].node == static_cast<int32_t>(config_.node_id);
}

bool Rendezvous::multi_node(const Group& g) const {
  for (int32_t r = 0; r < g.spec().world_size; ++r)
    if (!is_local(g, r)) return true;
  return false;
}

Status Rendezvous::check_placement(const GroupSpec& spec) const {
  const int32_t me = static_cast<int32_t>(config_.node_id);
  const int32_t node = spec.placement[static_cast<size_t>(spec.rank)].node;
  if (node != me)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "group '%s': rank %d is placed on node %d, but this daemon is node %d (join through node %d's daemon)",
                       spec.name.c_str(), spec.rank, node, me, node);
  if (!cluster_)
    for (int32_t r = 0; r < spec.world_size; ++r)
      if (spec.placement[static_cast<size_t>(r)].node != me)
        return make_status(EPD_ERR_UNSUPPORTED,
                           "group '%s': placement[%d].node = %d, but this daemon has no [cluster] listen_address "
                           "(it serves node %d only)",
                           spec.name.c_str(), r, spec.placement[static_cast<size_t>(r)].node, me);
  return Status::ok();
}

Status Rendezvous::attach_cluster(Group& g) {
  if (!multi_node(g)) return Status::ok();
  if (!cluster_)  // a [[group]] of the config placed across nodes on a daemon without [cluster]
    return make_status(EPD_ERR_UNSUPPORTED, "group '%s' places ranks on other nodes, but this daemon has no [cluster] listen_address",
                       g.spec().name.c_str());
  std::shared_ptr<SharedRegion> ws = g.workspace_ref();
  return cluster_->attach(g.spec(), ws->data(), ws->size(), ws);
}

void Rendezvous::cluster_present_changed(Group& g) {
  if (!multi_node(g) || g.closed) return;
  std::vector<int32_t> present;
  for (const auto& m : g.members())
    if (m) present.push_back(m->rank);
  cluster_->set_present(g.spec().name, g.spec().generation, present);
}

std::vector<int32_t> Rendezvous::missing_ranks(const Group& g) const {
  std::vector<uint8_t> remote;
  if (multi_node(g) && !cluster_->remote_present(g.spec().name, g.spec().generation, &remote)) remote.clear();
  std::vector<int32_t> missing;
  for (int32_t r = 0; r < g.spec().world_size; ++r) {
    const bool here = is_local(g, r) ? g.members()[static_cast<size_t>(r)] != nullptr
                                     : r < static_cast<int32_t>(remote.size()) && remote[static_cast<size_t>(r)];
    if (!here) missing.push_back(r);
  }
  return missing;
}

void Rendezvous::maybe_complete_joins(Group& g) {
  if (g.closed) return;
  bool pending = false;
  for (const auto& m : g.members()) pending = pending || (m && !m->joined);
  if (!pending) return;
  if (multi_node(g)) {
    std::vector<uint8_t> remote;
    if (Status st = cluster_->remote_present(g.spec().name, g.spec().generation, &remote); !st)
      return refuse_pending_joins(g, st, LogLevel::kWarn, "join refused: " + st.message());
  }
  if (!missing_ranks(g).empty()) return;
  std::vector<int32_t> pids;
  for (const auto& m : g.members())
    if (m && std::find(pids.begin(), pids.end(), m->pid) == pids.end()) pids.push_back(m->pid);
  auto proceed = g.backend().joins_may_complete(g.joined(), static_cast<int32_t>(pids.size()));
  if (!proceed) {
    // Every present member is refused, the ones still joined from before too.
    std::vector<std::shared_ptr<Member>> refused;
    for (auto& m : g.members())
      if (m) {
        reply_join_error(*m, proceed.status());
        refused.push_back(m);
      }
    for (auto& m : refused) remove_member(m, proceed.status().message());
    return;
  }
  if (!*proceed) return;
  for (auto& m : g.members())
    if (m && !m->joined) complete_join(*m);
  promote_if_complete(g);
}

bool Rendezvous::ship_if_ready(Group& g, int32_t slot) {
  if (!multi_node(g)) return true;
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  if (rv.shipped) return true;
  if (rv.rung_count == 0) return false;
  for (int32_t r = 0; r < g.spec().world_size; ++r)
    if (is_local(g, r) && !rv.rung[static_cast<size_t>(r)]) return false;
  // Every other node's daemon must be there to receive (a node that restarts
  // announces the group again); until then the rendezvous deadline
  // (on_timers) bounds the wait and names who is missing. Its ranks need not
  // be present: a node whose ranks finished and left still takes the data.
  // The proxy thread ships; the first ring of this rendezvous is its ticket.
  const cluster::ShipResult r = cluster_->ship(g.spec().name, g.spec().generation, slot, kind_of(rv.op),
                                               static_cast<uint64_t>(rv.first_ring_ns));
  if (r.state == cluster::ShipResult::State::kNotReady || r.state == cluster::ShipResult::State::kPending)
    return false;  // kShipped (or the node's announcement) brings us back here
  if (r.state == cluster::ShipResult::State::kFailed) {
    // A node went away under us (its loss is reported next): the op cannot
    // complete anywhere, so the ranks start the step again, as after PEER_LOST.
    const std::vector<int32_t> remote = cluster::ranks_on_node(g.spec(), static_cast<int32_t>(r.node));
    const std::string msg = "group '" + g.spec().name + "' slot " + std::to_string(slot) + " " +
                            (rv.op == Op::kDispatch ? "dispatch" : "combine") + ": rank" + plural(remote.size()) + " " +
                            cluster::rank_list(remote) + " on node " + std::to_string(r.node) + " lost: " +
                            r.status.message();
    log_message(LogLevel::kWarn, LogContext{g.spec().name, -1, 0, -1}, msg);
    fail_pending(g, slot, Status(r.status.code() == EPD_ERR_TIMEOUT ? EPD_ERR_TIMEOUT : EPD_ERR_PEER_LOST, msg),
                 Phase::kIdle);
    return false;
  }
  rv.shipped = true;
  return true;
}

void Rendezvous::apply_arrivals(Group& g, int32_t slot) {
  if (!multi_node(g) || g.closed) return;
  Group::SlotRendezvous& rv = g.rendezvous(slot);
  for (transport::NodeId node : cluster::other_nodes(g.spec(), config_.node_id)) {
    if (rv.in_flight) return;  // applied when the running job completes
    const auto kind = cluster_->peek_arrival(g.spec().name, g.spec().generation, node, slot);
    if (!kind) continue;
    const Op op = *kind == cluster::OpKind::kDispatch ? Op::kDispatch : Op::kCombine;
    if (rv.rung_count > 0 && rv.op != op) continue;  // that node is one op ahead: kept for later
    const std::vector<int32_t> ranks = cluster::ranks_on_node(g.spec(), static_cast<int32_t>(node));
    bool already = false;
    for (int32_t r : ranks) already = already || rv.rung[static_cast<size_t>(r)];
    if (already) continue;
    cluster_->pop_arrival(g.spec().name, g.spec().generation, node, slot);
    if (rv.rung_count == 0) {
      rv.op = op;
      rv.first_ring_ns = shm::monotonic_ns();
    }
    for (int32_t r : ranks) rv.rung[static_cast<size_t>(r)] = 1;
    rv.rung_count += static_cast<int32_t>(ranks.size());
  }
  try_submit(g, slot);
}

void Rendezvous::on_cluster_events() {
  for (const cluster::Event& e : cluster_->take_events()) {
    Group* g = nullptr;  // the live generation, or a newer one being assembled
    for (auto* map : {&groups_, &pending_})
      if (auto it = map->find(e.group); it != map->end() && it->second->spec().generation == e.generation)
        g = it->second.get();
    switch (e.kind) {
      case cluster::Event::Kind::kArrival:
        if (g) apply_arrivals(*g, e.slot);
        break;
      case cluster::Event::Kind::kGroupState:
        if (g) on_remote_state(*g, -1, "");
        break;
      case cluster::Event::Kind::kShipped:
        if (g && !g->closed) try_submit(*g, e.slot);  // ship_if_ready() takes the outcome
        break;
      case cluster::Event::Kind::kPeerState:
        on_peer_state(e);
        break;
    }
  }
}

void Rendezvous::on_peer_state(const cluster::Event& e) {
  if (e.status.is_ok()) {
    log_message(LogLevel::kInfo, "cluster: node " + std::to_string(e.node) + " connected");
  } else {
    log_message(LogLevel::kWarn, "cluster: node " + std::to_string(e.node) + " lost: " + e.status.to_string());
  }
  std::vector<Group*> affected;
  for (auto* map : {&groups_, &pending_})
    for (auto& [name, gp] : *map)
      for (const epd_placement_t& p : gp->spec().placement)
        if (p.node == static_cast<int32_t>(e.node)) {
          affected.push_back(gp.get());
          break;
        }
  for (Group* a : affected) on_remote_state(*a, e.status.is_ok() ? -1 : static_cast<int64_t>(e.node), e.status.message());
}

void Rendezvous::on_remote_state(Group& g, int64_t gone_node, const std::string& why) {
  if (!multi_node(g) || g.closed) return;
  std::vector<uint8_t> present;
  if (!cluster_->remote_present(g.spec().name, g.spec().generation, &present)) {
    maybe_complete_joins(g);  // refuses the pending joins with the mismatch
    return;
  }
  std::vector<uint8_t>& seen = remote_seen_[g.id()];
  seen.resize(present.size(), 0);
  std::vector<int32_t> lost;
  bool back = false;
  for (size_t r = 0; r < present.size(); ++r) {
    if (seen[r] && !present[r]) lost.push_back(static_cast<int32_t>(r));
    if (present[r] && g.lost()[r].lost && !is_local(g, static_cast<int32_t>(r))) {
      g.lost()[r] = Group::LostRank{};
      back = true;
    }
  }
  if (back) forgive_if_whole(g);
  seen = present;
  if (!lost.empty() && g.joined() > 0) {
    std::map<int32_t, std::vector<int32_t>> by_node;  // one message (and one decision) per node
    for (int32_t r : lost) by_node[g.spec().placement[static_cast<size_t>(r)].node].push_back(r);
    for (const auto& [node, ranks] : by_node)
      if (node == gone_node) remote_ranks_lost(g, ranks, why, true);
      else remote_ranks_lost(g, ranks, "its daemon reports them gone (they left)", false);
  }
  maybe_complete_joins(g);
  for (int32_t slot = 0; slot < g.spec().slots; ++slot) try_submit(g, slot);  // a node that came back can receive now
}

void Rendezvous::remote_ranks_lost(Group& g, const std::vector<int32_t>& ranks, const std::string& why, bool node_gone) {
  const int32_t node = g.spec().placement[static_cast<size_t>(ranks[0])].node;
  const std::string msg = "group '" + g.spec().name + "': rank" + plural(ranks.size()) + " " + cluster::rank_list(ranks) +
                          " on node " + std::to_string(node) + " lost: " + why;
  log_message(LogLevel::kWarn, LogContext{g.spec().name, -1, 0, -1}, msg);
  for (int32_t r : ranks) {
    Group::LostRank& l = g.lost()[static_cast<size_t>(r)];
    l.lost = true;
    l.since_ns = shm::monotonic_ns();
    l.reason = why;
  }
  const Status st(EPD_ERR_PEER_LOST, msg);
  for (int32_t slot = 0; slot < g.spec().slots; ++slot) {
    Group::SlotRendezvous& rv = g.rendezvous(slot);
    // Ranks that left after contributing to this slot's op (their node finished
    // it first) do not spoil it: it completes, and later ops wait for them.
    bool contributed = rv.in_flight;
    if (!contributed && rv.rung_count > 0) {
      contributed = true;
      for (int32_t r : ranks) contributed = contributed && rv.rung[static_cast<size_t>(r)];
      if (!contributed) {
        const auto queued = cluster_->peek_arrival(g.spec().name, g.spec().generation, static_cast<transport::NodeId>(node), slot);
        contributed = queued && (*queued == cluster::OpKind::kDispatch) == (rv.op == Op::kDispatch);
      }
    }
    if (contributed && !node_gone) continue;
    g.fail_slot(slot, st);
  }
}

}  // namespace epd
