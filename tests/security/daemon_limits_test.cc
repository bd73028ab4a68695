// daemon_limits_test.cc — issue 14, finding 5 (the daemon side) against the
// real `epd`: at its file-descriptor limit the daemon backs off instead of
// spinning on accept (few log lines, and it serves again once clients close);
// a second daemon on a live socket path refuses to start and leaves the first
// serving (a stale path is reused); SIGTERM ends the daemon within the
// shutdown bound with a join or a rendezvous pending. The daemons here are
// started by this file (stderr to a log file, RLIMIT_NOFILE set in the child
// before exec); readiness is READY=1, log lines are awaited through inotify,
// processes are ended by pid. Label: security.
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"
#include "protocol.h"

namespace epd::test {
namespace {

using Clock = std::chrono::steady_clock;

// The daemon's worst case after SIGTERM: 10 s for running operations
// (kShutdownGraceNs) and 5 s of teardown (main.cc), with margin.
constexpr int kStopBoundMs = 17000;

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t count_lines_with(const std::string& text, const std::string& what) {
  std::stringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find(what) != std::string::npos;
  return n;
}

// Waits until pred(contents of path) holds, woken by inotify on each write;
// false at the deadline.
bool wait_file(const std::string& path, const std::function<bool(const std::string&)>& pred, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  const int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in < 0) return false;
  const bool watched = inotify_add_watch(in, path.c_str(), IN_MODIFY | IN_CLOSE_WRITE) >= 0;
  bool ok = false;
  for (int i = 0; i < 100000 && watched; ++i) {  // each pass is woken by a write
    if (pred(read_all(path))) {
      ok = true;
      break;
    }
    pollfd p{in, POLLIN, 0};
    if (poll(&p, 1, ms_left(deadline)) <= 0) {
      ok = pred(read_all(path));
      break;
    }
    char buf[4096];
    while (read(in, buf, sizeof buf) > 0) {
    }
  }
  close(in);
  return ok;
}

// One `epd` started by fork/exec with its stderr in `log`, NOTIFY_SOCKET set
// and, where nofile > 0, RLIMIT_NOFILE = nofile:nofile. Killed (SIGKILL, by
// pid) in the destructor if still running.
class LoggedDaemon {
 public:
  LoggedDaemon(const std::string& dir, const std::string& name, const std::string& socket, rlim_t nofile = 0)
      : log_(dir + "/" + name + ".log") {
    const std::string notify = dir + "/" + name + ".notify";
    notify_fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", notify.c_str());
    if (notify_fd_ < 0 || bind(notify_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    // Everything the child needs is built before fork (the test has threads).
    std::vector<std::string> args = {epd_path(), "--config", "", "--socket", socket, "--log-target", "stderr",
                                     "--log-level", "info"};
    std::vector<std::string> env_strings = {"NOTIFY_SOCKET=" + notify};
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "NOTIFY_SOCKET=", 14) != 0 && std::strncmp(*e, "LISTEN_", 7) != 0)
        env_strings.emplace_back(*e);
    std::vector<char*> argv, envp;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    const int log_fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) return;
    const rlimit rl{nofile, nofile};
    pid_ = fork();
    if (pid_ == 0) {
      if (nofile > 0 && setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(126);
      dup2(log_fd, 1);
      dup2(log_fd, 2);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    close(log_fd);
    if (pid_ > 0) pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  }
  ~LoggedDaemon() {
    if (running()) {
      kill(pid_, SIGKILL);
      (void)wait_exit(10000);
    }
    if (pidfd_ >= 0) close(pidfd_);
    if (notify_fd_ >= 0) close(notify_fd_);
  }
  LoggedDaemon(const LoggedDaemon&) = delete;
  LoggedDaemon& operator=(const LoggedDaemon&) = delete;

  int pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !reaped_; }
  std::string log() const { return read_all(log_); }
  const std::string& log_path() const { return log_; }

  // READY=1 within timeout_ms; false if it exits or the time passes.
  bool wait_ready(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    if (pidfd_ < 0) return false;
    for (int i = 0; i < 1000; ++i) {
      pollfd p[2] = {{notify_fd_, POLLIN, 0}, {pidfd_, POLLIN, 0}};
      if (poll(p, 2, ms_left(deadline)) <= 0) return false;
      if (p[0].revents & POLLIN) {
        char b[1024];
        const ssize_t n = recv(notify_fd_, b, sizeof b - 1, 0);
        if (n > 0) {
          b[n] = 0;
          if (std::strstr(b, "READY=1")) return true;
        }
      } else if (p[1].revents) {
        return false;  // exited
      }
    }
    return false;
  }

  // Exit code (128 + signal when killed) within timeout_ms, or -1.
  int wait_exit(int timeout_ms) {
    if (reaped_) return status_;
    if (pidfd_ < 0) return -1;
    pollfd p{pidfd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return -1;
    int st = 0;
    if (waitpid(pid_, &st, 0) != pid_) return -1;
    reaped_ = true;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
  }

 private:
  std::string log_;
  int notify_fd_ = -1, pidfd_ = -1, pid_ = -1, status_ = -1;
  bool reaped_ = false;
};

// A non-blocking connect: -1 when the listener's backlog is full (or any error).
int try_connect(const std::string& socket) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", socket.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A one-rank host group doing verified dispatch/combine steps through a
// separate worker process (its reference is computed independently of epd).
int worker_round_trip(Watchdog& wd, const std::string& socket, const std::string& group, std::string* out) {
  job::Child w = job::Child::spawn({worker_path(), "--socket", socket, "--group", group, "--rank", "0", "--world", "1",
                                    "--experts", "4", "--top-k", "2", "--hidden", "64", "--max-tokens", "16",
                                    "--steps", "4", "--timeout-ms", "10000"});
  if (w.pid() > 0) wd.add_pid(w.pid());
  std::string line;
  for (int i = 0; i < 100 && w.read_line(line, 30000); ++i) *out += line + "\n";
  return w.wait(30000);
}

class DaemonLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<job::TempDir>("epd-limits");
    watchdog_ = std::make_unique<Watchdog>(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
    socket_ = dir_->path() + "/epd.sock";
  }
  void TearDown() override { watchdog_.reset(); }

  std::unique_ptr<job::TempDir> dir_;
  std::unique_ptr<Watchdog> watchdog_;
  std::string socket_;
};

// Finding 5: on EMFILE the daemon stopped watching its listening socket for
// 100 ms at a time and logged one accept line a second; a HELLO is answered
// even then; once the clients close, it accepts and serves a host group again.
TEST_F(DaemonLimits, FullFdTableBacksOffAndRecovers) {
  constexpr rlim_t kNofile = 64;
  LoggedDaemon d(dir_->path(), "epd", socket_, kNofile);
  ASSERT_GT(d.pid(), 0);
  watchdog_->add_pid(d.pid());
  ASSERT_TRUE(d.wait_ready(10000)) << d.log();
  EXPECT_NE(d.log().find("file descriptor limit: " + std::to_string(kNofile)), std::string::npos) << d.log();

  // More connections than the daemon has descriptors: it accepts until
  // EMFILE, the rest wait in the listen backlog.
  std::vector<int> held;
  for (int i = 0; i < 3 * static_cast<int>(kNofile); ++i) {
    const int fd = try_connect(socket_);
    if (fd < 0) break;
    held.push_back(fd);
  }
  ASSERT_GT(held.size(), kNofile) << "could not queue more connections than the daemon's descriptors";
  // Two accept lines: the first error, and a second one at least a second
  // later (the rate limit) reporting the suppressed retries in between.
  const bool two = wait_file(d.log_path(), [](const std::string& t) { return count_lines_with(t, "accept4:") >= 2; },
                             15000);
  std::string log = d.log();
  EXPECT_TRUE(two) << log;
  EXPECT_NE(log.find("Too many open files"), std::string::npos) << log;
  EXPECT_NE(log.find("more accept errors in the last second"), std::string::npos) << log;
  EXPECT_LT(count_lines_with(log, "accept4:"), 50u) << log;
  ASSERT_TRUE(d.running());
  // A client accepted before the table filled still gets an answer to its
  // HELLO while the daemon has no descriptor to spare: the reply, or an error
  // naming what failed (a failed dup is an error reply), never silence.
  proto::Hello hello;
  hello.client_pid = static_cast<uint32_t>(getpid());
  hello.client_name = "limits-test";
  ASSERT_TRUE(raw_send(held.front(), proto::encode(hello, 7)));
  int32_t status = 0;
  std::string message;
  uint16_t type = 0;
  EXPECT_TRUE(raw_reply(held.front(), 10000, status, message, type)) << d.log();

  for (int fd : held) close(fd);
  held.clear();
  std::string out;
  EXPECT_EQ(worker_round_trip(*watchdog_, socket_, "after-emfile", &out), 0) << out << d.log();
  log = d.log();
  EXPECT_LT(count_lines_with(log, "accept4:"), 50u) << log;

  kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(kStopBoundMs), 0) << d.log();
}

// Finding 5: a second daemon on the path of a live one refuses to start,
// naming the path; the first keeps its socket and serves.
TEST_F(DaemonLimits, SecondDaemonOnLiveSocketRefuses) {
  LoggedDaemon first(dir_->path(), "first", socket_);
  ASSERT_GT(first.pid(), 0);
  watchdog_->add_pid(first.pid());
  ASSERT_TRUE(first.wait_ready(10000)) << first.log();

  LoggedDaemon second(dir_->path(), "second", socket_);
  ASSERT_GT(second.pid(), 0);
  watchdog_->add_pid(second.pid());
  EXPECT_FALSE(second.wait_ready(10000)) << second.log();
  EXPECT_EQ(second.wait_exit(10000), 1) << second.log();
  EXPECT_NE(second.log().find("socket path " + socket_ + " is in use"), std::string::npos) << second.log();
  EXPECT_NE(second.log().find("pid " + std::to_string(first.pid())), std::string::npos) << second.log();

  struct stat sb {};
  ASSERT_EQ(lstat(socket_.c_str(), &sb), 0) << "the live daemon's socket was removed";
  EXPECT_TRUE(S_ISSOCK(sb.st_mode));
  std::string out;
  EXPECT_EQ(worker_round_trip(*watchdog_, socket_, "still-serving", &out), 0) << out << first.log();
  kill(first.pid(), SIGTERM);
  EXPECT_EQ(first.wait_exit(kStopBoundMs), 0) << first.log();
}

// The other side: a socket file nobody listens on (a daemon that died) is
// removed and the new daemon binds the path.
TEST_F(DaemonLimits, StaleSocketFileIsReplaced) {
  {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", socket_.c_str());
    const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
    close(fd);  // the file stays, nobody listens
  }
  LoggedDaemon d(dir_->path(), "epd", socket_);
  ASSERT_GT(d.pid(), 0);
  watchdog_->add_pid(d.pid());
  ASSERT_TRUE(d.wait_ready(10000)) << d.log();
  std::string out;
  EXPECT_EQ(worker_round_trip(*watchdog_, socket_, "after-stale", &out), 0) << out << d.log();
  kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(kStopBoundMs), 0) << d.log();
}

// Finding 5: SIGTERM with a join pending (one of two ranks present) ends the
// daemon within the bound.
TEST_F(DaemonLimits, SigtermWithPendingJoinStopsInBound) {
  LoggedDaemon d(dir_->path(), "epd", socket_);
  ASSERT_GT(d.pid(), 0);
  watchdog_->add_pid(d.pid());
  ASSERT_TRUE(d.wait_ready(10000)) << d.log();
  job::Child w = job::Child::spawn({worker_path(), "--socket", socket_, "--group", "pending-join", "--rank", "0",
                                    "--world", "2", "--experts", "4", "--steps", "1", "--timeout-ms", "60000"});
  ASSERT_GT(w.pid(), 0);
  watchdog_->add_pid(w.pid());
  ASSERT_TRUE(wait_rank_state(socket_, "pending-join", 0, "joining", 20000)) << d.log();
  const auto t0 = Clock::now();
  kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(kStopBoundMs), 0) << d.log();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_LT(ms, kStopBoundMs) << d.log();
  EXPECT_NE(w.wait(20000), -1) << "the worker did not see the daemon stop";
}

// Finding 5: SIGTERM with a rendezvous pending on both slots (each of two
// joined ranks rang a dispatch the other never rings) ends the daemon within
// the bound, and the ranks are told (SHUTTING_DOWN or DAEMON_LOST).
TEST_F(DaemonLimits, SigtermWithPendingRendezvousStopsInBound) {
  LoggedDaemon d(dir_->path(), "epd", socket_);
  ASSERT_GT(d.pid(), 0);
  watchdog_->add_pid(d.pid());
  ASSERT_TRUE(d.wait_ready(10000)) << d.log();
  std::vector<job::Child> workers;
  for (int r = 0; r < 2; ++r) {
    workers.push_back(job::Child::spawn({worker_path(), "--socket", socket_, "--group", "pending-op", "--rank",
                                         std::to_string(r), "--world", "2", "--experts", "4", "--timeout-ms",
                                         "60000", "--ring-and-wait"}));
    ASSERT_GT(workers.back().pid(), 0);
    watchdog_->add_pid(workers.back().pid());
  }
  for (auto& w : workers) {
    std::string line;
    bool waiting = false;
    for (int i = 0; i < 10 && !waiting && w.read_line(line, 20000); ++i) waiting = line.rfind("WAITING", 0) == 0;
    ASSERT_TRUE(waiting) << "last line: " << line << "\n" << d.log();
  }
  const auto t0 = Clock::now();
  kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(kStopBoundMs), 0) << d.log();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_LT(ms, kStopBoundMs) << d.log();
  for (auto& w : workers) EXPECT_EQ(w.wait(20000), 0) << "a rank was not told the daemon stopped";
}

}  // namespace
// Finding 7 (log wording): a rank that leaves normally is "left", not "lost";
// a session that held no group (epctl) closes without an info line; the
// shutdown and stop lines name the signal and who sent it.
TEST_F(DaemonLimits, LogNamesLeavesAndTheStopSignal) {
  LoggedDaemon d(dir_->path(), "epd", socket_);
  ASSERT_GT(d.pid(), 0);
  watchdog_->add_pid(d.pid());
  ASSERT_TRUE(d.wait_ready(10000)) << d.log();
  std::string out;
  ASSERT_EQ(worker_round_trip(*watchdog_, socket_, "leaver", &out), 0) << out;
  job::Child ctl = job::Child::spawn({epctl_path(), "--socket", socket_, "status"});  // a session with no group
  ASSERT_GT(ctl.pid(), 0);
  watchdog_->add_pid(ctl.pid());
  std::string line;
  while (ctl.read_line(line, 10000)) {
  }
  ASSERT_EQ(ctl.wait(10000), 0);
  kill(d.pid(), SIGTERM);
  ASSERT_EQ(d.wait_exit(kStopBoundMs), 0) << d.log();
  const std::string log = d.log();
  EXPECT_NE(log.find("rank 0 left the group"), std::string::npos) << log;
  EXPECT_EQ(log.find("was lost"), std::string::npos) << log;
  EXPECT_EQ(count_lines_with(log, "session closed"), 0u) << log;
  const std::string by = "SIGTERM from pid " + std::to_string(getpid());
  EXPECT_NE(log.find("shutting down: " + by), std::string::npos) << log;
  EXPECT_NE(log.find("epd stopped (" + by + ")"), std::string::npos) << log;
  // A machine without the NVIDIA driver is told so, not "driver version is insufficient".
  if (void* cuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL); cuda) {
    dlclose(cuda);
  } else {
    EXPECT_NE(log.find("no NVIDIA driver on this machine"), std::string::npos) << log;
    EXPECT_EQ(log.find("insufficient"), std::string::npos) << log;
  }
}

}  // namespace epd::test
