// cluster.h — one EP group spanning several nodes: the daemon-to-daemon layer
// on top of the transport (transport/transport.h). Each node's daemon keeps a
// mirror of the whole group workspace (every rank's region at its layout
// offset); this module
//   - agrees on the group with the other nodes: it announces (spec, generation,
//     mirror region, present local ranks) to every node the placement names and
//     compares their announcements with its own spec (a mismatch names the field
//     and both values);
//   - ships, once every local rank rang an op of a slot, the local ranks' send
//     regions (dispatch: header and used rows) or combine_in rows (combine) into
//     every other node's mirror with Transport::write, followed by an OP_DONE
//     message; the receiving daemon then counts that node's ranks as rung;
//   - reports lost / (re)connected nodes.
// Every node then runs the same deterministic HostExecutor over its mirror.
//
// Ownership: ClusterLink owns the Transport, a connector thread and a proxy
// thread. A registered mirror is kept alive (keepalive) while attached and
// while a shipping reads it; detach() deregisters it from the transport and
// then lets it go (a mirror whose deregistration is not confirmed is kept).
// Proxy thread: every transport send and write of the link (announcements and
// shipping) runs there, so the control thread never waits on a peer. It and
// the transport's progress thread are pinned to the CPUs of `ProxyPinning`
// (the NUMA node of the NIC the transport uses; cluster_glue.cc asks the
// topology). Hand-off: one FIFO of jobs, bounded by construction — at most one
// announcement per (group, node) (a newer one replaces a queued one) and one
// shipping per (group, slot) (ship() queues the next only once the previous
// outcome was taken) — so nothing is dropped and nothing waits for room.
// Thread-safety: the public methods are for the daemon's control thread, but
// are safe from any thread (one mutex) and never block on the network, except
// send_op() (tests). Transport callbacks run on its progress thread; they
// only update state under the mutex and signal event_fd(), which the control
// thread polls and then calls take_events().
#pragma once

#include "cpu_list.h"  // format_cpu_list

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "layout.h"
#include "spec.h"
#include "status.h"
#include "transport.h"

namespace epd::cluster {

using transport::NodeId;

enum class OpKind : uint8_t { kDispatch = 1, kCombine = 2 };
const char* op_kind_name(OpKind op);

// Message tags on the transport (the transport's own frames are separate).
constexpr uint32_t kTagGroupState = 0x45504401;  // a node's view of one group
constexpr uint32_t kTagOpDone = 0x45504402;      // a node's regions for (slot, op) are written

struct Event {
  enum class Kind { kArrival, kGroupState, kPeerState, kShipped };
  Kind kind = Kind::kGroupState;
  std::string group;        // kArrival / kGroupState / kShipped
  uint64_t generation = 0;
  NodeId node = 0;
  int32_t slot = -1;        // kArrival / kShipped
  Status status;            // kPeerState: OK (connected) or why the node is lost; kShipped: the outcome
};

// Where the link's proxy thread and the transport's progress thread run.
struct ProxyPinning {
  std::string nic;        // the NIC the transport uses; "" when not known
  int numa_node = -1;     // -1: not pinned
  std::vector<int> cpus;  // OS CPU indexes; empty: not pinned
  std::string reason;     // how it was chosen, or why "...; not pinned" (logged)
};

// What one of those threads got, for the start-up log and `epctl status`
// (`epctl topology` shows only the plan).
struct ProxyThreadState {
  std::string role;           // "shipping proxy" | "transport progress"
  bool started = false;
  int32_t tid = 0;            // its OS thread id (gettid); 0: not started yet
  bool pinned = false;        // the affinity was set to `cpus`
  std::vector<int> affinity;  // the thread's CPUs as read back after pinning (empty: unknown)
  std::string detail;         // the pinning's reason, or the error that left it unpinned
};

// Outcome of ClusterLink::ship().
struct ShipResult {
  enum class State { kNotReady, kPending, kDone, kFailed };
  State state = State::kNotReady;
  Status status;  // kFailed: the error, naming the node
  NodeId node = 0;  // kFailed: the node it concerns
};

// Binds the calling thread to `cpus` (pthread_setaffinity_np) and reads the
// result back into *affinity. EPD_ERR_SYSTEM naming the CPUs and the error.
Status pin_current_thread_to(const std::vector<int>& cpus, std::vector<int>* affinity);

// The file holding the cluster secret must belong to the daemon's uid or
// root and give its group and others no access; else EPD_ERR_PERMISSION
// naming the path, the mode and the owner. ClusterLink::create checks
// config.cluster_secret_file with it before anything starts.
Status check_secret_file(const std::string& path);

// The ranks of `spec` placed on `node`, ascending.
std::vector<int32_t> ranks_on_node(const GroupSpec& spec, int32_t node);
// The nodes `spec` places ranks on, other than `self`, ascending.
std::vector<NodeId> other_nodes(const GroupSpec& spec, NodeId self);
// "ranks 2, 3 (node 1)"-style list.
std::string rank_list(const std::vector<int32_t>& ranks);

// The (offset, bytes) ranges of rank `r`'s region that an op ships to the
// other nodes, relative to the rank's workspace base. Counts are read once from
// `rank_base` and clamped to the layout (the memory is shared with clients).
std::vector<std::pair<uint64_t, uint64_t>> op_ranges(const GroupSpec& spec, const RankLayout& l,
                                                     const uint8_t* rank_base, int32_t slot, OpKind op);

class ClusterLink {
 public:
  // Starts the transport (make_transport: logs which one runs), the connector
  // and the proxy thread, pins the proxy and progress threads per `pinning`
  // and logs, per thread, the transport, NIC and CPUs (or why not pinned).
  // config.peers / node_id / secret come from the daemon config; a
  // config.on_progress_thread_start is replaced.
  static Result<std::unique_ptr<ClusterLink>> create(transport::TransportConfig config,
                                                     ProxyPinning pinning = {});
  ~ClusterLink();
  ClusterLink(const ClusterLink&) = delete;
  ClusterLink& operator=(const ClusterLink&) = delete;

  NodeId node_id() const { return cfg_.node_id; }
  const char* transport_name() const { return transport_->name(); }
  std::string listen_address() const { return transport_->listen_address(); }
  // Adds or changes a node's address (tests that listen on port 0).
  void set_peer_address(NodeId node, const std::string& host_port);
  // Readable (eventfd) when take_events() has something.
  int event_fd() const { return event_fd_; }
  std::vector<Event> take_events();

  // A group of this node whose placement names other nodes: registers its
  // mirror (base, bytes; kept alive by `keepalive`), connects to those nodes
  // and announces it. A group already attached (same name and generation) is OK.
  Status attach(const GroupSpec& spec, uint8_t* base, uint64_t bytes, std::shared_ptr<void> keepalive);
  // The group is gone here: stop announcing it (peers see no ranks present).
  void detach(const std::string& name, uint64_t generation);
  // The local ranks present (joining or joined); announced to the other nodes.
  void set_present(const std::string& name, uint64_t generation, const std::vector<int32_t>& ranks);

  // What the other nodes said about the group: `present[r]` is 1 for every
  // rank of another node that node reports present. Returns the agreement
  // error (EPD_ERR_SPEC_MISMATCH naming the node, field and both values) if any.
  Status remote_present(const std::string& name, uint64_t generation, std::vector<uint8_t>* present) const;

  // Whether every other node is connected and has announced the group (its
  // mirror can be written), whatever ranks it has present.
  bool can_ship(const std::string& name, uint64_t generation) const;
  // Writes the local ranks' regions for (slot, op) into every other node's
  // mirror, then OP_DONE, on the calling thread (blocks up to the group's
  // timeout; tests). Errors name the node (EPD_ERR_PEER_LOST when it is not
  // connected or has not announced the group); *failed_node (if given) is set
  // to it.
  Status send_op(const std::string& name, uint64_t generation, int32_t slot, OpKind op,
                 NodeId* failed_node = nullptr);
  // The same on the proxy thread; never blocks. `ticket` identifies one
  // rendezvous of the slot (the daemon passes its first ring time). The first
  // call queues the shipping (kPending), or returns kNotReady while
  // can_ship() is false; when the proxy is done it pushes Event::kShipped,
  // and the next call returns kDone, or kFailed with send_op()'s error (its
  // deadline: the group's timeout from the first call) — once: the outcome
  // is then forgotten. While an earlier rendezvous's shipping of the slot is
  // under way, later tickets get kPending (writes to a mirror stay ordered).
  ShipResult ship(const std::string& name, uint64_t generation, int32_t slot, OpKind op, uint64_t ticket);

  // The pinning asked for, and what the proxy and progress threads got.
  const ProxyPinning& pinning() const { return pinning_; }
  std::vector<ProxyThreadState> proxy_threads() const;

  // Arrivals not yet consumed, per (group, node, slot), in arrival order.
  std::optional<OpKind> peek_arrival(const std::string& name, uint64_t generation, NodeId node, int32_t slot) const;
  void pop_arrival(const std::string& name, uint64_t generation, NodeId node, int32_t slot);

 private:
  struct Remote {
    bool announced = false;
    uint32_t region_id = 0;
    uint64_t region_bytes = 0;
    std::vector<int32_t> present;
    Status error;  // spec mismatch
    std::map<int32_t, std::deque<OpKind>> arrivals;  // by slot
  };
  struct Attached {
    std::shared_ptr<void> keepalive;  // the mirror's memory, released at detach
    GroupSpec spec;
    GroupLayout layout;
    std::vector<uint64_t> offsets;
    uint8_t* base = nullptr;
    uint64_t bytes = 0;
    uint32_t region_id = 0;
    std::vector<int32_t> present;
    std::vector<NodeId> nodes;
    std::map<NodeId, Remote> remotes;
  };
  // The latest announcement per (group name, node), attached or not.
  struct Announcement {
    GroupSpec spec;
    uint32_t region_id = 0;
    uint64_t region_bytes = 0;
    std::vector<int32_t> present;
  };

  // What one shipping writes, gathered under mu_ and run without it.
  struct ShipPlan {
    struct Target {
      NodeId node;
      uint32_t region;
    };
    std::vector<Target> targets;
    std::vector<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>> ranges;  // (rank offset, (offset, bytes))
    std::vector<uint8_t> op_done;
    const uint8_t* base = nullptr;
    std::shared_ptr<void> keepalive;  // base stays mapped while the plan runs
    uint32_t imm = 0;
  };
  using ShipKey = std::tuple<std::string, uint64_t, int32_t>;  // (group, generation, slot)
  struct Ship {
    uint64_t ticket = 0;
    OpKind op = OpKind::kDispatch;
    bool finished = false;
    Status status;
    NodeId node = 0;
  };
  struct Job {  // for the proxy thread
    enum class Kind { kAnnounce, kShip } kind = Kind::kAnnounce;
    std::string group;
    uint64_t generation = 0;
    NodeId node = 0;               // kAnnounce: the recipient
    std::vector<uint8_t> message;  // kAnnounce: the encoded state
    int32_t slot = -1;             // kShip
    uint64_t ticket = 0;           // kShip
    transport::Deadline deadline;  // kShip
  };

  ClusterLink(transport::TransportConfig cfg, ProxyPinning pinning)
      : cfg_(std::move(cfg)), pinning_(std::move(pinning)) {}
  void on_message(NodeId peer, uint32_t tag, const void* data, size_t bytes);
  void on_peer_state(NodeId peer, const Status& st);
  void push_event(Event e);  // under mu_
  void announce(const Attached& g, NodeId peer);  // under mu_: queues it for the proxy
  void apply_announcement(Attached& g, NodeId peer, const Announcement& a);  // under mu_
  void connector_loop();
  void proxy_loop();
  void run_ship(std::unique_lock<std::mutex>& l, const Job& job);  // proxy thread, mu_ held on entry and exit
  // Pins the calling thread (proxy or progress) and records it in threads_[index].
  void on_thread_start(size_t index);
  bool can_ship_locked(const std::string& name, uint64_t generation) const;
  Status plan_ship(const std::string& name, uint64_t generation, int32_t slot, OpKind op, ShipPlan* plan,
                   NodeId* failed_node) const;  // under mu_
  Status run_plan(const ShipPlan& plan, transport::Deadline deadline, NodeId* failed_node);  // without mu_
  std::vector<uint8_t> encode_state(const Attached& g) const;

  transport::TransportConfig cfg_;
  const ProxyPinning pinning_;
  int event_fd_ = -1;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::map<std::pair<std::string, uint64_t>, Attached> groups_;
  std::map<std::pair<std::string, NodeId>, std::pair<uint64_t, Announcement>> announcements_;
  std::set<NodeId> connected_;
  std::vector<std::shared_ptr<void>> unreleased_;  // mirrors whose deregistration failed: still writable
  uint32_t next_region_id_ = 1;
  std::vector<Event> events_;
  std::deque<Job> jobs_;             // for the proxy thread (bounds: see the header comment)
  std::condition_variable jobs_cv_;
  std::map<ShipKey, Ship> ships_;    // queued, running or finished and not yet taken
  ProxyThreadState threads_[2];      // [0] shipping proxy, [1] transport progress
  std::condition_variable threads_cv_;
  std::thread connector_;
  std::thread proxy_;
  std::unique_ptr<transport::Transport> transport_;  // last: stopped first in the destructor
};

}  // namespace epd::cluster
