// sd_glue.cc — sd_notify and sd_listen_fds, built in (the protocol of
// sd_notify(3) and sd_listen_fds(3)). See sd_glue.h.
#include "sd_glue.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "logging.h"

namespace epd {
namespace {

constexpr int kListenFdsStart = 3;  // SD_LISTEN_FDS_START

// Parses a whole decimal number; false for empty, trailing text or overflow.
template <typename T>
bool parse_number(const char* s, T* out) {
  if (!s || !*s) return false;
  const char* end = s + std::strlen(s);
  auto [ptr, ec] = std::from_chars(s, end, *out);
  return ec == std::errc() && ptr == end;
}

// The value of a "STATUS=" assignment: one line.
std::string one_line(const std::string& s) {
  std::string out = s;
  for (char& ch : out)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return out;
}

}  // namespace

Status notify_raw(const std::string& assignments) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return Status::ok();

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t len = std::strlen(path);
  if (path[0] != '/' && path[0] != '@')
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "NOTIFY_SOCKET = '%s' is neither an absolute path nor an abstract ('@') "
                       "socket name",
                       path);
  if (len >= sizeof(addr.sun_path))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "NOTIFY_SOCKET = '%s' is longer than %zu bytes",
                       path, sizeof(addr.sun_path) - 1);
  std::memcpy(addr.sun_path, path, len);
  socklen_t addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  if (path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract namespace: no trailing NUL in the length
  } else {
    addr_len += 1;
  }

  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("NOTIFY_SOCKET: socket(AF_UNIX, SOCK_DGRAM)", errno);
  ssize_t sent;
  do {
    sent = ::sendto(fd, assignments.data(), assignments.size(), MSG_NOSIGNAL,
                    reinterpret_cast<const sockaddr*>(&addr), addr_len);
  } while (sent < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (sent < 0)
    return make_status(EPD_ERR_SYSTEM, "sd_notify to NOTIFY_SOCKET = '%s' failed: %s", path,
                       std::strerror(err));
  if (static_cast<size_t>(sent) != assignments.size())
    return make_status(EPD_ERR_SYSTEM, "sd_notify to NOTIFY_SOCKET = '%s' sent %zd of %zu bytes",
                       path, sent, assignments.size());
  return Status::ok();
}

Status notify_ready(const std::string& status_line) {
  std::string m = "READY=1";
  if (!status_line.empty()) m += "\nSTATUS=" + one_line(status_line);
  return notify_raw(m);
}

Status notify_status(const std::string& status_line) {
  return notify_raw("STATUS=" + one_line(status_line));
}

Status notify_stopping() { return notify_raw("STOPPING=1"); }

Status notify_watchdog() { return notify_raw("WATCHDOG=1"); }

std::chrono::microseconds watchdog_interval() {
  uint64_t usec = 0;
  if (!parse_number(std::getenv("WATCHDOG_USEC"), &usec) || usec == 0)
    return std::chrono::microseconds(0);
  // WATCHDOG_PID unset means "this process" (sd_watchdog_enabled(3)).
  if (const char* pid_text = std::getenv("WATCHDOG_PID"); pid_text && *pid_text) {
    pid_t pid = 0;
    if (!parse_number(pid_text, &pid) || pid != ::getpid()) return std::chrono::microseconds(0);
  }
  if (usec > static_cast<uint64_t>(INT64_MAX)) return std::chrono::microseconds(0);
  return std::chrono::microseconds(static_cast<int64_t>(usec));
}

Result<std::vector<int>> listen_fds_checked() {
  std::vector<int> fds;
  const char* pid_text = std::getenv("LISTEN_PID");
  if (!pid_text || !*pid_text) return fds;
  pid_t pid = 0;
  if (!parse_number(pid_text, &pid) || pid <= 0)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "LISTEN_PID = '%s' is not a process id",
                       pid_text);
  if (pid != ::getpid()) return fds;  // meant for another process (our parent, say)
  const char* n_text = std::getenv("LISTEN_FDS");
  int n = 0;
  if (!parse_number(n_text, &n) || n < 0 || n > INT32_MAX - kListenFdsStart)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "LISTEN_FDS = '%s' is not a count of fds",
                       n_text ? n_text : "");
  for (int fd = kListenFdsStart; fd < kListenFdsStart + n; ++fd) {
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0)
      return make_status(EPD_ERR_SYSTEM, "LISTEN_FDS = %d: fd %d is not open: %s", n, fd,
                         std::strerror(errno));
    if (!(flags & FD_CLOEXEC) && ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
      return make_status(EPD_ERR_SYSTEM, "LISTEN_FDS: fcntl(%d, F_SETFD, FD_CLOEXEC): %s", fd,
                         std::strerror(errno));
    fds.push_back(fd);
  }
  return fds;
}

std::vector<int> listen_fds() {
  Result<std::vector<int>> fds = listen_fds_checked();
  if (!fds.is_ok()) {
    log_message(LogLevel::kWarn, "socket activation ignored: " + fds.status().to_string());
    return {};
  }
  return std::move(*fds);
}

}  // namespace epd
