// logging.h — the daemon's logging: spdlog to stderr, or to the systemd journal
// with structured fields (EPD_GROUP, EPD_RANK, EPD_SESSION, EPD_PID) when
// running under systemd (JOURNAL_STREAM set) or asked to.
//
// init_logging is called once by main() before threads start (tests may call it
// again; a call replaces the sinks and must not race with log_*); log_* may then
// be called from any thread. Before init_logging, lines go to stderr at info.
// init_logging also installs the logger as spdlog's default, so spdlog::info()
// reaches the same sink (without context fields). An error is logged once,
// where it is decided.
//
// stderr format: "2026-11-25 18:30:00.123 [info] [group=g rank=3] message". When
// stderr is the journal's stream (JOURNAL_STREAM matches fd 2, e.g. log.target
// 'auto' in a build without libsystemd), lines carry a "<N>" syslog priority
// prefix instead of the timestamp, so journald keeps the levels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
  int64_t generation = -1;  // EPD_GENERATION
};

void log_message(LogLevel level, const LogContext& ctx, const std::string& msg);
void log_message(LogLevel level, const std::string& msg);

// Which sink is active ("stderr" or "journal"), for the status output.
const char* log_target_name();

// Whether this build has the journal target (libsystemd was found).
bool journal_supported();

// The journal fields one line is sent with, as "KEY=value" strings: MESSAGE,
// PRIORITY (syslog numbering), SYSLOG_IDENTIFIER=epd, and EPD_GROUP, EPD_RANK,
// EPD_SESSION, EPD_PID, EPD_GENERATION for the context fields that are set.
std::vector<std::string> journal_fields(LogLevel level, const LogContext& ctx,
                                        const std::string& msg);

// The "[group=g rank=3 ...]" prefix of a stderr line ("" when no field is set).
std::string context_prefix(const LogContext& ctx);

}  // namespace epd
