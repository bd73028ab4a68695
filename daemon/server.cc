// server.cc — the control thread: socket setup, the epoll loop, sessions and
// shutdown. The request handlers are in requests.cc, everything inside groups
// in rendezvous.cc.
#include "server.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "gpu_group.h"
#include "logging.h"
#include "sd_glue.h"

namespace epd {

namespace {

enum Tag : uint64_t {
  kListen = 1, kSignal = 2, kCompletion = 3, kStop = 4, kSession = 5, kDoorbell = 6, kCluster = 7, kRings = 8
};
uint64_t tag(Tag t, uint64_t id = 0) { return (static_cast<uint64_t>(t) << 56) | id; }

constexpr size_t kMaxOutQueue = 64;  // records queued for a client that does not read
// accept4 failing (EMFILE, ENFILE, ENOBUFS, ENOMEM...): the pending connection
// stays queued, so the listening socket stays readable; it is unwatched this long.
constexpr int64_t kAcceptBackoffNs = 100 * 1000000LL;
constexpr int64_t kAcceptLogIntervalNs = 1000 * 1000000LL;  // one accept error line a second at most
// At the fd limit, queued connections answered with an ERROR per back-off
// (through the spare descriptor): a full backlog (128) is answered in ~3 s.
constexpr int kRefusalsPerBackoff = 4;
// SIGTERM: pending joins and rendezvous fail at once; running ops get this long.
// Below the unit's TimeoutStopSec= (30 s), so systemd never has to SIGKILL.
constexpr int64_t kShutdownGraceNs = 10 * 1000000000LL;
// Exit watch: /proc stat lines read per period at most (a few µs each), so its
// cost stays bounded however many sessions there are; past this many watched
// sessions each is read every ceil(n / kExitChecksPerTick) periods.
constexpr int kExitChecksPerTick = 32;

bool holds_membership(const Session& s) {
  return std::any_of(s.members.begin(), s.members.end(), [](const auto& m) { return m != nullptr; });
}

Status epoll_add(int ep, int fd, uint32_t events, uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) return errno_status("epoll_ctl(ADD)", errno);
  return Status::ok();
}

// Sends a refusal (an ERROR with request id 0) on a connection it then closes.
// What the client already sent (its HELLO) is read first: closing a Unix
// socket with unread data resets the connection, and the client would get
// ECONNRESET instead of the refusal.
void refuse_connection(int fd, const Status& st) {
  (void)proto::send_record(fd, proto::encode(proto::MsgType::kError, proto::Reply{st.code(), st.message()}, 0),
                           nullptr, 0, true);
  char sink[256];
  for (int i = 0; i < 8 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
  }
  close(fd);
}

void drain_eventfd(int fd) {
  uint64_t v;
  while (read(fd, &v, sizeof v) == sizeof v) {
  }
}

}  // namespace

Result<std::unique_ptr<Server>> Server::create(Options opts) {
  std::unique_ptr<Server> s(new Server(std::move(opts)));
  Status st = s->init();
  if (!st) return st;
  return s;
}

Status Server::init() {
  started_ns_ = shm::monotonic_ns();
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return errno_status("epoll_create1", errno);
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0) return errno_status("eventfd", errno);
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (spare_fd_ < 0) return errno_status("open(/dev/null)", errno);
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, stop_fd_, EPOLLIN, tag(kStop)));
  if (opts_.handle_signals) EPD_RETURN_IF_ERROR(init_signals());
  // After the signal mask: the CUDA driver's own threads, started here,
  // inherit it (else SIGTERM could land on one of them and kill epd).
  probe_gpus();
  EPD_RETURN_IF_ERROR(init_listen_socket());
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, listen_fd_, EPOLLIN, tag(kListen)));

  pool_ = std::make_unique<ThreadPool>(opts_.config.host_threads);
  auto rv = Rendezvous::create(opts_.config, pool_.get(), *this);
  if (!rv) return rv.status();
  rendezvous_ = std::move(rv.value());
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, rendezvous_->completion_fd(), EPOLLIN, tag(kCompletion)));
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, rendezvous_->rings_fd(), EPOLLIN, tag(kRings)));
  if (rendezvous_->cluster_fd() >= 0)
    EPD_RETURN_IF_ERROR(epoll_add(epfd_, rendezvous_->cluster_fd(), EPOLLIN, tag(kCluster)));

  if (opts_.config.exit_watch_ms > 0) {
    if (const Status st = proc_shows_own_pid(); st)
      exit_watch_period_ns_ = static_cast<int64_t>(opts_.config.exit_watch_ms) * 1000000;
    else
      log_message(LogLevel::kInfo, "client exit watch off (a lost client is noticed at its socket's EOF only): " +
                                       st.message());
  }
  const auto wd = watchdog_interval();
  if (wd.count() > 0) {
    watchdog_period_ns_ = static_cast<int64_t>(wd.count()) * 1000 / 2;
    next_watchdog_ns_ = started_ns_ + watchdog_period_ns_;
  }
  return Status::ok();
}

Status Server::init_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  signal_fd_ = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd_ < 0) return errno_status("signalfd", errno);
  return epoll_add(epfd_, signal_fd_, EPOLLIN, tag(kSignal));
}

void Server::probe_gpus() {
  if (auto n = gpu_probe(); n) {
    gpu_summary_ = std::to_string(*n) + " GPU(s)";
    for (int32_t d = 0; d < *n; ++d) gpu_summary_ += "; " + gpu_mps_description(d);
    log_message(LogLevel::kInfo, "GPU executor available: " + gpu_summary_);
  } else {
    gpu_summary_ = "GPU groups unavailable: " + n.status().message();
    log_message(LogLevel::kInfo, gpu_summary_);
  }
}

Status Server::init_listen_socket() {
  const std::string& path = opts_.config.socket_path;
  if (opts_.listen_fd >= 0) {
    listen_fd_ = opts_.listen_fd;
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(listen_fd_, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
      return errno_status("getsockopt(SO_TYPE) on the activated socket", errno);
    if (type != SOCK_SEQPACKET)
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "activated socket (fd %d) has type %d, epd needs SOCK_SEQPACKET (%d): set "
                         "SequentialPacket= in epd.socket",
                         listen_fd_, type, SOCK_SEQPACKET);
    fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
    return Status::ok();
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "socket path '%s' is empty or longer than %zu bytes", path.c_str(),
                       sizeof addr.sun_path - 1);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return errno_status("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
  struct stat sb;
  if (lstat(path.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode)) {
    // A socket file is left over by a daemon that died, or belongs to one that
    // still serves: only a connection attempt tells them apart.
    const int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) return errno_status("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
    const int rc = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    const int err = rc == 0 ? 0 : errno;
    ucred peer{};
    socklen_t len = sizeof peer;
    if (rc == 0 && getsockopt(probe, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) peer.pid = 0;
    close(probe);
    if (rc == 0 || err == EAGAIN) {  // EAGAIN: its backlog is full, but it listens
      const std::string who = rc == 0 && peer.pid > 0 ? " (pid " + std::to_string(peer.pid) + ")" : "";
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "socket path %s is in use: a running daemon%s listens on it; stop it first or choose "
                         "another --socket",
                         path.c_str(), who.c_str());
    }
    unlink(path.c_str());  // ECONNREFUSED: nobody listens, the file is stale
  }
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return make_status(EPD_ERR_SYSTEM, "bind(%s): %s", path.c_str(), strerror(errno));
  own_socket_path_ = true;
  if (chmod(path.c_str(), opts_.config.socket_mode) != 0)
    return make_status(EPD_ERR_SYSTEM, "chmod(%s, %o): %s", path.c_str(), opts_.config.socket_mode, strerror(errno));
  if (!opts_.config.socket_group.empty()) {
    group* g = getgrnam(opts_.config.socket_group.c_str());
    if (!g)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "socket_group '%s' does not exist", opts_.config.socket_group.c_str());
    if (chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0)
      return make_status(EPD_ERR_PERMISSION, "chown(%s, group %s): %s", path.c_str(), opts_.config.socket_group.c_str(),
                         strerror(errno));
  }
  if (listen(listen_fd_, 128) != 0) return errno_status("listen", errno);
  return Status::ok();
}

Server::~Server() {
  sessions_.clear();
  rendezvous_.reset();
  for (int fd : {epfd_, signal_fd_, stop_fd_, spare_fd_})
    if (fd >= 0) close(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  if (own_socket_path_) unlink(opts_.config.socket_path.c_str());
}

void Server::request_stop() {
  const uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) {
    // The counter cannot overflow with one write per request; nothing to do.
  }
}

int Server::next_timeout_ms(int64_t now) const {
  int64_t next = now + 1000 * 1000000LL;  // wake at least once a second
  if (watchdog_period_ns_ > 0) next = std::min(next, next_watchdog_ns_);
  if (accept_resume_ns_ != 0) next = std::min(next, accept_resume_ns_);
  if (exit_watch_period_ns_ > 0 && rendezvous_->group_count() > 0) next = std::min(next, next_exit_watch_ns_);
  if (shutting_down_) next = std::min(next, shutdown_deadline_ns_);
  next = rendezvous_->next_deadline_ns(next);
  const int64_t ms = (next - now + 999999) / 1000000;
  return static_cast<int>(std::clamp<int64_t>(ms, 0, 1000));
}

Status Server::run() {
  log_message(LogLevel::kInfo, "epd " + opts_.version + " serving on " + opts_.config.socket_path + " (host executor, " +
                                   rendezvous_->cluster_summary() + ")");
  Status st = notify_ready("serving on " + opts_.config.socket_path);
  if (!st) log_message(LogLevel::kWarn, "sd_notify READY failed: " + st.to_string());
  epoll_event evs[64];
  for (;;) {
    const int n = epoll_wait(epfd_, evs, 64, next_timeout_ms(shm::monotonic_ns()));
    if (n < 0 && errno != EINTR) return errno_status("epoll_wait", errno);
    for (int i = 0; i < std::max(n, 0); ++i) dispatch_event(evs[i].data.u64, evs[i].events);
    after_events(shm::monotonic_ns());
    if (shutting_down_ && rendezvous_->busy() == 0) break;
    if (shutting_down_ && shm::monotonic_ns() >= shutdown_deadline_ns_) {
      log_message(LogLevel::kWarn, std::to_string(rendezvous_->busy()) + " operation(s) still running " +
                                       std::to_string(kShutdownGraceNs / 1000000000) +
                                       " s after the stop request: stopping anyway");
      break;
    }
  }
  for (auto& [sid, s] : sessions_) flush(*s);
  log_message(LogLevel::kInfo, "epd stopped (" + stop_reason_ + ")");
  return Status::ok();
}

void Server::dispatch_event(uint64_t data, uint32_t events) {
  const uint64_t t = data >> 56, id = data & ((1ULL << 56) - 1);
  switch (t) {
    case kListen: on_accept(); break;
    case kSignal: {
      signalfd_siginfo si{};
      std::string why;
      while (read(signal_fd_, &si, sizeof si) == sizeof si)
        if (why.empty())
          why = std::string(si.ssi_signo == SIGTERM ? "SIGTERM" : si.ssi_signo == SIGINT ? "SIGINT" : "a signal") +
                " from pid " + std::to_string(si.ssi_pid);
      begin_shutdown(why.empty() ? "a signal" : why.c_str());
      break;
    }
    case kStop: {
      uint64_t v;
      if (read(stop_fd_, &v, sizeof v) > 0) begin_shutdown("stop requested");
      break;
    }
    case kCompletion: rendezvous_->on_completions(); break;
    case kRings: rendezvous_->on_backend_rings(); break;
    case kSession: on_session_io(id, events); break;
    case kDoorbell: on_doorbell(id); break;
    case kCluster: rendezvous_->on_cluster_events(); break;
    default: break;
  }
}

void Server::after_events(int64_t now) {
  watch_exits(now);
  rendezvous_->on_timers(now);
  if (accept_resume_ns_ != 0 && now >= accept_resume_ns_) resume_accepting();
  if (now >= next_status_ns_) {  // STATUS= for systemctl status, at most once a second
    next_status_ns_ = now + 1000000000LL;
    const std::string line = std::to_string(rendezvous_->group_count()) + " groups, " +
                             std::to_string(rendezvous_->ranks_joined()) + " ranks joined, " +
                             std::to_string(sessions_.size()) + " sessions";
    if (line != last_status_line_) {
      (void)notify_status(line);
      last_status_line_ = line;
    }
  }
  if (watchdog_period_ns_ > 0 && now >= next_watchdog_ns_) {
    (void)notify_watchdog();
    next_watchdog_ns_ = now + watchdog_period_ns_;
  }
}

void Server::watch_exits(int64_t now) {
  if (exit_watch_period_ns_ == 0 || now < next_exit_watch_ns_ || rendezvous_->group_count() == 0) return;
  next_exit_watch_ns_ = now + exit_watch_period_ns_;
  std::vector<std::pair<uint64_t, std::string>> exiting;
  int checks = 0;
  auto it = sessions_.lower_bound(exit_watch_cursor_);
  for (size_t n = 0; n < sessions_.size() && checks < kExitChecksPerTick; ++n, ++it) {
    if (it == sessions_.end()) it = sessions_.begin();
    Session& s = *it->second;
    if (!s.exit_watch.watching() || !holds_membership(s)) continue;
    ++checks;
    std::string why;
    switch (s.exit_watch.check(&why)) {
      case ExitWatch::State::kAlive: break;
      case ExitWatch::State::kExiting: exiting.emplace_back(s.id, std::move(why)); break;
      case ExitWatch::State::kUnwatchable:
        log_message(LogLevel::kDebug, LogContext{"", -1, s.id, s.pid},
                    "process exit no longer watched (its loss is noticed at EOF): " + why);
        s.exit_watch.reset();
        break;
    }
  }
  exit_watch_cursor_ = it == sessions_.end() ? 0 : it->first;
  for (const auto& [sid, why] : exiting) close_session(sid, why.c_str());
}

// ---- sessions ----------------------------------------------------------------------------
Status Server::refusal_for(uint32_t uid) const {
  const auto& allowed = opts_.config.allowed_uids;
  if (shutting_down_) return make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down");
  if (sessions_.size() >= opts_.config.max_sessions)
    return make_status(EPD_ERR_PERMISSION, "max_sessions = %u reached", opts_.config.max_sessions);
  if (!allowed.empty() && uid != 0 && std::find(allowed.begin(), allowed.end(), uid) == allowed.end())
    return make_status(EPD_ERR_PERMISSION, "uid %u is not in allowed_uids", uid);
  return Status::ok();
}

void Server::on_accept() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err != EAGAIN && err != EWOULDBLOCK) {
        if (err == EMFILE || err == ENFILE) refuse_at_fd_limit(err);
        pause_accepting(err, shm::monotonic_ns());
      }
      return;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      close(fd);
      continue;
    }
    auto s = std::make_unique<Session>();
    s->id = next_session_id_++;
    s->fd = fd;
    s->pid = cred.pid;
    s->uid = cred.uid;
    s->gid = cred.gid;
    s->connected_ns = shm::monotonic_ns();
    if (const Status refuse = refusal_for(cred.uid); !refuse) {
      log_message(LogLevel::kWarn, LogContext{"", -1, s->id, s->pid}, "refused connection: " + refuse.message());
      refuse_connection(fd, refuse);
      continue;
    }
    if (!epoll_add(epfd_, fd, EPOLLIN | EPOLLRDHUP, tag(kSession, s->id))) {
      close(fd);
      continue;
    }
    log_message(LogLevel::kDebug, LogContext{"", -1, s->id, s->pid}, "session connected (uid " + std::to_string(cred.uid) + ")");
    sessions_[s->id] = std::move(s);
  }
}

void Server::pause_accepting(int err, int64_t now) {
  // Unwatch the listening socket: its queued connection keeps it readable,
  // and a level-triggered epoll would report it again at once, forever.
  epoll_event ev{};
  ev.data.u64 = tag(kListen);
  if (listen_fd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &ev);
  accept_resume_ns_ = now + kAcceptBackoffNs;
  if (now < accept_log_next_ns_) {
    ++accept_errors_suppressed_;
    return;
  }
  std::string line = std::string("accept4: ") + strerror(err) + " (" + std::to_string(sessions_.size()) +
                     " sessions): not accepting connections for " + std::to_string(kAcceptBackoffNs / 1000000) +
                     " ms";
  if (accept_errors_suppressed_ > 0)
    line += "; " + std::to_string(accept_errors_suppressed_) + " more accept errors in the last second";
  if (err == EMFILE || err == ENFILE) line += " (file descriptor limit: see LimitNOFILE=)";
  log_message(LogLevel::kWarn, line);
  accept_errors_suppressed_ = 0;
  accept_log_next_ns_ = now + kAcceptLogIntervalNs;
}

void Server::refuse_at_fd_limit(int err) {
  // The spare descriptor makes room for one connection at a time: accept it,
  // tell the client why it cannot be served, close it, take the spare back.
  for (int i = 0; i < kRefusalsPerBackoff && spare_fd_ >= 0; ++i) {
    close(spare_fd_);
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0)
      refuse_connection(fd, make_status(EPD_ERR_SYSTEM,
                                        "epd is at its file descriptor limit (%s, %zu sessions): this connection is "
                                        "refused; retry once other clients close, or raise LimitNOFILE=",
                                        strerror(err), sessions_.size()));
    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;  // nothing queued, or the freed slot was taken meanwhile
  }
}

void Server::resume_accepting() {
  accept_resume_ns_ = 0;
  if (listen_fd_ < 0) return;  // closed by begin_shutdown meanwhile
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag(kListen);
  epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &ev);
}

void Server::on_session_io(uint64_t sid, uint32_t events) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (events & EPOLLOUT) flush(s);
  if (events & EPOLLIN) {
    proto::Received rx;
    for (int i = 0; i < 32; ++i) {  // bounded per wake-up: fairness between sessions
      const int rc = proto::recv_record(s.fd, rx, true);
      if (rc == -EAGAIN) break;
      if (rc < 0 || rx.eof) {
        for (int fd : rx.fds) close(fd);
        close_session(sid, rc < 0 ? strerror(-rc) : "connection closed");
        return;
      }
      handle_record(s, rx);
      if (sessions_.find(sid) == sessions_.end()) return;
    }
  }
  if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
    // Input drained above; hang-up means the client is gone.
    if (!(events & EPOLLIN) || (events & (EPOLLHUP | EPOLLERR))) close_session(sid, "hang-up");
  }
}

Status Server::watch_doorbell(Session& s) { return epoll_add(epfd_, s.doorbell_fd, EPOLLIN, tag(kDoorbell, s.id)); }

void Server::on_doorbell(uint64_t sid) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  drain_eventfd(it->second->doorbell_fd);
  rendezvous_->on_doorbells(*it->second);
}

void Server::send(Session& s, std::vector<uint8_t> record, std::vector<int> fds) {
  if (std::any_of(fds.begin(), fds.end(), [](int fd) { return fd < 0; })) {
    // A dup() for this reply failed (out of descriptors): the reply cannot be
    // sent as it is, so the request gets an error instead of no answer.
    const int err = errno;
    for (int fd : fds)
      if (fd >= 0) close(fd);
    auto f = proto::decode_frame(record.data(), record.size());
    const uint64_t rid = f ? f.value().header.request_id : 0;
    const Status st = make_status(EPD_ERR_SYSTEM, "cannot pass a descriptor with the %s reply: dup: %s",
                                  f ? proto::msg_type_name(f.value().header.type) : "daemon's", strerror(err));
    log_message(LogLevel::kWarn, LogContext{"", -1, s.id, s.pid}, st.message());
    return send(s, proto::encode(proto::MsgType::kError, proto::Reply{st.code(), st.message()}, rid), {});
  }
  if (s.outq.empty()) {
    const int rc = proto::send_record(s.fd, record, fds.data(), static_cast<int>(fds.size()), true);
    if (rc == 0 || rc != -EAGAIN) {  // sent, or failed: the hang-up is seen by epoll
      for (int fd : fds) close(fd);
      return;
    }
  }
  if (s.outq.size() >= kMaxOutQueue) {
    for (int fd : fds) close(fd);
    log_message(LogLevel::kWarn, LogContext{"", -1, s.id, s.pid},
                "client does not read its socket (" + std::to_string(kMaxOutQueue) + " replies queued): dropping it");
    s.closing = true;
    shutdown(s.fd, SHUT_RDWR);
    return;
  }
  s.outq.push_back(Session::Out{std::move(record), std::move(fds)});
  if (!s.want_out) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLOUT;
    ev.data.u64 = tag(kSession, s.id);
    epoll_ctl(epfd_, EPOLL_CTL_MOD, s.fd, &ev);
    s.want_out = true;
  }
}

void Server::flush(Session& s) {
  while (!s.outq.empty()) {
    Session::Out& o = s.outq.front();
    const int rc = proto::send_record(s.fd, o.record, o.fds.data(), static_cast<int>(o.fds.size()), true);
    if (rc == -EAGAIN) return;
    for (int fd : o.fds) close(fd);
    s.outq.pop_front();
  }
  if (s.want_out) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = tag(kSession, s.id);
    epoll_ctl(epfd_, EPOLL_CTL_MOD, s.fd, &ev);
    s.want_out = false;
  }
}

void Server::send_error(Session& s, uint64_t request_id, const Status& st) {
  send(s, proto::encode(proto::MsgType::kError, proto::Reply{st.code(), st.message()}, request_id), {});
}

void Server::close_session(uint64_t sid, const char* why) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  std::unique_ptr<Session> s = std::move(it->second);
  sessions_.erase(it);
  const bool held = holds_membership(*s);  // a session that held no group (epctl, a probe) closes at debug level
  log_message(held ? LogLevel::kInfo : LogLevel::kDebug, LogContext{"", -1, s->id, s->pid},
              std::string("session closed: ") + why);
  for (std::shared_ptr<Member> m : s->members)
    if (m)
      rendezvous_->remove_member(m, std::string("its process (pid ") + std::to_string(s->pid) + ", session " +
                                        std::to_string(s->id) + ") is gone: " + why);
  epoll_ctl(epfd_, EPOLL_CTL_DEL, s->fd, nullptr);
  close(s->fd);
  if (s->doorbell_fd >= 0) {
    epoll_ctl(epfd_, EPOLL_CTL_DEL, s->doorbell_fd, nullptr);
    close(s->doorbell_fd);
  }
  for (auto& o : s->outq)
    for (int fd : o.fds) close(fd);
}

void Server::begin_shutdown(const char* why) {
  if (shutting_down_) return;
  shutting_down_ = true;
  shutdown_deadline_ns_ = shm::monotonic_ns() + kShutdownGraceNs;
  stop_reason_ = why;
  log_message(LogLevel::kInfo, std::string("shutting down: ") + why);
  (void)notify_stopping();
  epoll_ctl(epfd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  close(listen_fd_);
  listen_fd_ = -1;
  if (own_socket_path_) unlink(opts_.config.socket_path.c_str());
  own_socket_path_ = false;
  const Status st = make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down (%s)", why);
  for (auto& [sid, s] : sessions_) {
    if (s->shm) shm::word(shm::header(s->shm->data())->daemon_state).store(shm::kShuttingDown);
    send(*s, proto::encode(proto::MsgType::kShutdown, proto::Reply{st.code(), st.message()}, 0), {});
  }
  rendezvous_->begin_shutdown(st);
}

}  // namespace epd
