// server.h — the epd daemon core: one epoll control thread serving the control
// socket, sessions, groups and the doorbell rendezvous; executors run on each
// group's worker thread, never on the control thread.
//
// The control thread never blocks on a client: sockets are non-blocking, each
// session's outgoing queue is bounded (a client that does not read is dropped),
// joins and pending ops are deferred replies with deadlines. Shared memory is
// never trusted: doorbells are read once and may only advance by one.
// Ownership: Server owns sessions, groups, the listening socket (unless it came
// from socket activation, in which case the path is not unlinked).
// Multi-node groups (cluster_glue.cc, with cluster/cluster.h): this daemon
// serves the ranks placed on its node (config [cluster] node_id); the other
// nodes' ranks count as rung when their node's regions have arrived in this
// node's mirror of the workspace, and every node runs the same executor.
// Thread-safety: run() on one thread; request_stop() from any thread or a
// signal handler context via SIGTERM (handled through a signalfd).
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
#include "protocol.h"
#include "status.h"
#include "status_report.h"
#include "thread_pool.h"

namespace epd {

struct Session {
  uint64_t id = 0;
  int fd = -1;
  int doorbell_fd = -1;  // eventfd the client writes after ringing a doorbell
  int32_t pid = 0;
  uint32_t uid = 0, gid = 0;
  bool hello = false;
  std::string name;
  std::shared_ptr<SharedRegion> shm;
  std::array<std::shared_ptr<Member>, shm::kMaxMemberships> members;
  struct Out {
    std::vector<uint8_t> record;
    std::vector<int> fds;  // owned (dup'd), closed after sending
  };
  std::deque<Out> outq;
  bool want_out = false;
  bool closing = false;  // close once outq is flushed
  int protocol_errors = 0;
  int64_t connected_ns = 0;
};

class Server {
 public:
  struct Options {
    DaemonConfig config;
    int listen_fd = -1;        // from socket activation; -1 = bind config.socket_path
    bool handle_signals = true; // SIGTERM/SIGINT through a signalfd
    std::string version = "0.1.0";
  };

  static Result<std::unique_ptr<Server>> create(Options opts);
  ~Server();

  // Serves until SIGTERM/SIGINT or request_stop(); drains and returns OK.
  Status run();
  void request_stop();
  const std::string& socket_path() const { return opts_.config.socket_path; }

 private:
  explicit Server(Options opts) : opts_(std::move(opts)) {}
  Status init();
  Result<Group*> create_group(const GroupSpec& spec);

  // events
  void on_accept();
  void on_session_io(uint64_t sid, uint32_t events);
  void on_doorbell(uint64_t sid);
  void on_completions();
  void on_timers(int64_t now);
  int next_timeout_ms(int64_t now) const;

  // requests
  void handle_record(Session& s, proto::Received& rx);
  void on_hello(Session& s, const proto::Frame& f);
  void on_join(Session& s, const proto::Frame& f);
  void on_leave(Session& s, const proto::Frame& f);
  void on_status(Session& s, const proto::Frame& f);
  void send(Session& s, std::vector<uint8_t> record, std::vector<int> fds = {});
  void send_error(Session& s, uint64_t request_id, const Status& st);
  void flush(Session& s);
  void close_session(uint64_t sid, const char* why);

  // groups and the data path
  void complete_join(Member& m);
  void reply_join_error(Member& m, const Status& st);
  void remove_member(std::shared_ptr<Member> m, const std::string& reason);
  void retire_group(const std::string& name, const std::string& why);
  void maybe_destroy_group(Group* g);
  void scan_doorbells(Member& m);
  // staged: a host-staged GPU rank's ring (GpuStage), not a host doorbell.
  void on_ring(Member& m, int32_t slot, Op op, uint32_t seq, uint32_t mode, bool staged = false);
  void on_stage_events();  // rings the GpuStages of multi-node GPU groups queued
  void try_submit(Group& g, int32_t slot);
  void fail_pending(Group& g, int32_t slot, const Status& st, Phase reset_to);
  Group* group_by_id(uint64_t id);

  // multi-node (cluster_glue.cc): this daemon serves the ranks placed on its
  // node; the cluster link carries the other nodes' ranks.
  Status init_cluster();
  bool is_local(const Group& g, int32_t rank) const;
  bool multi_node(const Group& g) const;
  Status check_placement(const GroupSpec& spec) const;
  Status attach_cluster(Group& g);
  void cluster_present_changed(Group& g);
  void maybe_complete_joins(Group& g);
  std::vector<int32_t> missing_ranks(Group& g) const;
  bool ship_if_ready(Group& g, int32_t slot);
  void apply_arrivals(Group& g, int32_t slot);
  void on_cluster_events();
  // Re-reads what the other nodes said about g. `gone_node` (or -1) is the node
  // whose daemon or link just failed with `why`; other nodes' ranks that vanished left.
  void on_remote_state(Group& g, int64_t gone_node, const std::string& why);
  // node_gone: the node's daemon or link failed (every pending op fails), else
  // its ranks left (ops they already contributed to still complete).
  void remote_ranks_lost(Group& g, const std::vector<int32_t>& ranks, const std::string& why, bool node_gone);

  void begin_shutdown(const char* why);
  StatusSnapshot snapshot() const;

  Options opts_;
  std::unique_ptr<ThreadPool> pool_;
  int epfd_ = -1, listen_fd_ = -1, signal_fd_ = -1, completion_fd_ = -1, stop_fd_ = -1;
  int stage_fd_ = -1;  // eventfd: a GpuStage queued rings
  bool own_socket_path_ = false;
  bool shutting_down_ = false;
  int64_t started_ns_ = 0;
  std::string gpu_summary_;  // GPUs and MPS, or why GPU groups are unavailable (init)
  int64_t watchdog_period_ns_ = 0, next_watchdog_ns_ = 0;
  int64_t next_status_ns_ = 0;
  std::string last_status_line_;
  uint64_t next_session_id_ = 1, next_group_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, std::unique_ptr<Group>> groups_;   // live groups by name
  std::vector<std::unique_ptr<Group>> retired_;            // replaced, still holding members

  std::unique_ptr<cluster::ClusterLink> cluster_;      // null: single node
  std::map<uint64_t, std::vector<uint8_t>> remote_seen_;  // group id → remote ranks last seen present

  std::mutex completions_mu_;
  std::vector<Completion> completions_;
};

}  // namespace epd
