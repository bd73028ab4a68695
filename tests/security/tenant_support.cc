// tenant_support.cc — the daemon, user and run-as helpers of tenant_support.h.
#include "tenant_support.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace epd::test {

std::string join_helper_path() { return EPD_TEST_JOIN_HELPER; }

TenantDaemon::TenantDaemon(const std::string& config_toml) {
  dir_ = std::make_unique<job::TempDir>("epd-sec");
  if (dir_->path().empty() || chmod(dir_->path().c_str(), 0755) != 0) {
    error_ = "cannot make a runtime directory of mode 0755";
    return;
  }
  socket_ = dir_->path() + "/epd.sock";
  const std::string notify = dir_->path() + "/notify.sock";
  notify_fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", notify.c_str());
  if (notify_fd_ < 0 || bind(notify_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    error_ = "cannot bind " + notify + ": " + std::strerror(errno);
    return;
  }
  std::string config;
  if (!config_toml.empty()) {
    config = dir_->path() + "/epd.toml";
    std::ofstream(config) << config_toml;
  }
  child_ = job::Child::spawn({epd_path(), "--config", config, "--socket", socket_, "--socket-mode", "0666",
                              "--log-target", "stderr", "--log-level", "info"},
                             {"NOTIFY_SOCKET=" + notify}, false);
  if (child_.pid() <= 0) {
    error_ = "cannot start " + epd_path();
    return;
  }
  const int64_t deadline = job::now_ns() + 10'000'000'000LL;
  while (job::now_ns() < deadline) {
    pollfd p{notify_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) {
      if (child_.wait(0) >= 0) break;  // it exited
      continue;
    }
    char b[1024];
    const ssize_t n = recv(notify_fd_, b, sizeof b - 1, 0);
    if (n <= 0) continue;
    b[n] = 0;
    if (std::strstr(b, "READY=1")) {
      ok_ = true;
      return;
    }
  }
  error_ = "epd did not report READY=1 (see its stderr above)";
}

int TenantDaemon::stop(int timeout_ms) {
  if (!child_.running()) return child_.wait(0);
  child_.kill(SIGTERM);
  return child_.wait(timeout_ms);
}

TenantDaemon::~TenantDaemon() {
  if (child_.running()) {
    child_.kill(SIGKILL);
    (void)child_.wait(5000);
  }
  if (notify_fd_ >= 0) close(notify_fd_);
}

TestUser::TestUser() {
  if (geteuid() != 0) {
    why_ = "needs root to create a second Unix user (useradd) and run a client as it";
    return;
  }
  name_ = "epdsec" + std::to_string(getpid());
  int rc = -1;
  const std::string out = run_as(0, 0, {"/usr/sbin/useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                        "--user-group", name_},
                                 20000, &rc);
  created_ = rc == 0;
  struct passwd* pw = getpwnam(name_.c_str());
  if (rc != 0 || !pw) {
    why_ = "useradd " + name_ + " failed (exit " + std::to_string(rc) + "): " + out;
    return;
  }
  uid_ = pw->pw_uid;
  gid_ = pw->pw_gid;
}

TestUser::~TestUser() {
  if (!created_) return;
  int rc = -1;
  (void)run_as(0, 0, {"/usr/sbin/userdel", name_}, 20000, &rc);
}

std::string run_as(uid_t uid, gid_t gid, const std::vector<std::string>& argv, int timeout_ms, int* rc) {
  *rc = -1;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return "pipe: " + std::string(std::strerror(errno));
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return "fork: " + std::string(std::strerror(errno));
  }
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    if (uid != 0 || gid != 0) {
      if (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(126);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (;;) {
    const int64_t left_ms = (deadline - job::now_ns()) / 1000000;
    if (left_ms <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left_ms)) <= 0) continue;
    char b[4096];
    const ssize_t n = read(fds[0], b, sizeof b);
    if (n <= 0) break;
    out.append(b, static_cast<size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  if (job::now_ns() >= deadline) kill(pid, SIGKILL);
  if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) && job::now_ns() < deadline) *rc = WEXITSTATUS(status);
  return out;
}

}  // namespace epd::test
