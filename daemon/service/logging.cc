// logging.cc — spdlog sinks for stderr and the systemd journal. See logging.h.
#include "logging.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#if EPD_HAVE_SYSTEMD
#define SD_JOURNAL_SUPPRESS_LOCATION  // CODE_FILE would always name this file
#include <systemd/sd-journal.h>
#endif

namespace epd {
namespace {

constexpr const char* kStderrPattern = "%Y-%m-%d %H:%M:%S.%e [%l] %v";

spdlog::level::level_enum to_spdlog(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace: return spdlog::level::trace;
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kCritical: return spdlog::level::critical;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

LogLevel from_spdlog(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace: return LogLevel::kTrace;
    case spdlog::level::debug: return LogLevel::kDebug;
    case spdlog::level::info: return LogLevel::kInfo;
    case spdlog::level::warn: return LogLevel::kWarn;
    case spdlog::level::err: return LogLevel::kError;
    case spdlog::level::critical: return LogLevel::kCritical;
    default: return LogLevel::kOff;
  }
}

// syslog(3) priorities, as journald and the "<N>" stderr prefix expect them.
int syslog_priority(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace:
    case LogLevel::kDebug: return 7;
    case LogLevel::kInfo: return 6;
    case LogLevel::kWarn: return 4;
    case LogLevel::kError: return 3;
    case LogLevel::kCritical: return 2;
    case LogLevel::kOff: break;
  }
  return 6;
}

// True when fd 2 is the stream systemd connected to the journal (JOURNAL_STREAM
// is "device:inode" of that stream, see systemd.exec(5)).
bool stderr_is_journal_stream() {
  const char* js = std::getenv("JOURNAL_STREAM");
  if (!js || !*js) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // nowhere left to report a failing stderr
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// One write(2) per line so lines from several threads/processes do not interleave.
class StderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit StderrSink(bool syslog_prefix) : syslog_prefix_(syslog_prefix) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    spdlog::memory_buf_t buf;
    if (syslog_prefix_) {
      const std::string prefix = "<" + std::to_string(syslog_priority(from_spdlog(m.level))) + ">";
      buf.append(prefix.data(), prefix.data() + prefix.size());
      buf.append(m.payload.data(), m.payload.data() + m.payload.size());
      buf.push_back('\n');
    } else {
      formatter_->format(m, buf);
    }
    write_all(STDERR_FILENO, buf.data(), buf.size());
  }
  void flush_() override {}

 private:
  bool syslog_prefix_;
};

// The context of the line being logged on this thread (set by log_message
// around the synchronous spdlog call; the journal sink reads it).
thread_local const LogContext* t_context = nullptr;

#if EPD_HAVE_SYSTEMD
class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    static const LogContext kNone;
    const std::vector<std::string> fields =
        journal_fields(from_spdlog(m.level), t_context ? *t_context : kNone,
                       std::string(m.payload.data(), m.payload.size()));
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (const std::string& f : fields)
      iov.push_back(iovec{const_cast<char*>(f.data()), f.size()});
    // A journal that cannot be reached drops the line: logging must not fail the caller.
    (void)sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}
};
#endif

struct LoggerState {
  std::mutex mu;  // serialises init_logging
  std::shared_ptr<spdlog::logger> current;
  // Loggers replaced by a later init_logging stay alive, so a stray concurrent
  // log_message never touches a freed logger.
  std::vector<std::shared_ptr<spdlog::logger>> retired;
  std::atomic<spdlog::logger*> active{nullptr};
  std::atomic<bool> journal{false};
};

LoggerState& state() {
  static LoggerState* s = [] {
    auto* st = new LoggerState();  // intentionally leaked: used until exit
    st->current = std::make_shared<spdlog::logger>("epd", std::make_shared<StderrSink>(false));
    st->current->set_pattern(kStderrPattern);
    st->current->set_level(spdlog::level::info);
    st->current->flush_on(spdlog::level::trace);
    st->active.store(st->current.get());
    return st;
  }();
  return *s;
}

}  // namespace

Result<LogLevel> parse_log_level(const std::string& s) {
  static const struct {
    const char* name;
    LogLevel level;
  } kLevels[] = {{"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug},
                 {"info", LogLevel::kInfo},   {"warn", LogLevel::kWarn},
                 {"error", LogLevel::kError}, {"critical", LogLevel::kCritical},
                 {"off", LogLevel::kOff}};
  for (const auto& l : kLevels)
    if (s == l.name) return l.level;
  return make_status(EPD_ERR_INVALID_ARGUMENT,
                     "log level '%s' is not one of: trace, debug, info, warn, error, critical, off",
                     s.c_str());
}

bool journal_supported() { return EPD_HAVE_SYSTEMD != 0; }

Status init_logging(LogLevel level, const std::string& target) {
  bool journal = false;
  if (target == "journal") {
    if (!journal_supported())
      return make_status(EPD_ERR_UNSUPPORTED,
                         "log target 'journal' needs libsystemd, and this build of epd has none "
                         "(use 'stderr' or 'auto'; under systemd stderr reaches the journal too)");
    journal = true;
  } else if (target == "auto") {
    const char* js = std::getenv("JOURNAL_STREAM");
    journal = journal_supported() && js && *js;
  } else if (target != "stderr") {
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "log target '%s' is not one of: auto, stderr, journal", target.c_str());
  }

  spdlog::sink_ptr sink;
#if EPD_HAVE_SYSTEMD
  if (journal) sink = std::make_shared<JournalSink>();
#endif
  if (!sink) sink = std::make_shared<StderrSink>(stderr_is_journal_stream());
  auto logger = std::make_shared<spdlog::logger>("epd", std::move(sink));
  logger->set_pattern(journal ? "%v" : kStderrPattern);
  logger->set_level(to_spdlog(level));
  logger->flush_on(spdlog::level::trace);

  LoggerState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.retired.push_back(s.current);
  s.current = logger;
  s.journal.store(journal);
  s.active.store(logger.get());
  spdlog::set_default_logger(logger);
  return Status::ok();
}

std::string context_prefix(const LogContext& ctx) {
  std::string p;
  const auto add = [&](const char* key, const std::string& v) {
    p += p.empty() ? "[" : " ";
    p += key;
    p += "=";
    p += v;
  };
  if (!ctx.group.empty()) add("group", ctx.group);
  if (ctx.rank >= 0) add("rank", std::to_string(ctx.rank));
  if (ctx.generation >= 0) add("generation", std::to_string(ctx.generation));
  if (ctx.session != 0) add("session", std::to_string(ctx.session));
  if (ctx.pid >= 0) add("pid", std::to_string(ctx.pid));
  return p.empty() ? p : p + "]";
}

std::vector<std::string> journal_fields(LogLevel level, const LogContext& ctx,
                                        const std::string& msg) {
  std::vector<std::string> f;
  f.push_back("MESSAGE=" + msg);
  f.push_back("PRIORITY=" + std::to_string(syslog_priority(level)));
  f.push_back("SYSLOG_IDENTIFIER=epd");
  if (!ctx.group.empty()) f.push_back("EPD_GROUP=" + ctx.group);
  if (ctx.rank >= 0) f.push_back("EPD_RANK=" + std::to_string(ctx.rank));
  if (ctx.generation >= 0) f.push_back("EPD_GENERATION=" + std::to_string(ctx.generation));
  if (ctx.session != 0) f.push_back("EPD_SESSION=" + std::to_string(ctx.session));
  if (ctx.pid >= 0) f.push_back("EPD_PID=" + std::to_string(ctx.pid));
  return f;
}

void log_message(LogLevel level, const LogContext& ctx, const std::string& msg) {
  if (level == LogLevel::kOff) return;
  LoggerState& s = state();
  spdlog::logger* logger = s.active.load();
  const auto lvl = to_spdlog(level);
  if (!logger->should_log(lvl)) return;
  if (s.journal.load()) {
    t_context = &ctx;
    logger->log(lvl, spdlog::string_view_t(msg));
    t_context = nullptr;
    return;
  }
  const std::string prefix = context_prefix(ctx);
  if (prefix.empty()) {
    logger->log(lvl, spdlog::string_view_t(msg));
  } else {
    const std::string line = prefix + " " + msg;
    logger->log(lvl, spdlog::string_view_t(line));
  }
}

void log_message(LogLevel level, const std::string& msg) {
  static const LogContext kNone;
  log_message(level, kNone, msg);
}

const char* log_target_name() { return state().journal.load() ? "journal" : "stderr"; }

}  // namespace epd
