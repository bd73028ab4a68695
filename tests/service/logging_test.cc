// logging_test.cc — log lines on stderr with their context fields and levels,
// the journal field set, target selection (auto/stderr/journal).
#include "logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include "service_test_support.h"

namespace epd {
namespace {

using test::ScopedEnv;
using test::TempDir;

// Points fd 2 at a file for the scope.
class StderrCapture {
 public:
  explicit StderrCapture(const std::string& path) : path_(path) {
    std::fflush(stderr);
    saved_ = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 10);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  ~StderrCapture() { restore(); }
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    saved_ = -1;
  }
  std::string text() const { return test::read_file(path_); }

 private:
  std::string path_;
  int saved_ = -1;
};

class Logging : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  void TearDown() override { (void)init_logging(LogLevel::kInfo, "stderr"); }
  TempDir dir_;
  ScopedEnv no_journal_{"JOURNAL_STREAM", std::nullopt};
};

TEST_F(Logging, StderrLinesCarryContextAndLevel) {
  StderrCapture cap(dir_.file("stderr.log"));
  ASSERT_TRUE(init_logging(LogLevel::kInfo, "stderr").is_ok());
  EXPECT_STREQ(log_target_name(), "stderr");
  LogContext ctx;
  ctx.group = "moe-a";
  ctx.rank = 3;
  ctx.session = 17;
  ctx.pid = 4242;
  ctx.generation = 2;
  log_message(LogLevel::kInfo, ctx, "rank joined");
  log_message(LogLevel::kDebug, ctx, "hidden at info");
  log_message(LogLevel::kWarn, "no context here");
  LogContext partial;
  partial.group = "moe-b";
  log_message(LogLevel::kError, partial, "peer lost");
  spdlog::info("through spdlog {}", 7);
  cap.restore();
  const std::string out = cap.text();
  EXPECT_NE(out.find("[info] [group=moe-a rank=3 generation=2 session=17 pid=4242] rank joined\n"),
            std::string::npos) << out;
  EXPECT_EQ(out.find("hidden at info"), std::string::npos) << out;
  EXPECT_NE(out.find("[warning] no context here\n"), std::string::npos) << out;
  EXPECT_NE(out.find("[error] [group=moe-b] peer lost\n"), std::string::npos) << out;
  EXPECT_NE(out.find("[info] through spdlog 7\n"), std::string::npos) << out;
  // A timestamp leads every line.
  EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(out[0]))) << out;
}

TEST_F(Logging, LevelFilterAndOff) {
  StderrCapture cap(dir_.file("stderr.log"));
  ASSERT_TRUE(init_logging(LogLevel::kTrace, "stderr").is_ok());
  log_message(LogLevel::kTrace, "trace shown");
  ASSERT_TRUE(init_logging(LogLevel::kOff, "stderr").is_ok());
  log_message(LogLevel::kCritical, "critical hidden when off");
  cap.restore();
  const std::string out = cap.text();
  EXPECT_NE(out.find("[trace] trace shown"), std::string::npos) << out;
  EXPECT_EQ(out.find("critical hidden"), std::string::npos) << out;
}

// When stderr is the journal's stream (JOURNAL_STREAM = its dev:ino), lines
// carry "<N>" priorities instead of timestamps.
TEST_F(Logging, JournalStreamGetsSyslogPrefixes) {
  const std::string path = dir_.file("stream.log");
  StderrCapture cap(path);
  struct stat st {};
  ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
  ScopedEnv js("JOURNAL_STREAM", std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
  ASSERT_TRUE(init_logging(LogLevel::kInfo, "stderr").is_ok());
  LogContext ctx;
  ctx.rank = 1;
  log_message(LogLevel::kError, ctx, "bad thing");
  log_message(LogLevel::kInfo, "fine thing");
  cap.restore();
  EXPECT_EQ(cap.text(), "<3>[rank=1] bad thing\n<6>fine thing\n");
}

TEST_F(Logging, Targets) {
  Status bad = init_logging(LogLevel::kInfo, "syslog");
  EXPECT_EQ(bad.code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(bad.message().find("'syslog'"), std::string::npos) << bad.message();

  ASSERT_TRUE(init_logging(LogLevel::kInfo, "auto").is_ok());  // JOURNAL_STREAM unset
  EXPECT_STREQ(log_target_name(), "stderr");

  Status journal = init_logging(LogLevel::kInfo, "journal");
  if (journal_supported()) {
    ASSERT_TRUE(journal.is_ok()) << journal.to_string();
    EXPECT_STREQ(log_target_name(), "journal");
    log_message(LogLevel::kInfo, "to the journal, or dropped when there is none");
    ScopedEnv js("JOURNAL_STREAM", "1:2");
    ASSERT_TRUE(init_logging(LogLevel::kInfo, "auto").is_ok());
    EXPECT_STREQ(log_target_name(), "journal");
  } else {
    EXPECT_EQ(journal.code(), EPD_ERR_UNSUPPORTED);
    EXPECT_NE(journal.message().find("libsystemd"), std::string::npos) << journal.message();
    EXPECT_STREQ(log_target_name(), "stderr");
    ScopedEnv js("JOURNAL_STREAM", "1:2");
    ASSERT_TRUE(init_logging(LogLevel::kInfo, "auto").is_ok());
    EXPECT_STREQ(log_target_name(), "stderr");
  }
}

TEST(LogFields, JournalFields) {
  LogContext ctx;
  ctx.group = "moe-a";
  ctx.rank = 0;
  ctx.session = 9;
  ctx.pid = 77;
  const auto f = journal_fields(LogLevel::kWarn, ctx, "multi\nline");
  EXPECT_EQ(f, (std::vector<std::string>{"MESSAGE=multi\nline", "PRIORITY=4",
                                         "SYSLOG_IDENTIFIER=epd", "EPD_GROUP=moe-a", "EPD_RANK=0",
                                         "EPD_SESSION=9", "EPD_PID=77"}));
  const auto none = journal_fields(LogLevel::kDebug, LogContext{}, "m");
  EXPECT_EQ(none, (std::vector<std::string>{"MESSAGE=m", "PRIORITY=7", "SYSLOG_IDENTIFIER=epd"}));
  EXPECT_EQ(context_prefix(LogContext{}), "");
}

TEST(LogFields, ParseLevel) {
  EXPECT_EQ(*parse_log_level("trace"), LogLevel::kTrace);
  EXPECT_EQ(*parse_log_level("warn"), LogLevel::kWarn);
  EXPECT_EQ(*parse_log_level("off"), LogLevel::kOff);
  Result<LogLevel> bad = parse_log_level("loud");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("'loud'"), std::string::npos);
}

}  // namespace
}  // namespace epd
