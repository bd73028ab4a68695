// sd_glue.h — the daemon's systemd integration: readiness and status
// notifications, the watchdog, socket activation.
//
// Works with and without libsystemd: without it, notifications are sent by a
// built-in sender to $NOTIFY_SOCKET (datagram, abstract or filesystem path) and
// LISTEN_FDS/LISTEN_PID are parsed directly, so tests with their own
// NOTIFY_SOCKET listener behave the same either way. All functions are no-ops
// returning OK when not started by systemd.
// Thread-safety: notify_* may be called from any thread.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "status.h"

namespace epd {

Status notify_ready(const std::string& status_line);
Status notify_status(const std::string& status_line);
Status notify_stopping();
Status notify_watchdog();

// Watchdog interval from WATCHDOG_USEC (for this pid), or zero when disabled.
// The daemon pings at half of it.
std::chrono::microseconds watchdog_interval();

// File descriptors passed by socket activation (LISTEN_FDS for this pid,
// starting at fd 3), with FD_CLOEXEC set. Empty when none.
std::vector<int> listen_fds();

}  // namespace epd
