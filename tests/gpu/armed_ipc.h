// armed_ipc.h — what the armed-executor tests and the overhead benchmark need
// between a "daemon" process and a "client" process: a SOCK_SEQPACKET
// socketpair carrying a fixed message plus file descriptors (SCM_RIGHTS), a
// receive with a deadline, spawning this same binary as the client role
// (fork + exec, so the child starts CUDA afresh), and a stream sync with a
// deadline. Thread-safety: plain functions; test-local use.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace epd::test {

constexpr int kMaxFds = 64;

// Sends `bytes` of `msg` with `fds` attached. Returns false on error.
inline bool send_msg(int sock, const void* msg, size_t bytes, const std::vector<int>& fds = {}) {
  iovec iov{const_cast<void*>(msg), bytes};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  if (!fds.empty()) {
    mh.msg_control = ctl.data();
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  return ::sendmsg(sock, &mh, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes);
}

// Receives one message of exactly `bytes` within `deadline_ms`; fds received are appended to *fds.
inline bool recv_msg(int sock, void* msg, size_t bytes, int deadline_ms, std::vector<int>* fds = nullptr) {
  pollfd p{sock, POLLIN, 0};
  if (::poll(&p, 1, deadline_ms) != 1) return false;
  iovec iov{msg, bytes};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  mh.msg_control = ctl.data();
  mh.msg_controllen = ctl.size();
  const ssize_t n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  if (n != static_cast<ssize_t>(bytes)) return false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && fds) {
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* d = reinterpret_cast<const int*>(CMSG_DATA(c));
      fds->insert(fds->end(), d, d + k);
    }
  return true;
}

// Starts /proc/self/exe with `args` and EPD_ARMED_CLIENT_FD=<child end of a
// new socketpair>. Returns the child's pid and the parent's end in *sock.
inline pid_t spawn_self(const std::vector<std::string>& args, int* sock) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  const std::string env = "EPD_ARMED_CLIENT_FD=" + std::to_string(sv[1]);
  std::vector<std::string> argv_s = {"/proc/self/exe"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) env_s.emplace_back(*e);
  env_s.push_back(env);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::fcntl(sv[1], F_SETFD, 0);  // the child's end survives exec
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(sv[1]);
  *sock = sv[0];
  return pid;
}

// The socket a spawned client role talks on, or -1 when this process is not one.
inline int client_role_fd() {
  const char* v = std::getenv("EPD_ARMED_CLIENT_FD");
  return v ? std::atoi(v) : -1;
}

// Waits for `pid` to exit within `deadline_ms` (then SIGKILLs it). Returns the wait status, or -1.
inline int reap(pid_t pid, int deadline_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms);
  int st = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return -1;
    }
    ::poll(nullptr, 0, 1);  // 1 ms between checks of a bounded wait
  }
}

// Per-test deadlock watchdog: if the scope is still alive after `seconds`, it
// prints what was running and ends the process (a hung GPU wait must fail the
// test run loudly, not eat the ctest timeout silently).
class Watchdog {
 public:
  Watchdog(const char* what, int seconds) : what_(what) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> l(mu_);
      if (!cv_.wait_for(l, std::chrono::seconds(seconds), [this] { return done_; })) {
        std::fprintf(stderr, "WATCHDOG: %s still running after %d s; exiting\n", what_, seconds);
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(86);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  const char* what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace epd::test
