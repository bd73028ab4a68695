// logging.h — the daemon's logging: spdlog to stderr, or to the systemd journal
// with structured fields (EPD_GROUP, EPD_RANK, EPD_SESSION, EPD_PID) when
// running under systemd (JOURNAL_STREAM set) or asked to.
//
// init_logging is called once by main() before threads start; log_* may then
// be called from any thread. An error is logged once, where it is decided.
#pragma once

#include <cstdint>
#include <string>

#include "status.h"

namespace epd {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kCritical, kOff };

Result<LogLevel> parse_log_level(const std::string& s);

// target: "auto" | "stderr" | "journal" (journal without libsystemd is an error).
Status init_logging(LogLevel level, const std::string& target);

// Optional context attached to a log line as journal fields (and as a
// "[group=... rank=...]" prefix on stderr). Unset fields are omitted.
struct LogContext {
  std::string group;
  int32_t rank = -1;
  uint64_t session = 0;
  int32_t pid = -1;
};

void log_message(LogLevel level, const LogContext& ctx, const std::string& msg);
void log_message(LogLevel level, const std::string& msg);

// Which sink is active ("stderr" or "journal"), for the status output.
const char* log_target_name();

}  // namespace epd
