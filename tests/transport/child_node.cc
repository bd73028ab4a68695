// child_node.cc — see child_node.h.
#include "child_node.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace epd::transport::test {
namespace {

int thread_count() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return -1;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

[[noreturn]] void child_main(NodeId id, NodeId parent_id, int addr_fd, int ctrl_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  TransportConfig c;
  c.node_id = id;
  c.listen_address = "127.0.0.1:0";
  c.cluster_secret = "test-cluster-secret-0123456789";
  c.peers[parent_id] = "127.0.0.1:1";  // the parent dials; its address is not used
  c.heartbeat_interval = std::chrono::milliseconds(100);
  c.peer_timeout = std::chrono::milliseconds(20000);
  c.log = [](LogSeverity, const std::string&) {};
  static Transport* self = nullptr;
  TransportCallbacks cb;
  cb.on_message = [](NodeId peer, uint32_t tag, const void* data, size_t bytes) {
    (void)self->send(peer, tag, data, bytes, Clock::now());
  };
  cb.on_write = [](NodeId peer, uint32_t imm, size_t) {
    (void)self->send(peer, kWriteAckTag, &imm, sizeof(imm), Clock::now());
  };
  std::vector<uint8_t> region(kChildRegionBytes);
  Result<std::unique_ptr<Transport>> t = create_tcp_transport(c, cb);
  std::string line = t ? (*t)->listen_address() : "ERROR " + t.status().to_string();
  line += "\n";
  if (!t) {
    (void)!::write(addr_fd, line.data(), line.size());
    _exit(2);
  }
  self = t->get();
  (void)(*t)->register_region(kChildRegion, region.data(), region.size());
  (void)!::write(addr_fd, line.data(), line.size());
  ::close(addr_fd);
  Status s = (*t)->connect(parent_id, deadline_after(std::chrono::seconds(20)));
  if (s) {
    pollfd p{ctrl_fd, POLLIN, 0};
    ::poll(&p, 1, 60000);  // until the parent closes the pipe (or 60 s)
  }
  // Skip destructors: _exit right away, the kernel closes the sockets.
  _exit(s ? 0 : 3);
}

}  // namespace

void ChildNode::kill_and_reap() {
  if (ctrl_fd >= 0) ::close(ctrl_fd);
  ctrl_fd = -1;
  if (pid > 0) {
    ::kill(pid, SIGCONT);
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
  }
  pid = -1;
}

bool spawn_child_node(NodeId id, NodeId parent_id, ChildNode* out, std::string* error) {
#ifdef __SANITIZE_THREAD__
  const int kExpectedThreads = thread_count();  // TSan runs its own background thread
#else
  const int kExpectedThreads = 1;
#endif
  if (thread_count() != kExpectedThreads) {
    *error = "test process has " + std::to_string(thread_count()) + " threads; fork needs 1";
    return false;
  }
  int addr_pipe[2], ctrl_pipe[2];
  if (pipe2(addr_pipe, O_CLOEXEC) != 0 || pipe2(ctrl_pipe, O_CLOEXEC) != 0) {
    *error = std::string("pipe2: ") + strerror(errno);
    return false;
  }
  pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + strerror(errno);
    return false;
  }
  if (pid == 0) {
    ::close(addr_pipe[0]);
    ::close(ctrl_pipe[1]);
    child_main(id, parent_id, addr_pipe[1], ctrl_pipe[0]);
  }
  ::close(addr_pipe[1]);
  ::close(ctrl_pipe[0]);
  out->pid = pid;
  out->ctrl_fd = ctrl_pipe[1];
  std::string line;
  char buf[256];
  for (int i = 0; i < 64 && line.find('\n') == std::string::npos; ++i) {
    pollfd p{addr_pipe[0], POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) break;
    ssize_t n = ::read(addr_pipe[0], buf, sizeof(buf));
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  ::close(addr_pipe[0]);
  if (line.empty() || line.rfind("ERROR", 0) == 0 || line.find('\n') == std::string::npos) {
    *error = "child node " + std::to_string(id) + " did not start: " + line;
    out->kill_and_reap();
    return false;
  }
  out->address = line.substr(0, line.find('\n'));
  return true;
}

}  // namespace epd::transport::test
