// epctl_query.cc — the STATUS query behind epctl.
#include "epctl_query.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "protocol.h"
#include "shm_layout.h"

namespace epd {

namespace {

Result<int> hello(const std::string& socket, std::string& version);

epd_status_t fail(std::string& body, const Status& st) {
  body = st.to_string();
  return st.code();
}

// Receives the record answering `rid` within the deadline (fds are closed).
Result<std::vector<uint8_t>> receive(int sock, uint64_t rid, int64_t deadline) {
  for (;;) {
    const int64_t left = deadline - shm::monotonic_ns();
    if (left <= 0) return make_status(EPD_ERR_TIMEOUT, "no reply from epd within 5000 ms");
    pollfd p{sock, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left / 1000000 + 1)) <= 0) continue;
    proto::Received rx;
    if (proto::recv_record(sock, rx, false) < 0 || rx.eof)
      return make_status(EPD_ERR_DAEMON_LOST, "epd closed the connection");
    for (int fd : rx.fds) close(fd);
    auto f = proto::decode_frame(rx.data.data(), rx.data.size());
    if (!f) return f.status();
    if (f->header.request_id != rid) continue;
    if (f->header.type == proto::MsgType::kError) {
      auto r = proto::decode_reply(*f);
      if (!r) return r.status();
      return Status(static_cast<epd_status_t>(r->status), r->message);
    }
    return std::move(rx.data);
  }
}

}  // namespace

epd_status_t query_daemon_status(const std::string& socket, const std::string& what, bool json, std::string& body) {
  proto::StatusQuery q;
  q.json = json ? 1 : 0;
  if (what == "status") q.what = proto::StatusWhat::kStatus;
  else if (what == "groups") q.what = proto::StatusWhat::kGroups;
  else if (what == "ranks") q.what = proto::StatusWhat::kRanks;
  else if (what == "counters") q.what = proto::StatusWhat::kCounters;
  else if (what == "all") q.what = proto::StatusWhat::kAll;
  else if (what == "sessions" || what == "clients") q.what = proto::StatusWhat::kSessions;
  else if (what == "topology") q.what = proto::StatusWhat::kTopology;
  else
    return fail(body, make_status(EPD_ERR_INVALID_ARGUMENT, "'%s' is not one of: %s", what.c_str(),
                                  kEpctlSubcommands));
  std::string version;
  Result<int> fd = hello(socket, version);
  if (!fd) return fail(body, fd.status());
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{*fd};
  const int64_t deadline = shm::monotonic_ns() + 5000000000LL;
  if (proto::send_record(*fd, proto::encode(q, 2), nullptr, 0, false) != 0)
    return fail(body, make_status(EPD_ERR_DAEMON_LOST, "epd closed the connection"));
  auto rec = receive(*fd, 2, deadline);
  if (!rec) return fail(body, rec.status());
  auto f = proto::decode_frame(rec->data(), rec->size());
  if (!f) return fail(body, f.status());
  auto r = proto::decode_status_reply(*f);
  if (!r) return fail(body, r.status());
  body = r->body;
  return static_cast<epd_status_t>(r->status);
}

epd_status_t query_daemon_version(const std::string& socket, std::string& body) {
  Result<int> fd = hello(socket, body);
  if (!fd) return fail(body, fd.status());
  close(*fd);
  return EPD_OK;
}

namespace {

// Connects and says HELLO; the connected socket, the daemon's version in `version`.
Result<int> hello(const std::string& socket, std::string& version) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket.size() >= sizeof addr.sun_path)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "socket path '%s' is too long", socket.c_str());
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno);
  auto give_up = [fd](const Status& st) -> Result<int> {
    close(fd);
    return st;
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return give_up(make_status(EPD_ERR_DAEMON_LOST, "connect(%s): %s (is epd running?)", socket.c_str(),
                               strerror(errno)));
  const int64_t deadline = shm::monotonic_ns() + 5000000000LL;
  if (proto::send_record(fd, proto::encode(proto::Hello{static_cast<uint32_t>(getpid()), "epctl"}, 1), nullptr, 0,
                         false) != 0)
    return give_up(make_status(EPD_ERR_DAEMON_LOST, "epd closed the connection"));
  auto rx = receive(fd, 1, deadline);
  if (!rx) return give_up(rx.status());
  auto hf = proto::decode_frame(rx->data(), rx->size());
  if (!hf) return give_up(hf.status());
  auto hr = proto::decode_hello_reply(*hf);
  if (!hr) return give_up(hr.status());
  if (hr->status != EPD_OK) return give_up(Status(static_cast<epd_status_t>(hr->status), hr->message));
  version = hr->daemon_version;
  return fd;
}

}  // namespace

}  // namespace epd
