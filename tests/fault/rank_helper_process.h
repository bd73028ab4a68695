// rank_helper_process.h — a fault_rank_helper process (rank_helper.cc) seen
// from a test: commands written to its stdin, answers read from its stdout,
// SIGKILLed and reaped by pid. The binary's path is EPD_TEST_RANK_HELPER.
//
// Ownership: a Helper owns its process (registered with the test's Watchdog;
// SIGKILLed and reaped by the destructor unless reaped before) and both pipe
// ends. Thread-safety: one thread at a time, except that reap() and the
// output descriptor may be used from another thread while this one waits.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "harness.h"

namespace epd::test {

class Helper {
 public:
  Helper(Watchdog& wd, const std::string& socket) {
    std::vector<std::string> args = {EPD_TEST_RANK_HELPER, "--socket", socket};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = in[1];
    from_ = out[0];
    if (pid_ > 0) wd.add_pid(pid_);
  }
  ~Helper() {
    if (pid_ > 0 && !reaped_) kill_now();
    if (to_ >= 0) close(to_);
    if (from_ >= 0) close(from_);
  }
  int pid() const { return pid_; }
  // The read end of its stdout: hangs up (POLLHUP) once the process's files are closed.
  int output_fd() const { return from_; }
  void send(const std::string& line) {
    const std::string l = line + "\n";
    ASSERT_EQ(write(to_, l.data(), l.size()), static_cast<ssize_t>(l.size())) << line;
  }
  // The next line within timeout_ms ("" on timeout or EOF).
  std::string line(int timeout_ms = 20000) {
    const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
    for (int guard = 0; guard < 100000; ++guard) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      const int64_t left = (deadline - job::now_ns()) / 1000000;
      pollfd p{from_, POLLIN, 0};
      if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) return "";
      char b[512];
      const ssize_t n = read(from_, b, sizeof b);
      if (n <= 0) return "";
      buf_.append(b, static_cast<size_t>(n));
    }
    return "";
  }
  // Sends `cmd` and returns its answer line.
  std::string ask(const std::string& cmd, int timeout_ms = 20000) {
    send(cmd);
    return line(timeout_ms);
  }
  void kill_now() {
    kill(pid_, SIGKILL);
    reap();
  }
  // Waits for the process to end; its wait status.
  int reap() {
    int st = 0;
    waitpid(pid_, &st, 0);
    reaped_ = true;
    return st;
  }

 private:
  int pid_ = -1, to_ = -1, from_ = -1;
  bool reaped_ = false;
  std::string buf_;
};

}  // namespace epd::test
