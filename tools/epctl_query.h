// epctl_query.h — one STATUS round trip over the control protocol, shared by
// epctl and the main job. Opens its own connection (HELLO, STATUS, close).
// Thread-safety: a pure function over its own socket.
#pragma once

#include <string>

#include "epd/types.h"

namespace epd {

// Every subcommand `what` takes, in the order the usage and errors list them
// ("clients" is also accepted, as an alias of "sessions").
inline constexpr const char* kEpctlSubcommands = "status, groups, ranks, counters, sessions, topology, all";

// what: one of kEpctlSubcommands (or clients). On error `body` holds the
// message; an unknown `what` is EPD_ERR_INVALID_ARGUMENT listing every subcommand.
epd_status_t query_daemon_status(const std::string& socket, const std::string& what, bool json, std::string& body);

// HELLO only: the daemon's version string ("0.2.0") into `body`, or the error.
epd_status_t query_daemon_version(const std::string& socket, std::string& body);

}  // namespace epd
