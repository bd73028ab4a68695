// epctl_query.h — one STATUS round trip over the control protocol, shared by
// epctl and the main job. Opens its own connection (HELLO, STATUS, close).
// Thread-safety: a pure function over its own socket.
#pragma once

#include <string>

#include "epd/types.h"

namespace epd {

// what: status | groups | ranks | counters | sessions (alias clients) | all. On error `body` holds the message.
epd_status_t query_daemon_status(const std::string& socket, const std::string& what, bool json, std::string& body);

}  // namespace epd
