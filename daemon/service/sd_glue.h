// sd_glue.h — the daemon's systemd integration: readiness and status
// notifications, the watchdog, socket activation.
//
// Works with and without libsystemd: without it, notifications are sent by a
// built-in sender to $NOTIFY_SOCKET (datagram, abstract or filesystem path) and
// LISTEN_FDS/LISTEN_PID are parsed directly, so tests with their own
// NOTIFY_SOCKET listener behave the same either way. All functions are no-ops
// returning OK when not started by systemd. This build always uses the
// built-in sender and parser (with or without libsystemd), so what the tests
// exercise is what ships; the wire protocol is libsystemd's.
// Thread-safety: notify_* may be called from any thread (each call opens its
// own socket). The environment is only read, never unset, so listen_fds() may be
// called more than once; children ignore inherited LISTEN_* because LISTEN_PID
// names this process.
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

// Sends raw assignments ("KEY=value" lines separated by '\n') to $NOTIFY_SOCKET;
// OK without sending when NOTIFY_SOCKET is unset. notify_* are built on it.
// An unusable NOTIFY_SOCKET value or a failed send is an error naming the socket.
Status notify_raw(const std::string& assignments);

// Watchdog interval from WATCHDOG_USEC (for this pid), or zero when disabled.
// The daemon pings at half of it.
std::chrono::microseconds watchdog_interval();

// File descriptors passed by socket activation (LISTEN_FDS for this pid,
// starting at fd 3), with FD_CLOEXEC set. Empty when none.
std::vector<int> listen_fds();

// listen_fds with the reason when the environment is malformed (LISTEN_FDS or
// LISTEN_PID not a number, a passed fd that is not open): the message names the
// variable and value. listen_fds() logs that error (as a warning) and returns empty.
Result<std::vector<int>> listen_fds_checked();

}  // namespace epd
