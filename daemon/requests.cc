// requests.cc — the control requests a client sends (HELLO, JOIN, LEAVE,
// STATUS): one handler table keyed by message type, each handler decoding its
// payload and answering on the session. Requests about groups go on to the
// Rendezvous.
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "gpu_group.h"
#include "logging.h"
#include "server.h"

namespace epd {

namespace {

// The requests a client may send, each with its handler. A message type not
// listed here is answered with a PROTOCOL error naming it.
struct Handler {
  proto::MsgType type;
  void (Server::*handle)(Session&, const proto::Frame&);
  bool before_hello;  // may come before HELLO
};

}  // namespace

void Server::handle_record(Session& s, proto::Received& rx) {
  static constexpr Handler kHandlers[] = {
      {proto::MsgType::kHello, &Server::on_hello, true},
      {proto::MsgType::kJoin, &Server::on_join, false},
      {proto::MsgType::kLeave, &Server::on_leave, false},
      {proto::MsgType::kStatus, &Server::on_status, false},
  };
  static_assert(proto::handles_every_request(kHandlers), "one handler per client-to-daemon message of core/wire");
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
  if (!st) return send_error(s, request_id, st);
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
  for (const Handler& h : kHandlers) {
    if (h.type != f->header.type) continue;
    if (!s.hello && !h.before_hello)
      return send_error(s, request_id, make_status(EPD_ERR_PROTOCOL, "%s before HELLO: HELLO must come first",
                                                   proto::msg_type_name(f->header.type)));
    return (this->*h.handle)(s, *f);
  }
  send_error(s, request_id,
             make_status(EPD_ERR_PROTOCOL, s.hello ? "%s is not a request a client may send"
                                                   : "%s before HELLO: HELLO must come first",
                         proto::msg_type_name(f->header.type)));
}

void Server::on_hello(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto h = proto::decode_hello(f);
  if (!h) return send_error(s, rid, h.status());
  if (s.hello)
    return send_error(s, rid, make_status(EPD_ERR_PROTOCOL, "second HELLO on session %llu",
                                          static_cast<unsigned long long>(s.id)));
  if (shutting_down_) return send_error(s, rid, make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  // limits.max_sessions_per_uid counts sessions past HELLO (the only ones that
  // hold a session block or may send a request); a refused one stays without
  // HELLO (server.max_sessions bounds those) until the client closes it.
  if (const uint32_t limit = opts_.config.limits.max_sessions_per_uid; limit > 0) {
    uint32_t held = 0;
    for (const auto& [sid, other] : sessions_) held += other->hello && other->uid == s.uid;
    if (held >= limit) {
      const Status st = make_status(EPD_ERR_QUOTA_EXCEEDED,
                                    "limits.max_sessions_per_uid = %u: uid %u already holds %u sessions", limit, s.uid,
                                    held);
      log_message(LogLevel::kWarn, LogContext{"", -1, s.id, s.pid}, "refused session: " + st.message());
      return send_error(s, rid, st);
    }
  }
  rendezvous_->resolve_credentials(s);
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
  if (Status st = watch_doorbell(s); !st) return send_error(s, rid, st);
  s.hello = true;
  s.name = h->client_name;
  proto::HelloReply r;
  r.daemon_pid = static_cast<uint32_t>(getpid());
  r.daemon_version = opts_.version;
  r.capabilities = proto::kCapHostExecutor | proto::kCapRankMajor | proto::kCapExpertMajor | proto::kCapFp8Dispatch |
                   (gpu_probe() ? proto::kCapGpuExecutor : 0);
  r.session_id = s.id;
  r.shm_bytes = shm::kTotalBytes;
  if (f.header.minor >= 2) r.join_timeout_ms = opts_.config.join_timeout_ms;
  send(s, proto::encode(r, rid), {dup(s.shm->fd()), dup(s.doorbell_fd)});
  // After the reply's descriptors: at the file limit the HELLO still succeeds,
  // unwatched. A client in a pid namespace epd cannot see is unwatched too.
  // Either way its loss is noticed at EOF.
  if (exit_watch_period_ns_ > 0) {
    auto w = ExitWatch::open(s.pid);
    if (w)
      s.exit_watch = std::move(w.value());
    else
      log_message(LogLevel::kDebug, LogContext{"", -1, s.id, s.pid},
                  "process exit not watched (its loss is noticed at EOF only): " + w.status().message());
  }
}

void Server::on_status(Session& s, const proto::Frame& f) {
  auto q = proto::decode_status_query(f);
  if (!q) return send_error(s, f.header.request_id, q.status());
  proto::StatusReply r;
  StatusSnapshot snap = snapshot();
  if (!s.admin) {
    // Other tenants' groups, ranks, sessions and quota use are for root and
    // the admin group only: keep the groups this uid may join and its own.
    std::vector<StatusSnapshot::GroupRow> groups;
    for (auto& g : snap.groups)
      if (rendezvous_->may_see_group(g.id, s)) groups.push_back(std::move(g));
    snap.groups = std::move(groups);
    std::vector<StatusSnapshot::RankRow> ranks;
    for (auto& row : snap.ranks) {
      bool seen = false;
      for (const auto& g : snap.groups) seen = seen || (g.name == row.group && g.generation == row.generation);
      if (seen) ranks.push_back(std::move(row));
    }
    snap.ranks = std::move(ranks);
    std::vector<StatusSnapshot::SessionRow> sessions;
    for (auto& x : snap.sessions_list)
      if (x.uid == s.uid) sessions.push_back(std::move(x));
    snap.sessions_list = std::move(sessions);
    snap.sessions = static_cast<uint32_t>(snap.sessions_list.size());
    std::vector<StatusSnapshot::UsageRow> usage;
    for (auto& u : snap.usage)
      if (u.uid == s.uid) usage.push_back(u);
    snap.usage = std::move(usage);
  }
  r.body = render_status(snap, q->what, q->json != 0);
  if (r.body.size() + 64 > proto::kMaxMessage) r.body.resize(proto::kMaxMessage - 64);
  send(s, proto::encode(r, f.header.request_id), {});
}

void Server::on_leave(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto l = proto::decode_leave(f);
  if (!l) return send_error(s, rid, l.status());
  if (l->member_index >= shm::kMaxMemberships || !s.members[l->member_index])
    return send(s,
                proto::encode(proto::MsgType::kLeaveReply,
                              proto::Reply{EPD_ERR_NOT_JOINED,
                                           "member index " + std::to_string(l->member_index) + " holds no group"},
                              rid),
                {});
  std::shared_ptr<Member> m = s.members[l->member_index];
  if (!m->joined) {  // its JOIN is still pending: answer it too, no request goes unanswered
    proto::JoinReply r;
    r.status = EPD_ERR_NOT_JOINED;
    r.message = "join of rank " + std::to_string(m->rank) + " withdrawn by a LEAVE of member index " +
                std::to_string(l->member_index) + " before the group was complete";
    send(s, proto::encode(r, m->join_request), {});
  }
  rendezvous_->remove_member(m, "rank " + std::to_string(m->rank) + " left the group (pid " + std::to_string(s.pid) + ")");
  send(s, proto::encode(proto::MsgType::kLeaveReply, proto::Reply{EPD_OK, ""}, rid), {});
}

void Server::on_join(Session& s, const proto::Frame& f) {
  const uint64_t rid = f.header.request_id;
  auto fail = [&](const Status& st) {
    proto::JoinReply r;
    r.status = st.code();
    r.message = st.message();
    send(s, proto::encode(r, rid), {});
  };
  auto j = proto::decode_join(f);
  if (!j) return fail(j.status());
  GroupSpec spec = std::move(j->spec);
  spec.resolve_timeout(opts_.config.join_timeout_ms);
  if (Status st = spec.validate(); !st) return fail(st);
  if (shutting_down_) return fail(make_status(EPD_ERR_SHUTTING_DOWN, "epd is shutting down"));
  uint32_t index = shm::kMaxMemberships;
  for (uint32_t i = 0; i < shm::kMaxMemberships && index == shm::kMaxMemberships; ++i)
    if (!s.members[i]) index = i;
  if (index == shm::kMaxMemberships)
    return fail(make_status(EPD_ERR_INVALID_ARGUMENT, "session %llu already holds %u group memberships (the maximum)",
                            static_cast<unsigned long long>(s.id), shm::kMaxMemberships));
  if (Status st = rendezvous_->join(s, index, std::move(spec), rid); !st) return fail(st);
}

}  // namespace epd

