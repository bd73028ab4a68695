// exit_watch.cc — the /proc reads behind ExitWatch.
//
// A process is exiting when every thread is: each thread sets PF_EXITING at
// the start of do_exit(), and a thread with SIGKILL pending (kill(), or
// exit_group() zapping the others) is about to. The main thread's stat line
// is read on every check; the other threads only once it shows PF_EXITING,
// because a main thread may also end alone (pthread_exit) and leave a live
// process behind: its stat line then says zombie while another thread runs,
// and the watch gives up rather than ever call a live process exiting.
#include "exit_watch.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace epd {

namespace {

// Reads up to cap-1 bytes of a small proc file; -errno on failure.
ssize_t read_proc_file(const std::string& path, char* buf, size_t cap) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  const ssize_t n = ::read(fd, buf, cap - 1);
  const int err = errno;
  ::close(fd);
  return n < 0 ? -err : n;
}

bool is_gone(int err) { return err == ENOENT || err == ESRCH; }

template <typename T>
bool parse_number(std::string_view s, T* out, int base = 10) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

}  // namespace

std::optional<ProcStat> parse_proc_stat(std::string_view line) {
  const size_t close = line.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::string_view rest = line.substr(close + 1);
  ProcStat st;
  // Field 3 is the first token after the last ')'; 22 is the last one needed.
  for (int field = 3; field <= 22; ++field) {
    const size_t begin = rest.find_first_not_of(' ');
    if (begin == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(begin);
    const size_t end = std::min(rest.find_first_of(" \n"), rest.size());
    const std::string_view tok = rest.substr(0, end);
    rest.remove_prefix(end);
    bool ok = true;
    switch (field) {
      case 3: ok = tok.size() == 1; st.state = tok[0]; break;
      case 9: ok = parse_number(tok, &st.flags); break;
      case 20: ok = parse_number(tok, &st.num_threads); break;
      case 22: ok = parse_number(tok, &st.start_ticks); break;
      default: break;
    }
    if (!ok) return std::nullopt;
  }
  return st;
}

bool status_shows_sigkill_pending(std::string_view status) {
  constexpr uint64_t kSigkillBit = 1ull << (SIGKILL - 1);
  for (const char* key : {"\nSigPnd:", "\nShdPnd:"}) {
    const size_t at = status.find(key);
    if (at == std::string_view::npos) continue;
    std::string_view v = status.substr(at + std::strlen(key));
    v.remove_prefix(std::min(v.find_first_not_of(" \t"), v.size()));
    v = v.substr(0, std::min(v.find('\n'), v.size()));
    uint64_t mask = 0;
    if (parse_number(v, &mask, 16) && (mask & kSigkillBit)) return true;
  }
  return false;
}

Status proc_shows_own_pid(const std::string& proc_root) {
  char link[64];
  const std::string self = proc_root + "/self";
  const ssize_t n = readlink(self.c_str(), link, sizeof link - 1);
  if (n < 0) {
    const int err = errno;  // before the message's allocations
    return errno_status(("readlink(" + self + ")").c_str(), err);
  }
  link[n] = 0;
  const std::string own = std::to_string(getpid());
  if (own != link)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "%s is '%s', not this process's pid %s: %s belongs to another pid namespace", self.c_str(),
                       link, own.c_str(), proc_root.c_str());
  return Status::ok();
}

ExitWatch::ExitWatch(ExitWatch&& o) noexcept { *this = std::move(o); }

ExitWatch& ExitWatch::operator=(ExitWatch&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.fd_;
    pid_ = o.pid_;
    start_ticks_ = o.start_ticks_;
    proc_root_ = std::move(o.proc_root_);
    o.fd_ = -1;
  }
  return *this;
}

ExitWatch::~ExitWatch() { reset(); }

void ExitWatch::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<ExitWatch> ExitWatch::open(int32_t pid, const std::string& proc_root) {
  if (pid <= 0)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "the peer's pid is %d (a process of a pid namespace this daemon cannot see)", pid);
  ExitWatch w;
  w.pid_ = pid;
  w.proc_root_ = proc_root;
  const std::string path = proc_root + "/" + std::to_string(pid) + "/stat";
  w.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (w.fd_ < 0) {
    const int err = errno;  // before the message's allocations
    return errno_status(("open(" + path + ")").c_str(), err);
  }
  char buf[1024];
  const ssize_t n = pread(w.fd_, buf, sizeof buf - 1, 0);
  if (n < 0) {
    const int err = errno;  // before the message's allocations
    return errno_status(("read(" + path + ")").c_str(), err);
  }
  const auto st = parse_proc_stat(std::string_view(buf, static_cast<size_t>(n)));
  if (!st) return make_status(EPD_ERR_SYSTEM, "%s: cannot parse '%.*s'", path.c_str(), static_cast<int>(n), buf);
  w.start_ticks_ = st->start_ticks;
  return w;
}

ExitWatch::State ExitWatch::check(std::string* why) {
  if (fd_ < 0) return State::kUnwatchable;
  const std::string where = "/proc/" + std::to_string(pid_) + "/stat";
  char buf[1024];
  const ssize_t n = pread(fd_, buf, sizeof buf - 1, 0);
  const int err = n < 0 ? errno : 0;
  if (n < 0 && is_gone(err)) {
    *why = "its process has exited (" + where + ": " + strerror(err) + ")";
    return State::kExiting;
  }
  if (n <= 0) {
    *why = "cannot read " + where + ": " + (n < 0 ? strerror(err) : "empty");
    return State::kUnwatchable;
  }
  const auto st = parse_proc_stat(std::string_view(buf, static_cast<size_t>(n)));
  if (!st) {
    *why = "cannot parse " + where;
    return State::kUnwatchable;
  }
  if (st->start_ticks != start_ticks_) {
    *why = "its process has exited (" + where + " names a process started later)";
    return State::kExiting;
  }
  if (!(st->flags & kProcFlagExiting)) return State::kAlive;
  if (st->num_threads <= 1) {
    *why = "its process is exiting (PF_EXITING in " + where + ")";
    return State::kExiting;
  }
  return check_threads(*st, why);
}

ExitWatch::State ExitWatch::check_threads(const ProcStat& leader, std::string* why) const {
  const std::string task = proc_root_ + "/" + std::to_string(pid_) + "/task";
  DIR* d = opendir(task.c_str());
  if (!d) {
    const int err = errno;
    *why = is_gone(err) ? "its process has exited (" + task + ": " + strerror(err) + ")"
                        : "cannot list " + task + ": " + strerror(err);
    return is_gone(err) ? State::kExiting : State::kUnwatchable;
  }
  int32_t live = 0;  // a thread neither exiting nor killed
  size_t threads = 0;
  while (const dirent* e = readdir(d)) {
    int32_t tid = 0;
    if (!parse_number(std::string_view(e->d_name), &tid) || tid == pid_) continue;
    ++threads;
    char buf[4096];
    const std::string base = task + "/" + e->d_name;
    ssize_t n = read_proc_file(base + "/stat", buf, sizeof buf);
    if (n < 0 && is_gone(static_cast<int>(-n))) continue;  // already gone
    const auto st = n > 0 ? parse_proc_stat(std::string_view(buf, static_cast<size_t>(n))) : std::nullopt;
    if (st && (st->flags & kProcFlagExiting)) continue;
    n = read_proc_file(base + "/status", buf, sizeof buf);
    if (n < 0 && is_gone(static_cast<int>(-n))) continue;
    if (n > 0 && status_shows_sigkill_pending(std::string_view(buf, static_cast<size_t>(n)))) continue;
    live = tid;
    break;
  }
  closedir(d);
  if (live == 0) {
    *why = "its process is exiting (PF_EXITING in /proc/" + std::to_string(pid_) + "/stat; its " +
           std::to_string(threads) + " other thread(s) exiting or killed)";
    return State::kExiting;
  }
  if (leader.state == 'Z') {
    *why = "its main thread has exited while thread " + std::to_string(live) + " runs on";
    return State::kUnwatchable;
  }
  return State::kAlive;  // the main thread is on its way out; look again next time
}

}  // namespace epd
