// main_job_lib.h — what the main job, the benchmark and the integration/fault
// tests share: starting the real `epd` (own runtime dir, readiness through a
// private NOTIFY_SOCKET listener), spawning processes with bounded waits
// (pidfd + poll, never sleeps), a deterministic workload every rank can
// regenerate from (seed, rank, step), and the worker loop that checks every
// dispatch and combine against a naive reference written here (plain loops
// over source rank, token and k; it never calls the host executor).
//
// Ownership: DaemonProcess and Child own their pids and fds and end their
// processes by pid in the destructor (SIGKILL) if still running.
// Thread-safety: none of these objects is shared between threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "epd/epd.h"

namespace epd::job {

int64_t now_ns();  // CLOCK_MONOTONIC (system-wide: comparable between processes)

// A child process with its stdout on a pipe.
class Child {
 public:
  Child() = default;
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  // Starts argv[0] with argv; `env` entries ("K=V") are added to the environment.
  static Child spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                     bool capture_stdout = true);
  int pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !reaped_; }
  // Next stdout line, waiting at most timeout_ms; false on timeout or EOF.
  bool read_line(std::string& line, int timeout_ms);
  // Waits for exit at most timeout_ms; returns the exit code, 128+signal, or -1 on timeout.
  int wait(int timeout_ms);
  void kill(int sig);
  int stdout_fd() const { return out_fd_; }

 private:
  int pid_ = -1, pidfd_ = -1, out_fd_ = -1;
  bool reaped_ = false;
  int status_ = -1;
  std::string buf_;
};

// The real daemon in its own runtime directory.
class DaemonProcess {
 public:
  // Starts `epd_path --config '' --socket <dir>/epd.sock --log-target stderr`
  // plus `extra` and waits for READY=1 (at most timeout_ms). On failure the
  // message says why; ok() is false.
  DaemonProcess(const std::string& epd_path, const std::string& runtime_dir, const std::vector<std::string>& extra = {},
                int timeout_ms = 10000);
  ~DaemonProcess();
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const std::string& socket_path() const { return socket_; }
  Child& child() { return child_; }
  // SIGTERM, then wait; returns the exit code (or -1 on timeout).
  int stop(int timeout_ms = 10000);
  // Waits for STOPPING=1 on the notify socket.
  bool wait_notify(const std::string& what, int timeout_ms);

 private:
  Child child_;
  int notify_fd_ = -1;
  std::string socket_, notify_path_, error_;
  bool ok_ = false;
};

// A fresh private directory under $TMPDIR (removed by the destructor).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- workload and reference --------------------------------------------------------------
struct Workload {
  std::string group = "main";
  uint64_t generation = 1;
  int32_t world = 8;
  int32_t experts = 32;
  int32_t top_k = 4;
  int32_t hidden = 256;
  int32_t max_tokens = 64;
  uint32_t timeout_ms = 20000;
  uint64_t seed = 1;
  int32_t nodes = 1;  // ranks spread over nodes in contiguous blocks: rank r on node r * nodes / world
};

struct RankInputs {
  int32_t n = 0;
  std::vector<float> x;        // [n][hidden]
  std::vector<int32_t> ids;    // [n][top_k], -1 masked, no repeats
  std::vector<float> weights;  // [n][top_k]
};

// Deterministic from (seed, rank, step): token count in [0, max_tokens], random
// routing with about 1 in 8 ids masked, never zero payloads.
RankInputs make_inputs(const Workload& w, int32_t rank, int64_t step);
int32_t owner_of(const Workload& w, int32_t expert);  // contiguous owners
epd_group_spec_t make_spec(const Workload& w, int32_t rank);

struct WorkerOptions {
  Workload work;
  std::string socket;
  int32_t rank = 0;
  int64_t steps = 100;
  int64_t start_step = 0;
  int64_t stall_at = -1;          // test hook: stop after this step's dispatch_wait
  bool tolerate_peer_lost = false; // test hook: on PEER_LOST, report it and redo the step
  bool ring_and_wait = false;      // test hook: join, ring dispatch on slot rank%2, wait for an error
  bool empty = false;              // n_tokens = 0 on every step (round-trip benchmark)
  bool verify = true;
};

// Runs one worker; prints lines to stdout ("JOINED", "STALLED <step>",
// "PEER_LOST <ns> <message>", "DAEMON_LOST <ns>", "RESULT ...", "ERROR ...").
// Returns the process exit code (0 = every step verified).
int run_worker(const WorkerOptions& o);

struct WorkerResult {
  int32_t rank = 0;
  int64_t steps = 0, tokens = 0, rows = 0, wall_ns = 0;
  double dispatch_p50_us = 0, dispatch_p99_us = 0, combine_p50_us = 0, combine_p99_us = 0;
  int64_t peer_lost = 0;
};
bool parse_result(const std::string& line, WorkerResult& out);

}  // namespace epd::job
