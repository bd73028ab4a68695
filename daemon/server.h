// server.h — the control part of the epd daemon: one epoll thread serving the
// control socket, the sessions on it and their requests (HELLO, JOIN, LEAVE,
// STATUS, through one handler table in requests.cc), signals and shutdown.
// What happens inside groups — joins completing, slot rendezvous, deadlines,
// executors, other nodes — is the Rendezvous's (rendezvous.h); the Server
// polls its fds and hands it the requests that concern groups.
//
// The control thread never blocks on a client: sockets are non-blocking, each
// session's outgoing queue is bounded (a client that does not read is dropped),
// joins and pending ops are deferred replies with deadlines. Shared memory is
// never trusted: doorbells are read once and may only advance by one.
// Ownership: Server owns sessions, the Rendezvous, the listening socket
// (unless it came from socket activation, in which case the path is not
// unlinked; nor is a path another live daemon still listens on: start-up
// fails naming it). A full fd table never makes the loop spin: the listening
// socket is unwatched for kAcceptBackoffNs and its errors are logged at most
// once a second; a spare descriptor held for the purpose lets it answer a few
// queued connections per back-off with an ERROR naming the limit, so their
// clients get a refusal instead of silence. Shutdown is bounded: kShutdownGraceNs after SIGTERM the loop
// stops even with operations still running (with a warning).
// A client's loss is its socket's EOF, or earlier (server.exit_watch_ms): every
// period the loop reads /proc/<pid>/stat of the sessions that hold a group
// membership (exit_watch.h; at most kExitChecksPerTick a period, round robin)
// and closes, exactly as on EOF, the session of a process seen exiting: a
// killed process releases its files (its socket) only after tearing down its
// memory and GPU contexts, hundreds of ms later.
// Thread-safety: run() on one thread; request_stop() from any
// thread or a signal handler context via SIGTERM (handled through a signalfd).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "protocol.h"
#include "rendezvous.h"
#include "session.h"
#include "status.h"
#include "status_report.h"
#include "thread_pool.h"

namespace epd {

class Server final : public SessionSink {
 public:
  struct Options {
    DaemonConfig config;
    int listen_fd = -1;        // from socket activation; -1 = bind config.socket_path
    bool handle_signals = true; // SIGTERM/SIGINT through a signalfd
    std::string version = EPD_VERSION_STRING;  // the project's version (daemon/CMakeLists.txt)
  };

  static Result<std::unique_ptr<Server>> create(Options opts);
  ~Server() override;

  // Serves until SIGTERM/SIGINT or request_stop(); drains and returns OK.
  Status run();
  void request_stop();
  const std::string& socket_path() const { return opts_.config.socket_path; }

  // SessionSink: queues a record (and fds, closed once sent) for s.
  void send(Session& s, std::vector<uint8_t> record, std::vector<int> fds) override;

 private:
  explicit Server(Options opts) : opts_(std::move(opts)) {}
  Status init();
  Status init_signals();
  Status init_listen_socket();
  void probe_gpus();

  // events
  void dispatch_event(uint64_t data, uint32_t events);
  void on_accept();
  void pause_accepting(int err, int64_t now);  // accept4 failed with err: back off, log (rate-limited)
  void resume_accepting();                     // the back-off has passed: watch the listening socket again
  void refuse_at_fd_limit(int err);            // answer queued connections with an ERROR through the spare fd
  Status refusal_for(uint32_t uid) const;
  void on_session_io(uint64_t sid, uint32_t events);
  void on_doorbell(uint64_t sid);
  Status watch_doorbell(Session& s);  // the session's doorbell eventfd joins the loop
  void after_events(int64_t now);
  void watch_exits(int64_t now);  // sessions whose process is exiting close as on EOF
  int next_timeout_ms(int64_t now) const;

  // requests (requests.cc)
  void handle_record(Session& s, proto::Received& rx);
  void on_hello(Session& s, const proto::Frame& f);
  void on_join(Session& s, const proto::Frame& f);
  void on_leave(Session& s, const proto::Frame& f);
  void on_status(Session& s, const proto::Frame& f);
  void send_error(Session& s, uint64_t request_id, const Status& st);
  void flush(Session& s);
  void close_session(uint64_t sid, const char* why);

  void begin_shutdown(const char* why);
  StatusSnapshot snapshot() const;  // status_snapshot.cc

  Options opts_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Rendezvous> rendezvous_;
  int epfd_ = -1, listen_fd_ = -1, signal_fd_ = -1, stop_fd_ = -1;
  int spare_fd_ = -1;  // /dev/null, closed to accept (and refuse) a connection at the fd limit
  bool own_socket_path_ = false;
  bool shutting_down_ = false;
  std::string stop_reason_ = "no stop requested";  // what began the shutdown, for the stop line
  int64_t shutdown_deadline_ns_ = 0;  // the loop stops at this time even if busy (begin_shutdown)
  int64_t accept_resume_ns_ = 0;      // != 0: listen fd unwatched until then (accept back-off)
  int64_t accept_log_next_ns_ = 0;    // accept errors: next time one may be logged
  uint64_t accept_errors_suppressed_ = 0;
  int64_t started_ns_ = 0;
  std::string gpu_summary_;  // GPUs and MPS, or why GPU groups are unavailable (init)
  int64_t watchdog_period_ns_ = 0, next_watchdog_ns_ = 0;
  int64_t next_status_ns_ = 0;
  int64_t exit_watch_period_ns_ = 0;  // 0: off (server.exit_watch_ms = 0, or /proc not of our pid namespace)
  int64_t next_exit_watch_ns_ = 0;
  uint64_t exit_watch_cursor_ = 0;     // the session id the next period's reads start at
  std::string last_status_line_;
  uint64_t next_session_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
};

}  // namespace epd
