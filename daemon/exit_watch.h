// exit_watch.h — tells that a client process has begun exiting, from its
// /proc/<pid>/stat (PF_EXITING), long before its socket closes: a killed
// process first tears down its memory (and its GPU contexts), and only then
// releases its files. The Server polls one ExitWatch per session that holds a
// group membership and treats "exiting" like EOF on the session socket.
//
// Ownership: an ExitWatch owns one descriptor, /proc/<pid>/stat held open
// (which pins that process: a reused pid number never shows through it),
// closed with the watch. Thread-safety: none; the control thread owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "status.h"

namespace epd {

inline constexpr uint64_t kProcFlagExiting = 0x4;  // PF_EXITING: set at the start of do_exit()

// The fields of one /proc/<pid>/stat line the watch reads.
struct ProcStat {
  char state = 0;            // field 3: R, S, D, Z, ...
  uint64_t flags = 0;        // field 9: PF_*
  int64_t num_threads = 0;   // field 20
  uint64_t start_ticks = 0;  // field 22: start time, clock ticks after boot
};

// Parses a stat line. Field 2 (comm, in parentheses) may hold spaces and ')',
// so fields are counted from the last ')'. nullopt when a field is missing.
std::optional<ProcStat> parse_proc_stat(std::string_view line);

// Whether a /proc/<pid>/status text shows SIGKILL pending (SigPnd or ShdPnd):
// a thread with SIGKILL pending dies as soon as it leaves the kernel.
bool status_shows_sigkill_pending(std::string_view status);

// Whether `proc_root` is the proc of this process's pid namespace
// (<proc_root>/self names getpid()); pids from SO_PEERCRED are only
// meaningful there. The message says what it saw instead.
Status proc_shows_own_pid(const std::string& proc_root = "/proc");

class ExitWatch {
 public:
  enum class State {
    kAlive,        // running (or not yet every thread exiting)
    kExiting,      // every thread exits (or is gone), or the process is gone
    kUnwatchable,  // its main thread has ended while others run on: no longer watched
  };

  ExitWatch() = default;
  ExitWatch(ExitWatch&& o) noexcept;
  ExitWatch& operator=(ExitWatch&& o) noexcept;
  ExitWatch(const ExitWatch&) = delete;
  ExitWatch& operator=(const ExitWatch&) = delete;
  ~ExitWatch();

  // Opens <proc_root>/<pid>/stat and records the start time. Fails (the
  // process is then not watched) for pid <= 0 (a peer in another pid
  // namespace), a pid proc does not show, or no descriptor left.
  static Result<ExitWatch> open(int32_t pid, const std::string& proc_root = "/proc");

  bool watching() const { return fd_ >= 0; }
  int32_t pid() const { return pid_; }

  // One look (a pread of the stat line; the thread list only while the main
  // thread is exiting and others remain). `why` gets the reason for
  // kExiting and kUnwatchable.
  State check(std::string* why);

  void reset();  // closes the descriptor: no longer watched

 private:
  State check_threads(const ProcStat& leader, std::string* why) const;

  int fd_ = -1;
  int32_t pid_ = 0;
  uint64_t start_ticks_ = 0;
  std::string proc_root_;
};

}  // namespace epd
