// service_test_support.h — helpers for the service-glue tests: a private temp
// directory per test, scoped environment variables, a NOTIFY_SOCKET listener,
// and child processes with bounded waits (pidfd + poll; no sleeps).
//
// Everything here is owned by one test and used from its thread only.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace epd::test {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline`, at least 0, for poll().
inline int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
// Short names on purpose: Unix socket paths must fit in 108 bytes.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/epdsvc-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data())) path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name), std::ios::binary) << text;
    return file(name);
  }

 private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sets (or, with nullopt, unsets) a variable for the scope, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, std::optional<std::string> value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    if (value) {
      setenv(name_.c_str(), value->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// A datagram socket standing in for systemd's notify socket. Receives the
// sender's pid too (SO_PASSCRED), as systemd does for NotifyAccess=main.
class NotifyListener {
 public:
  struct Message {
    std::string text;
    pid_t pid = -1;
  };

  // `path` is a filesystem path, or "@name" for the abstract namespace.
  explicit NotifyListener(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) {
      close_fd();
      return;
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    if (path[0] == '@') {
      addr.sun_path[0] = '\0';
    } else {
      len += 1;
    }
    const int one = 1;
    if (::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0 ||
        ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0)
      close_fd();
  }
  ~NotifyListener() { close_fd(); }
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  // The next datagram, or nullopt when none arrives by the deadline.
  std::optional<Message> receive(Clock::time_point deadline) {
    pollfd p{fd_, POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, ms_left(deadline));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return std::nullopt;
    return receive_now();
  }

  // Reads one datagram that poll() reported.
  std::optional<Message> receive_now() {
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    Message m;
    m.text.assign(buf, static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        m.pid = cred.pid;
      }
    }
    return m;
  }

 private:
  void close_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  std::string path_;
  int fd_ = -1;
};

inline int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// A child process started with fork/exec; stdout and stderr go to `log_path`.
// The destructor kills and reaps it if the test did not.
class Child {
 public:
  Child() = default;
  ~Child() { kill_and_reap(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // argv[0] is a path or a name looked up in PATH. `env` replaces the environment
  // when given. Returns false (with errno) when fork or pidfd_open fails; an exec
  // failure shows as exit status 127.
  bool start(const std::vector<std::string>& argv, const std::string& log_path,
             const std::vector<std::string>* env = nullptr) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<char*> envp;
    if (env) {
      for (const auto& e : *env) envp.push_back(const_cast<char*>(e.c_str()));
      envp.push_back(nullptr);
    }
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) return false;
    pid_ = ::fork();
    if (pid_ < 0) {
      ::close(log_fd);
      return false;
    }
    if (pid_ == 0) {
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      ::setpgid(0, 0);
      if (env) {
        ::execvpe(args[0], args.data(), envp.data());
      } else {
        ::execvp(args[0], args.data());
      }
      ::_exit(127);
    }
    ::close(log_fd);
    pidfd_ = pidfd_open(pid_);
    return pidfd_ >= 0;
  }

  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_; }
  bool running() const { return pid_ > 0 && !status_; }

  // Waits for the exit until the deadline; the wait(2) status, or nullopt.
  std::optional<int> wait(Clock::time_point deadline) {
    if (status_) return status_;
    if (pid_ <= 0) return std::nullopt;
    pollfd p{pidfd_, POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, ms_left(deadline));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return std::nullopt;
    return reap();
  }

  // Reaps a child that pidfd reported as exited.
  std::optional<int> reap() {
    int st = 0;
    if (::waitpid(pid_, &st, 0) == pid_) {
      status_ = st;
      ::close(pidfd_);
      pidfd_ = -1;
    }
    return status_;
  }

  void kill_and_reap() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      status_ = st;
    }
    if (pidfd_ >= 0) ::close(pidfd_);
    pidfd_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> status_;
};

// Runs a command to completion (bounded); the exit status (or -1 on a
// timeout or start failure) and its combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};

inline CommandResult run_command(const std::vector<std::string>& argv, const std::string& log_path,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  CommandResult res;
  Child c;
  if (!c.start(argv, log_path)) {
    res.output = std::string("could not start: ") + std::strerror(errno);
    return res;
  }
  std::optional<int> st = c.wait(Clock::now() + timeout);
  res.output = read_file(log_path);
  if (!st) {
    res.output += "\n(timed out)";
    return res;
  }
  res.exit_code = WIFEXITED(*st) ? WEXITSTATUS(*st) : 128 + WTERMSIG(*st);
  return res;
}

// Finds an executable in PATH ("" when missing).
inline std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string p = dir + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

}  // namespace epd::test
