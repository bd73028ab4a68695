// rendezvous.h — every group of the daemon and what happens between its ranks:
// joins completing when every rank is present, the per-slot rendezvous of
// doorbells (matching, deadlines), handing a complete rendezvous to the
// group's backend, completions, lost ranks and replaced generations, and —
// for groups spanning nodes — shipping to and arriving from the other nodes
// over the cluster link (rendezvous_cluster.cc).
//
// Ownership: owns the groups (live by name, and retired generations still
// holding members), the cluster link and the eventfds its events arrive on.
// Sessions are the Server's: replies go out through its SessionSink.
// Thread-safety: control thread only, except the completion sink the groups'
// workers call (locked) and the backends' wake callbacks (eventfd writes).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cluster.h"
#include "config.h"
#include "group.h"
#include "session.h"
#include "status.h"
#include "status_report.h"
#include "thread_pool.h"

namespace epd {

class Rendezvous {
 public:
  // Starts the cluster link (config [cluster]) and creates the groups the
  // config declares. `sink` outlives the Rendezvous.
  static Result<std::unique_ptr<Rendezvous>> create(const DaemonConfig& config, ThreadPool* pool, SessionSink& sink);
  ~Rendezvous();

  // The fds the control loop polls, and what to call when each is readable.
  int completion_fd() const { return completion_fd_; }
  int rings_fd() const { return rings_fd_; }
  int cluster_fd() const;  // -1: single node
  void on_completions();
  void on_backend_rings();
  void on_cluster_events();

  // JOIN of `spec` by session s into its membership entry `index` (request
  // `rid`): refuses (status), or records the member and completes the joins
  // of the group once every rank is present.
  // Refuses (EPD_ERR_NOT_OWNER) a uid that may not use an existing group or
  // retire its generation, and (EPD_ERR_QUOTA_EXCEEDED) a creation above a
  // [limits] quota.
  Status join(Session& s, uint32_t index, GroupSpec spec, uint64_t rid);
  // The member leaves (LEAVE, its session closed, its join expired).
  void remove_member(std::shared_ptr<Member> m, const std::string& reason);
  // The session rang (eventfd): reads every member's doorbells.
  void on_doorbells(Session& s);

  // Deadlines: expired joins and rendezvous fail; next_deadline_ns() is the
  // earliest one still ahead (or `limit`).
  void on_timers(int64_t now);
  int64_t next_deadline_ns(int64_t limit) const;

  // Shutdown: every pending join and rendezvous fails with st; busy() counts
  // the ops still running (the daemon stops once it is 0).
  void begin_shutdown(const Status& st);
  int32_t busy() const;
  size_t group_count() const { return groups_.size(); }
  int32_t ranks_joined() const;

  // HELLO: fills s.groups (gid + supplementary groups of the uid, through
  // getgrouplist) and s.admin (root, or in server.admin_group).
  void resolve_credentials(Session& s) const;
  // Whether s may see (in epctl) the group with this id: it may join it.
  bool may_see_group(uint64_t group_id, const Session& s) const;

  // Quota use, per uid and over every uid (config groups: totals only).
  struct Usage {
    uint32_t groups = 0;
    uint64_t workspace_bytes = 0;
  };

  // What `epd` logs at start and `epctl status` shows (status_snapshot.cc).
  std::string cluster_summary() const;
  void fill_snapshot(StatusSnapshot& s) const;

 private:
  Rendezvous(const DaemonConfig& config, ThreadPool* pool, SessionSink& sink)
      : config_(config), pool_(pool), sink_(sink) {}
  Status init();
  // creator: the session whose join creates it (owner, quotas); null for a
  // group declared in the config.
  // pending: a newer generation assembled beside the running one (pending_).
  Result<Group*> create_group(const GroupSpec& spec, const Session* creator, bool pending);
  // The group (live, or a newer generation being assembled) a JOIN of spec
  // goes to, created or replaced as its generation asks; or the refusal.
  Result<Group*> group_for_join(const Session& s, const GroupSpec& spec);
  // What a declared group's next generation keeps (pinned, owner, allowed ids).
  struct Access {
    bool pinned = false;
    uint32_t owner_uid = 0;
    std::vector<uint32_t> uids, gids;
  };
  static Access access_of(const Group& g);
  static void inherit(const Access& a, Group& to, bool pin);
  // A pending generation whose ranks all joined replaces the live one.
  void promote_if_complete(Group& g);
  bool may_use(const Group& g, const Session& s) const;
  Status not_owner(const Group& g, const Session& s, const char* what) const;
  Status check_quota(const std::string& name, uint32_t uid, uint64_t bytes) const;
  void release_quota(Group& g);
  Group* group_by_id(uint64_t id);
  void add_group_rows(const Group& g, StatusSnapshot& s) const;

  // joins and members
  void complete_join(Member& m);
  void reply_join_error(Member& m, const Status& st);
  // A lost rank came back: once none is lost and every rank is present, the
  // PEER_LOST owed on slots that were idle at the loss is dropped.
  void forgive_if_whole(Group& g);
  void retire_group(const std::string& name, const std::string& why);  // the live generation
  void retire_pending(const std::string& name, const std::string& why);
  void retire(std::unique_ptr<Group> g, const std::string& why);
  void maybe_destroy_group(Group* g);

  // slots
  void scan_doorbells(Member& m);
  void on_ring(Member& m, int32_t slot, Op op, uint32_t seq, uint32_t mode);
  void try_submit(Group& g, int32_t slot);
  void fail_pending(Group& g, int32_t slot, const Status& st, Phase reset_to);
  void expire_joins(Group& g, int64_t now, std::vector<std::shared_ptr<Member>>& expired);
  void expire_slots(Group& g, int64_t now);

  // across nodes (rendezvous_cluster.cc)
  Status init_cluster();
  bool is_local(const Group& g, int32_t rank) const;
  bool multi_node(const Group& g) const;
  Status check_placement(const GroupSpec& spec) const;
  Status attach_cluster(Group& g);
  void cluster_present_changed(Group& g);
  void maybe_complete_joins(Group& g);
  void refuse_pending_joins(Group& g, const Status& st, LogLevel level, const std::string& log_line);
  std::vector<int32_t> missing_ranks(const Group& g) const;
  bool ship_if_ready(Group& g, int32_t slot);
  void apply_arrivals(Group& g, int32_t slot);
  // Re-reads what the other nodes said about g. `gone_node` (or -1) is the node
  // whose daemon or link just failed with `why`; other nodes' ranks that vanished left.
  void on_remote_state(Group& g, int64_t gone_node, const std::string& why);
  // node_gone: the node's daemon or link failed (every pending op fails), else
  // its ranks left (ops they already contributed to still complete).
  void remote_ranks_lost(Group& g, const std::vector<int32_t>& ranks, const std::string& why, bool node_gone);
  void on_peer_state(const cluster::Event& e);

  const DaemonConfig& config_;
  ThreadPool* pool_;
  SessionSink& sink_;
  int completion_fd_ = -1;
  int rings_fd_ = -1;  // eventfd: a backend queued rings (take_rings)
  bool shutting_down_ = false;
  uint64_t next_group_id_ = 1;
  uint32_t daemon_uid_ = 0;  // owner of config groups that name no allowed_uids/gids
  int64_t admin_gid_ = -1;   // server.admin_group resolved at start; -1: none
  std::map<uint32_t, Usage> usage_;  // per uid, groups a join created
  Usage total_;
  std::map<std::string, std::unique_ptr<Group>> groups_;  // live groups by name
  // A newer generation of a live group that runs, by name, until all its
  // ranks joined (then it replaces the live one) or its joins expire.
  std::map<std::string, std::unique_ptr<Group>> pending_;
  std::vector<std::unique_ptr<Group>> retired_;           // replaced, still holding members

  std::unique_ptr<cluster::ClusterLink> cluster_;        // null: single node
  std::map<uint64_t, std::vector<uint8_t>> remote_seen_;  // group id → remote ranks last seen present

  std::mutex completions_mu_;
  std::vector<Completion> completions_;
};

}  // namespace epd
