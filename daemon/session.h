// session.h — one client connection of the daemon: its socket, credentials,
// shared session block, doorbell eventfd, the group memberships it holds, its
// queue of replies not yet sent and the watch on its process's exit.
//
// Ownership: the Server owns Sessions (by id); a Member (group.h) points back
// at its Session until one of them goes. Thread-safety: control thread only.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "exit_watch.h"
#include "shared_region.h"
#include "shm_layout.h"

namespace epd {

struct Member;

struct Session {
  uint64_t id = 0;
  int fd = -1;
  int doorbell_fd = -1;  // eventfd the client writes after ringing a doorbell
  int32_t pid = 0;  // SO_PEERCRED: the process that connected (0: another pid namespace)
  uint32_t uid = 0, gid = 0;
  // Set at HELLO (Rendezvous::resolve_credentials): the gid and supplementary
  // groups of the uid (getgrouplist), and whether the peer is root or in
  // server.admin_group (may join, retire and see every group).
  std::vector<uint32_t> groups;
  bool admin = false;
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
  // From HELLO (server.exit_watch_ms > 0): the Server closes the session as
  // on EOF once its process is seen exiting.
  ExitWatch exit_watch;
};

// How the rendezvous answers a session without owning it: the Server sends
// (queued, never blocking) and closes the fds after sending.
class SessionSink {
 public:
  virtual ~SessionSink() = default;
  virtual void send(Session& s, std::vector<uint8_t> record, std::vector<int> fds) = 0;
};

}  // namespace epd
