// server.cc — the control thread: socket setup, the epoll loop, sessions, the
// request handlers (HELLO, JOIN, LEAVE, STATUS) and shutdown. The doorbell
// rendezvous and fault handling are in data_path.cc.
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

#include "logging.h"
#include "sd_glue.h"

namespace epd {

namespace {

enum Tag : uint64_t {
  kListen = 1, kSignal = 2, kCompletion = 3, kStop = 4, kSession = 5, kDoorbell = 6, kCluster = 7, kStage = 8
};
uint64_t tag(Tag t, uint64_t id = 0) { return (static_cast<uint64_t>(t) << 56) | id; }

constexpr size_t kMaxOutQueue = 64;  // records queued for a client that does not read

Status epoll_add(int ep, int fd, uint32_t events, uint64_t data) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) return errno_status("epoll_ctl(ADD)", errno);
  return Status::ok();
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
  completion_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (completion_fd_ < 0 || stop_fd_ < 0) return errno_status("eventfd", errno);
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, completion_fd_, EPOLLIN, tag(kCompletion)));
  stage_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stage_fd_ < 0) return errno_status("eventfd", errno);
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, stage_fd_, EPOLLIN, tag(kStage)));
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, stop_fd_, EPOLLIN, tag(kStop)));

  if (opts_.handle_signals) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, nullptr);
    signal(SIGPIPE, SIG_IGN);
    signal_fd_ = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signal_fd_ < 0) return errno_status("signalfd", errno);
    EPD_RETURN_IF_ERROR(epoll_add(epfd_, signal_fd_, EPOLLIN, tag(kSignal)));
  }
  // After the signal mask: the CUDA driver's own threads, started here,
  // inherit it (else SIGTERM could land on one of them and kill epd).
  if (auto n = gpu_probe(); n) {
    gpu_summary_ = std::to_string(*n) + " GPU(s)";
    for (int32_t d = 0; d < *n; ++d) gpu_summary_ += "; " + gpu_mps_description(d);
    log_message(LogLevel::kInfo, "GPU executor available: " + gpu_summary_);
  } else {
    gpu_summary_ = "GPU groups unavailable: " + n.status().message();
    log_message(LogLevel::kInfo, gpu_summary_);
  }

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
  } else {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "socket path '%s' is empty or longer than %zu bytes",
                         path.c_str(), sizeof addr.sun_path - 1);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) return errno_status("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
    struct stat sb;
    if (lstat(path.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode)) unlink(path.c_str());  // stale socket
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      return make_status(EPD_ERR_SYSTEM, "bind(%s): %s", path.c_str(), strerror(errno));
    own_socket_path_ = true;
    if (chmod(path.c_str(), opts_.config.socket_mode) != 0)
      return make_status(EPD_ERR_SYSTEM, "chmod(%s, %o): %s", path.c_str(), opts_.config.socket_mode,
                         strerror(errno));
    if (!opts_.config.socket_group.empty()) {
      group* g = getgrnam(opts_.config.socket_group.c_str());
      if (!g) return make_status(EPD_ERR_INVALID_ARGUMENT, "socket_group '%s' does not exist",
                                 opts_.config.socket_group.c_str());
      if (chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0)
        return make_status(EPD_ERR_PERMISSION, "chown(%s, group %s): %s", path.c_str(),
                           opts_.config.socket_group.c_str(), strerror(errno));
    }
    if (listen(listen_fd_, 128) != 0) return errno_status("listen", errno);
  }
  EPD_RETURN_IF_ERROR(epoll_add(epfd_, listen_fd_, EPOLLIN, tag(kListen)));

  pool_ = std::make_unique<ThreadPool>(opts_.config.host_threads);
  EPD_RETURN_IF_ERROR(init_cluster());
  if (cluster_) EPD_RETURN_IF_ERROR(epoll_add(epfd_, cluster_->event_fd(), EPOLLIN, tag(kCluster)));
  // Groups declared in the config exist (with their memory) before any worker joins.
  for (GroupSpec spec : opts_.config.groups) {
    if (spec.timeout_ms == 0) spec.timeout_ms = opts_.config.join_timeout_ms;
    if (Status st = spec.validate(); !st)
      return make_status(st.code(), "config group '%s': %s", spec.name.c_str(), st.message().c_str());
    if (groups_.count(spec.name))
      return make_status(EPD_ERR_INVALID_SPEC, "config declares group '%s' twice", spec.name.c_str());
    auto g = create_group(spec);
    if (!g) return make_status(g.status().code(), "config group '%s': %s", spec.name.c_str(), g.status().message().c_str());
    g.value()->pinned = true;
  }

  const auto wd = watchdog_interval();
  if (wd.count() > 0) {
    watchdog_period_ns_ = static_cast<int64_t>(wd.count()) * 1000 / 2;
    next_watchdog_ns_ = started_ns_ + watchdog_period_ns_;
  }
  return Status::ok();
}

Server::~Server() {
  sessions_.clear();
  groups_.clear();
  retired_.clear();
  for (int fd : {epfd_, signal_fd_, completion_fd_, stop_fd_, stage_fd_})
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
  auto consider = [&](const Group& g) {
    for (const auto& m : const_cast<Group&>(g).members())
      if (m && !m->joined) next = std::min(next, m->join_deadline_ns);
    for (int32_t s = 0; s < g.spec().slots; ++s) {
      const auto& rv = const_cast<Group&>(g).rendezvous(s);
      if (rv.rung_count > 0 && !rv.in_flight)
        next = std::min<int64_t>(next, rv.first_ring_ns + static_cast<int64_t>(g.spec().timeout_ms) * 1000000LL);
    }
  };
  for (const auto& [n, g] : groups_) consider(*g);
  const int64_t ms = (next - now + 999999) / 1000000;
  return static_cast<int>(std::clamp<int64_t>(ms, 0, 1000));
}

Status Server::run() {
  log_message(LogLevel::kInfo, "epd " + opts_.version + " serving on " + opts_.config.socket_path +
                                   " (host executor" +
                                   (cluster_ ? std::string(", node ") + std::to_string(cluster_->node_id()) +
                                                   ", daemon-to-daemon transport " + cluster_->transport_name() +
                                                   " on " + cluster_->listen_address()
                                             : std::string(", single node")) +
                                   ")");
  Status st = notify_ready("serving on " + opts_.config.socket_path);
  if (!st) log_message(LogLevel::kWarn, "sd_notify READY failed: " + st.to_string());
  epoll_event evs[64];
  for (;;) {
    const int64_t now = shm::monotonic_ns();
    const int n = epoll_wait(epfd_, evs, 64, next_timeout_ms(now));
    if (n < 0 && errno != EINTR) return errno_status("epoll_wait", errno);
    for (int i = 0; i < std::max(n, 0); ++i) {
      const uint64_t t = evs[i].data.u64 >> 56, id = evs[i].data.u64 & ((1ULL << 56) - 1);
      switch (t) {
        case kListen: on_accept(); break;
        case kSignal: {
          signalfd_siginfo si;
          while (read(signal_fd_, &si, sizeof si) == sizeof si) {
          }
          begin_shutdown("signal");
          break;
        }
        case kStop: {
          uint64_t v;
          if (read(stop_fd_, &v, sizeof v) > 0) begin_shutdown("stop requested");
          break;
        }
        case kCompletion: on_completions(); break;
        case kStage: on_stage_events(); break;
        case kSession: on_session_io(id, evs[i].events); break;
        case kDoorbell: on_doorbell(id); break;
        case kCluster: on_cluster_events(); break;
        default: break;
      }
    }
    const int64_t after = shm::monotonic_ns();
    on_timers(after);
    if (after >= next_status_ns_) {  // STATUS= for systemctl status, at most once a second
      next_status_ns_ = after + 1000000000LL;
      size_t ranks = 0;
      for (const auto& [name, g] : groups_) ranks += static_cast<size_t>(g->joined());
      const std::string line = std::to_string(groups_.size()) + " groups, " + std::to_string(ranks) +
                               " ranks joined, " + std::to_string(sessions_.size()) + " sessions";
      if (line != last_status_line_) {
        (void)notify_status(line);
        last_status_line_ = line;
      }
    }
    if (watchdog_period_ns_ > 0 && after >= next_watchdog_ns_) {
      (void)notify_watchdog();
      next_watchdog_ns_ = after + watchdog_period_ns_;
    }
    if (shutting_down_) {
      int32_t busy = 0;
      for (const auto& [name, g] : groups_) busy += g->in_flight();
      for (const auto& g : retired_) busy += g->in_flight();
      if (busy == 0) break;
    }
  }
  for (auto& [sid, s] : sessions_) flush(*s);
  log_message(LogLevel::kInfo, "epd stopped");
  return Status::ok();
}

// ---- sessions ----------------------------------------------------------------------------
void Server::on_accept() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR)
        log_message(LogLevel::kWarn, std::string("accept4: ") + strerror(errno));
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
    const auto& allowed = opts_.config.allowed_uids;
    Status refuse;
    if (shutting_down_) refuse = make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down");
    else if (sessions_.size() >= opts_.config.max_sessions)
      refuse = make_status(EPD_ERR_PERMISSION, "max_sessions = %u reached", opts_.config.max_sessions);
    else if (!allowed.empty() && cred.uid != 0 && std::find(allowed.begin(), allowed.end(), cred.uid) == allowed.end())
      refuse = make_status(EPD_ERR_PERMISSION, "uid %u is not in allowed_uids", cred.uid);
    if (!refuse) {
      log_message(LogLevel::kWarn, LogContext{"", -1, s->id, s->pid}, "refused connection: " + refuse.message());
      (void)proto::send_record(fd, proto::encode(proto::MsgType::kError, proto::Reply{refuse.code(), refuse.message()}, 0),
                               nullptr, 0, true);
      close(fd);
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

void Server::send(Session& s, std::vector<uint8_t> record, std::vector<int> fds) {
  if (s.outq.empty()) {
    const int rc = proto::send_record(s.fd, record, fds.data(), static_cast<int>(fds.size()), true);
    if (rc == 0) {
      for (int fd : fds) close(fd);
      return;
    }
    if (rc != -EAGAIN) {
      for (int fd : fds) close(fd);
      return;  // the hang-up is seen by epoll
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
  send(s, proto::encode(proto::MsgType::kError, proto::Reply{st.code(), st.message()}, request_id));
}

void Server::close_session(uint64_t sid, const char* why) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  std::unique_ptr<Session> s = std::move(it->second);
  sessions_.erase(it);
  log_message(LogLevel::kInfo, LogContext{"", -1, s->id, s->pid}, std::string("session closed: ") + why);
  for (std::shared_ptr<Member> m : s->members)
    if (m) remove_member(m, std::string("its process (pid ") + std::to_string(s->pid) + ", session " +
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

// ---- requests ----------------------------------------------------------------------------
void Server::handle_record(Session& s, proto::Received& rx) {
  for (int fd : rx.fds) close(fd);
  uint64_t request_id = 0;
  if (rx.data.size() >= proto::kHeaderBytes) std::memcpy(&request_id, rx.data.data() + 16, 8);
  Status st;
  if (rx.truncated)
    st = make_status(EPD_ERR_PROTOCOL, "message larger than %zu bytes (or with file descriptors) was truncated",
                     proto::kMaxMessage);
  else if (!rx.fds.empty())
    st = make_status(EPD_ERR_PROTOCOL, "clients never send file descriptors (%zu received)", rx.fds.size());
  rx.fds.clear();
  if (!st) {
    send_error(s, request_id, st);
    return;
  }
  auto f = proto::decode_frame(rx.data.data(), rx.data.size());
  if (!f) {
    log_message(LogLevel::kWarn, LogContext{"", -1, s.id, s.pid}, "bad message: " + f.status().message());
    send_error(s, request_id, f.status());
    if (++s.protocol_errors > 100) {
      s.closing = true;
      shutdown(s.fd, SHUT_RDWR);
    }
    return;
  }
  using proto::MsgType;
  if (!s.hello && f->header.type != MsgType::kHello) {
    send_error(s, request_id, make_status(EPD_ERR_PROTOCOL, "%s before HELLO: HELLO must come first",
                                          proto::msg_type_name(f->header.type)));
    return;
  }
  switch (f->header.type) {
    case MsgType::kHello: on_hello(s, *f); break;
    case MsgType::kJoin: on_join(s, *f); break;
    case MsgType::kLeave: on_leave(s, *f); break;
    case MsgType::kStatus: on_status(s, *f); break;
    default:
      send_error(s, request_id, make_status(EPD_ERR_PROTOCOL, "%s is not a request a client may send",
                                            proto::msg_type_name(f->header.type)));
  }
}

void Server::on_hello(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto h = proto::decode_hello(f);
  if (!h) return send_error(s, rid, h.status());
  if (s.hello) return send_error(s, rid, make_status(EPD_ERR_PROTOCOL, "second HELLO on session %llu",
                                                     static_cast<unsigned long long>(s.id)));
  if (shutting_down_) return send_error(s, rid, make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  const std::string name = "epd-session-" + std::to_string(s.id);
  auto shm_r = SharedRegion::create(name.c_str(), shm::kTotalBytes);
  if (!shm_r) return send_error(s, rid, shm_r.status());
  s.shm = std::move(shm_r.value());
  shm::Header* hdr = shm::header(s.shm->data());
  hdr->magic = shm::kMagic;
  hdr->layout_version = shm::kLayoutVersion;
  hdr->total_bytes = shm::kTotalBytes;
  hdr->max_memberships = shm::kMaxMemberships;
  hdr->membership_offset = shm::kMembershipOffset;
  hdr->membership_stride = sizeof(shm::Membership);
  s.doorbell_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s.doorbell_fd < 0) return send_error(s, rid, errno_status("eventfd", errno));
  Status st = epoll_add(epfd_, s.doorbell_fd, EPOLLIN, tag(kDoorbell, s.id));
  if (!st) return send_error(s, rid, st);
  s.hello = true;
  s.name = h->client_name;
  proto::HelloReply r;
  r.daemon_pid = static_cast<uint32_t>(getpid());
  r.daemon_version = opts_.version;
  r.capabilities = proto::kCapHostExecutor | proto::kCapRankMajor | proto::kCapExpertMajor | proto::kCapFp8Dispatch |
                   (gpu_probe() ? proto::kCapGpuExecutor : 0);
  r.session_id = s.id;
  r.shm_bytes = shm::kTotalBytes;
  send(s, proto::encode(r, rid), {dup(s.shm->fd()), dup(s.doorbell_fd)});
}

void Server::on_status(Session& s, const proto::Frame& f) {
  auto q = proto::decode_status_query(f);
  if (!q) return send_error(s, f.header.request_id, q.status());
  proto::StatusReply r;
  r.body = render_status(snapshot(), q->what, q->json != 0);
  if (r.body.size() + 64 > proto::kMaxMessage) r.body.resize(proto::kMaxMessage - 64);
  send(s, proto::encode(r, f.header.request_id));
}

void Server::on_leave(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto l = proto::decode_leave(f);
  if (!l) return send_error(s, rid, l.status());
  if (l->member_index >= shm::kMaxMemberships || !s.members[l->member_index])
    return send(s, proto::encode(proto::MsgType::kLeaveReply,
                                 proto::Reply{EPD_ERR_NOT_JOINED, "member index " + std::to_string(l->member_index) +
                                                                      " holds no group"},
                                 rid));
  std::shared_ptr<Member> m = s.members[l->member_index];
  remove_member(m, "rank " + std::to_string(m->rank) + " left the group (pid " + std::to_string(s.pid) + ")");
  send(s, proto::encode(proto::MsgType::kLeaveReply, proto::Reply{EPD_OK, ""}, rid));
}

void Server::on_join(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto fail = [&](const Status& st) {
    proto::JoinReply r;
    r.status = st.code();
    r.message = st.message();
    send(s, proto::encode(r, rid));
  };
  auto j = proto::decode_join(f);
  if (!j) return fail(j.status());
  GroupSpec spec = std::move(j->spec);
  if (spec.timeout_ms == 0) spec.timeout_ms = opts_.config.join_timeout_ms;
  if (Status st = spec.validate(); !st) return fail(st);
  if (shutting_down_) return fail(make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  if (Status st = check_placement(spec); !st) return fail(st);
  if (auto devices = gpu_devices_of(spec); !devices) return fail(devices.status());
  uint32_t index = shm::kMaxMemberships;
  for (uint32_t i = 0; i < shm::kMaxMemberships; ++i)
    if (!s.members[i]) {
      index = i;
      break;
    }
  if (index == shm::kMaxMemberships)
    return fail(make_status(EPD_ERR_INVALID_ARGUMENT, "session %llu already holds %u group memberships (the maximum)",
                            static_cast<unsigned long long>(s.id), shm::kMaxMemberships));

  auto it = groups_.find(spec.name);
  if (it != groups_.end()) {
    Group& g = *it->second;
    if (spec.generation < g.spec().generation)
      return fail(make_status(EPD_ERR_STALE_GENERATION, "group '%s': generation %llu is older than the group's %llu",
                              spec.name.c_str(), static_cast<unsigned long long>(spec.generation),
                              static_cast<unsigned long long>(g.spec().generation)));
    if (spec.generation > g.spec().generation) {
      retire_group(spec.name, "replaced by generation " + std::to_string(spec.generation));
      it = groups_.end();
    } else {
      if (Status st = g.spec().compare(spec); !st)
        return fail(make_status(st.code(), "group '%s': %s", spec.name.c_str(), st.message().c_str()));
      if (const auto& holder = g.members()[static_cast<size_t>(spec.rank)])
        return fail(make_status(EPD_ERR_DUPLICATE_RANK, "group '%s': rank %d is already %s by session %llu (pid %d)",
                                spec.name.c_str(), spec.rank, holder->joined ? "joined" : "joining",
                                static_cast<unsigned long long>(holder->session_id), holder->pid));
    }
  }
  if (it == groups_.end()) {
    auto g = create_group(spec);
    if (!g) return fail(g.status());
    it = groups_.find(spec.name);
  }
  Group& g = *it->second;
  auto m = std::make_shared<Member>();
  m->session = &s;
  m->shm = s.shm;
  m->session_id = s.id;
  m->pid = s.pid;
  m->uid = s.uid;
  m->group = &g;
  m->rank = spec.rank;
  m->index = index;
  m->join_request = rid;
  m->join_deadline_ns = shm::monotonic_ns() + static_cast<int64_t>(spec.timeout_ms) * 1000000LL;
  s.members[index] = m;
  g.members()[static_cast<size_t>(spec.rank)] = m;
  cluster_present_changed(g);
  maybe_complete_joins(g);
}

Result<Group*> Server::create_group(const GroupSpec& spec) {
  const uint64_t gid = next_group_id_++;
  auto g = Group::create(gid, spec, pool_.get(), [this](Completion c) {
    {
      std::lock_guard<std::mutex> lk(completions_mu_);
      completions_.push_back(std::move(c));
    }
    const uint64_t one = 1;
    if (write(completion_fd_, &one, sizeof one) < 0) {
      // eventfd counter saturation is impossible at this rate.
    }
  });
  if (!g) return g.status();
  g.value()->created_ns = shm::monotonic_ns();
  Group* raw = g.value().get();
  if (spec.placement[0].gpu != EPD_GPU_HOST && spans_nodes(spec)) {
    std::vector<int32_t> local;
    std::vector<uint8_t*> mirror;
    const std::vector<uint64_t> offsets = rank_offsets(raw->layout());
    for (int32_t r = 0; r < spec.world_size; ++r) {
      if (is_local(*raw, r)) local.push_back(r);
      mirror.push_back(raw->workspace().data() + offsets[static_cast<size_t>(r)]);
    }
    const int fd = stage_fd_;
    auto stage = GpuStage::create(spec, local, mirror, [fd] {
      const uint64_t one = 1;
      if (write(fd, &one, sizeof one) < 0) {
        // eventfd counter saturation is impossible at this rate.
      }
    });
    if (!stage) {
      log_message(LogLevel::kWarn, LogContext{spec.name, -1, 0, -1}, "GPU group refused: " + stage.status().message());
      return stage.status();
    }
    raw->stage = std::move(stage.value());
    log_message(LogLevel::kInfo, LogContext{spec.name, -1, 0, -1},
                "GPU group across nodes: " + raw->stage->describe() + ", " +
                    std::to_string(raw->stage->total_bytes()) + " bytes of GPU workspace");
  } else if (spec.placement[0].gpu != EPD_GPU_HOST) {
    auto gpu = GpuGroup::create(spec);
    if (!gpu) {
      log_message(LogLevel::kWarn, LogContext{spec.name, -1, 0, -1}, "GPU group refused: " + gpu.status().message());
      return gpu.status();
    }
    raw->gpu = std::move(gpu.value());
    log_message(LogLevel::kInfo, LogContext{spec.name, -1, 0, -1},
                "GPU group on " + raw->gpu->gpus() + ", " + std::to_string(raw->gpu->total_bytes()) +
                    " bytes of GPU workspace; " + raw->gpu->describe() + "; " +
                    gpu_mps_description(spec.placement[0].gpu));
  }
  if (Status st = attach_cluster(*raw); !st) return st;
  groups_.emplace(spec.name, std::move(g.value()));
  log_message(LogLevel::kInfo, LogContext{spec.name, -1, 0, -1},
              "group created: generation " + std::to_string(spec.generation) + ", world_size " +
                  std::to_string(spec.world_size) + ", workspace " + std::to_string(raw->workspace().size()) +
                  " bytes");
  return raw;
}

void Server::complete_join(Member& m) {
  Group& g = *m.group;
  int gpu_fd = -1;  // a GPU group sends the rank's cuMem workspace instead of the memfd
  if (g.gpu || g.stage) {
    auto fd = g.gpu ? g.gpu->export_fd(m.rank) : g.stage->export_fd(m.rank);
    if (!fd) return reply_join_error(m, fd.status());  // stays pending; its join deadline removes it
    if (g.stage) {
      if (Status st = g.stage->arm(m.rank); !st) {
        close(*fd);
        return reply_join_error(m, st);
      }
    }
    gpu_fd = *fd;
  }
  shm::Membership* e = shm::membership(m.shm->data(), m.index);
  std::memset(static_cast<void*>(e), 0, sizeof *e);
  e->rank = m.rank;
  e->group_id = g.id();
  shm::word(e->active).store(1, std::memory_order_release);
  m.joined = true;
  m.joined_at_ns = shm::monotonic_ns();
  m.slots = {};
  auto& lost = g.lost()[static_cast<size_t>(m.rank)];
  const bool rejoin = lost.lost;
  lost = Group::LostRank{};
  log_message(LogLevel::kInfo, LogContext{g.spec().name, m.rank, m.session_id, m.pid},
              rejoin ? "rank re-joined" : "rank joined");
  proto::JoinReply r;
  r.member_index = m.index;
  r.group_id = g.id();
  r.generation = g.spec().generation;
  if (g.gpu || g.stage) {
    r.gpu_device = g.gpu ? g.gpu->device(m.rank) : g.stage->device(m.rank);
    r.gpu_mapped_bytes = g.gpu ? g.gpu->mapped_bytes(m.rank) : g.stage->mapped_bytes(m.rank);
    if (m.session) send(*m.session, proto::encode(r, m.join_request), {gpu_fd});
    else close(gpu_fd);
    return;
  }
  r.workspace_bytes = g.workspace().size();
  if (m.session) send(*m.session, proto::encode(r, m.join_request), {dup(g.workspace().fd())});
}

void Server::reply_join_error(Member& m, const Status& st) {
  if (!m.session) return;
  proto::JoinReply r;
  r.status = st.code();
  r.message = st.message();
  send(*m.session, proto::encode(r, m.join_request));
}

void Server::begin_shutdown(const char* why) {
  if (shutting_down_) return;
  shutting_down_ = true;
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
    send(*s, proto::encode(proto::MsgType::kShutdown, proto::Reply{st.code(), st.message()}, 0));
  }
  auto drain = [&](Group& g) {
    for (auto& m : g.members())
      if (m && !m->joined) reply_join_error(*m, st);
    for (int32_t slot = 0; slot < g.spec().slots; ++slot)
      if (!g.rendezvous(slot).in_flight) fail_pending(g, slot, st, Phase::kIdle);
  };
  for (auto& [n, g] : groups_) drain(*g);
  for (auto& g : retired_) drain(*g);
}

StatusSnapshot Server::snapshot() const {
  StatusSnapshot s;
  s.pid = getpid();
  s.uptime_s = static_cast<double>(shm::monotonic_ns() - started_ns_) / 1e9;
  s.version = opts_.version;
  s.executor = "host";
  s.gpu = gpu_summary_;
  s.socket_path = opts_.config.socket_path;
  s.log_target = log_target_name();
  s.sessions = static_cast<uint32_t>(sessions_.size());
  s.shutting_down = shutting_down_;
  if (cluster_) s.cluster_threads = cluster_thread_rows(cluster_->pinning(), cluster_->proxy_threads());
  const int64_t now_rt = shm::realtime_ns();
  auto add = [&](const Group& cg) {
    Group& g = const_cast<Group&>(cg);
    const GroupSpec& sp = g.spec();
    StatusSnapshot::GroupRow row;
    row.name = sp.name;
    row.id = g.id();
    row.generation = sp.generation;
    row.world_size = sp.world_size;
    row.joined = g.joined();
    row.joining = g.present() - g.joined();
    row.num_experts = sp.num_experts;
    row.top_k = sp.top_k;
    row.hidden = sp.hidden;
    row.dtype = dtype_name(sp.dtype);
    row.layout = layout_name(sp.layout);
    row.mode = mode_name(sp.mode);
    row.quant = quant_name(sp.dispatch_quant);
    row.max_tokens = sp.max_tokens_per_rank;
    row.slots = sp.slots;
    row.timeout_ms = sp.timeout_ms;
    row.workspace_bytes = g.gpu ? g.gpu->total_bytes() : g.workspace().size();
    row.executor = g.gpu ? g.gpu->gpus() : g.stage ? "GPU ranks host-staged across nodes" : "host";
    if (g.stage)
      if (const Status h = g.stage->health(); !h) row.executor += " (" + h.message() + ")";
    if (g.gpu) {
      uint64_t ops = 0;
      for (int32_t slot = 0; slot < sp.slots; ++slot) ops += g.gpu->completed(slot);
      row.executor += ", " + std::to_string(ops) + " ops since reset";
    }
    if (g.gpu)
      if (const Status health = g.gpu->health(); !health) row.executor += " (" + health.message() + ")";
    if (g.gpu && g.gpu->aborted()) row.executor += " (aborted: waiting for every rank to join again)";
    for (int32_t r = 0; r < sp.world_size; ++r)
      if (g.lost()[static_cast<size_t>(r)].lost) row.lost.push_back(r);
    int32_t local = 0;  // ranks this node serves (all of them on a single node)
    for (int32_t r = 0; r < sp.world_size; ++r) local += is_local(g, r);
    row.state = g.closed ? "closed" : !row.lost.empty() ? "degraded"
                : row.joined == local && missing_ranks(g).empty() ? "running"
                : g.present() == 0 ? "idle" : "joining";
    s.groups.push_back(row);
    for (int32_t r = 0; r < sp.world_size; ++r) {
      StatusSnapshot::RankRow rr;
      rr.group = sp.name;
      rr.generation = sp.generation;
      rr.rank = r;
      const auto& m = g.members()[static_cast<size_t>(r)];
      const auto& lost = g.lost()[static_cast<size_t>(r)];
      if (m) {
        rr.state = m->joined ? "joined" : "joining";
        rr.session = m->session_id;
        rr.pid = m->pid;
        rr.uid = m->uid;
        rr.counters = m->counters;
      } else {
        rr.state = lost.lost ? "lost" : is_local(g, r) ? "absent" : "on node " + std::to_string(sp.placement[static_cast<size_t>(r)].node);
        rr.session = lost.session_id;
        rr.pid = lost.pid;
      }
      if (rr.counters.last_progress_ns > 0)
        rr.last_progress_age_s = static_cast<double>(now_rt - static_cast<int64_t>(rr.counters.last_progress_ns)) / 1e9;
      s.ranks.push_back(rr);
    }
  };
  for (const auto& [n, g] : groups_) add(*g);
  for (const auto& g : retired_) add(*g);
  const int64_t now = shm::monotonic_ns();
  for (const auto& [sid, ss] : sessions_) {
    StatusSnapshot::SessionRow row;
    row.id = sid;
    row.pid = ss->pid;
    row.uid = ss->uid;
    row.gid = ss->gid;
    row.name = ss->name;
    for (const auto& m : ss->members) row.memberships += m != nullptr;
    row.connected_s = static_cast<double>(now - ss->connected_ns) / 1e9;
    s.sessions_list.push_back(row);
  }
  return s;
}

}  // namespace epd
