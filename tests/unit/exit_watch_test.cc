// exit_watch_test.cc — the client exit watch's /proc reads (daemon/exit_watch.h):
// stat lines whose comm holds spaces and ')', a fake proc tree for the cases
// a test cannot make a real process hold still in (a thread with SIGKILL
// pending, a start time that changed), and real child processes: killed
// (exiting, then gone) and one whose main thread ends while another runs on
// (never called exiting; the watch gives up).
#include "exit_watch.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace epd {
namespace {

namespace fs = std::filesystem;

// A whole stat line (52 fields) with the fields the watch reads set.
std::string stat_line(int pid, const std::string& comm, char state, uint64_t flags, int threads, uint64_t start) {
  char b[512];
  std::snprintf(b, sizeof b,
                "%d (%s) %c 1 %d %d 0 -1 %llu 120 0 0 0 3 4 0 0 20 0 %d 0 %llu 123456789 300 "
                "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
                pid, comm.c_str(), state, pid, pid, static_cast<unsigned long long>(flags), threads,
                static_cast<unsigned long long>(start));
  return b;
}

std::string status_text(uint64_t sigpnd, uint64_t shdpnd) {
  char b[256];
  std::snprintf(b, sizeof b,
                "Name:\tw\nState:\tS (sleeping)\nTgid:\t1\nSigQ:\t0/1\nSigPnd:\t%016llx\nShdPnd:\t%016llx\n"
                "SigBlk:\t0000000000000000\n",
                static_cast<unsigned long long>(sigpnd), static_cast<unsigned long long>(shdpnd));
  return b;
}

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::trunc) << text;  // in place: an open descriptor reads the new text
}

class FakeProc : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/epd-exit-watch-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path task(int pid, int tid) const { return root_ / std::to_string(pid) / "task" / std::to_string(tid); }
  fs::path root_;
};

constexpr uint64_t kSigkillBit = 1ull << (SIGKILL - 1);

TEST(ProcStatParse, CommWithSpacesAndParenthesesIsSkippedFromTheLastParenthesis) {
  for (const std::string comm : {"w", "a b", "x) (y", ") R 1 2 3 4 5 6 7", "((", "))"}) {
    SCOPED_TRACE(comm);
    const auto st = parse_proc_stat(stat_line(42, comm, 'D', 0x40400044, 7, 98765));
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(st->state, 'D');
    EXPECT_EQ(st->flags, 0x40400044u);
    EXPECT_EQ(st->num_threads, 7);
    EXPECT_EQ(st->start_ticks, 98765u);
  }
  EXPECT_FALSE(parse_proc_stat("").has_value());
  EXPECT_FALSE(parse_proc_stat("12 (w) S 1 2 3").has_value()) << "too few fields";
  EXPECT_FALSE(parse_proc_stat("12 w S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").has_value()) << "no ')'";
  std::string bad_flags = stat_line(1, "w", 'S', 0, 1, 5);
  bad_flags.replace(bad_flags.find(" -1 0 120 "), 10, " -1 zz 120 ");
  EXPECT_FALSE(parse_proc_stat(bad_flags).has_value()) << "a non-number in a field the watch reads: " << bad_flags;
}

TEST(ProcStatParse, OwnStatLine) {
  std::ifstream f("/proc/self/stat");
  std::string line;
  std::getline(f, line);
  const auto st = parse_proc_stat(line);
  ASSERT_TRUE(st.has_value()) << line;
  EXPECT_EQ(st->state, 'R');
  EXPECT_EQ(st->flags & kProcFlagExiting, 0u);
  EXPECT_GE(st->num_threads, 1);
  EXPECT_GT(st->start_ticks, 0u);
}

TEST(ProcStatusParse, SigkillPendingPrivatelyOrShared) {
  EXPECT_FALSE(status_shows_sigkill_pending(status_text(0, 0)));
  EXPECT_FALSE(status_shows_sigkill_pending(status_text(1ull << (SIGTERM - 1), 1ull << (SIGINT - 1))));
  EXPECT_TRUE(status_shows_sigkill_pending(status_text(kSigkillBit, 0)));
  EXPECT_TRUE(status_shows_sigkill_pending(status_text(0, kSigkillBit | 1)));
  EXPECT_FALSE(status_shows_sigkill_pending("Name:\tw\n"));
}

TEST_F(FakeProc, OpenNeedsAPidProcShows) {
  EXPECT_FALSE(ExitWatch::open(0, root_).is_ok()) << "pid 0: a peer in a pid namespace the daemon cannot see";
  EXPECT_FALSE(ExitWatch::open(-3, root_).is_ok());
  EXPECT_FALSE(ExitWatch::open(77, root_).is_ok()) << "no /proc/77";
  write_file(root_ / "78" / "stat", "garbage\n");
  EXPECT_FALSE(ExitWatch::open(78, root_).is_ok());
}

TEST_F(FakeProc, SingleThreadedExitingOrReplaced) {
  const fs::path stat = root_ / "100" / "stat";
  write_file(stat, stat_line(100, "w (1)", 'S', 0x400000, 1, 5000));
  auto w = ExitWatch::open(100, root_);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string why;
  EXPECT_EQ(w->check(&why), ExitWatch::State::kAlive);
  write_file(stat, stat_line(100, "w (1)", 'D', 0x400000 | kProcFlagExiting, 1, 5000));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting);
  EXPECT_NE(why.find("PF_EXITING"), std::string::npos) << why;
  write_file(stat, stat_line(100, "w", 'S', 0x400000, 1, 5001));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting) << "another start time: not the process that connected";
  EXPECT_NE(why.find("started later"), std::string::npos) << why;
  write_file(stat, "");
  EXPECT_EQ(w->check(&why), ExitWatch::State::kUnwatchable) << "never call an unreadable process lost";
  w->reset();
  EXPECT_FALSE(w->watching());
  EXPECT_EQ(w->check(&why), ExitWatch::State::kUnwatchable);
}

TEST_F(FakeProc, MultiThreadedExitingOnlyWhenEveryThreadIs) {
  const fs::path stat = root_ / "200" / "stat";
  write_file(stat, stat_line(200, "w", 'S', 0, 3, 7000));
  write_file(task(200, 200) / "stat", stat_line(200, "w", 'S', 0, 3, 7000));
  write_file(task(200, 201) / "stat", stat_line(201, "w", 'R', kProcFlagExiting, 3, 7001));
  write_file(task(200, 202) / "stat", stat_line(202, "w", 'S', 0, 3, 7002));
  write_file(task(200, 202) / "status", status_text(0, 0));
  auto w = ExitWatch::open(200, root_);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string why;
  EXPECT_EQ(w->check(&why), ExitWatch::State::kAlive);
  // The main thread exits, thread 202 runs on: not yet (the main thread may be ending alone).
  write_file(stat, stat_line(200, "w", 'R', kProcFlagExiting, 3, 7000));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kAlive);
  // Thread 202 has SIGKILL pending (exit_group or kill()): every thread is on its way out.
  write_file(task(200, 202) / "status", status_text(kSigkillBit, 0));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting);
  EXPECT_NE(why.find("2 other thread(s)"), std::string::npos) << why;
  write_file(task(200, 202) / "status", status_text(0, kSigkillBit));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting);
  // A thread already gone counts as exiting.
  fs::remove_all(task(200, 202));
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting);
  // The task list gone with the process.
  fs::remove_all(root_ / "200" / "task");
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting);
}

TEST_F(FakeProc, MainThreadEndedAloneIsNoLongerWatched) {
  const fs::path stat = root_ / "300" / "stat";
  write_file(stat, stat_line(300, "w", 'S', 0, 2, 9000));
  write_file(task(300, 301) / "stat", stat_line(301, "w", 'S', 0, 2, 9001));
  write_file(task(300, 301) / "status", status_text(0, 0));
  auto w = ExitWatch::open(300, root_);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  write_file(stat, stat_line(300, "w", 'Z', kProcFlagExiting, 2, 9000));
  std::string why;
  EXPECT_EQ(w->check(&why), ExitWatch::State::kUnwatchable);
  EXPECT_NE(why.find("thread 301 runs on"), std::string::npos) << why;
}

TEST_F(FakeProc, ProcOfAnotherPidNamespaceIsRefused) {
  EXPECT_TRUE(proc_shows_own_pid("/proc").is_ok()) << proc_shows_own_pid("/proc").to_string();
  fs::create_symlink("1", root_ / "self");
  const Status st = proc_shows_own_pid(root_.string());
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("another pid namespace"), std::string::npos) << st.message();
  EXPECT_FALSE(proc_shows_own_pid((root_ / "none").string()).is_ok());
}

// Checks `w` until it leaves kAlive (bounded); the state it left for.
ExitWatch::State first_change(ExitWatch& w, std::string* why) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  ExitWatch::State s = ExitWatch::State::kAlive;
  while (s == ExitWatch::State::kAlive && std::chrono::steady_clock::now() < deadline) s = w.check(why);
  return s;
}

TEST(ExitWatchLive, KilledChildIsExitingThenGone) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    for (;;) pause();
  }
  auto w = ExitWatch::open(pid);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string why;
  EXPECT_EQ(w->check(&why), ExitWatch::State::kAlive) << why;
  kill(pid, SIGKILL);
  EXPECT_EQ(first_change(*w, &why), ExitWatch::State::kExiting) << why;
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  EXPECT_EQ(w->check(&why), ExitWatch::State::kExiting) << why;
  EXPECT_NE(why.find("has exited"), std::string::npos) << why;
}

TEST(ExitWatchLive, KilledMultiThreadedChildIsExiting) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    pthread_t t[3];
    for (auto& th : t) pthread_create(&th, nullptr, [](void*) -> void* { for (;;) pause(); }, nullptr);
    for (;;) pause();
  }
  auto w = ExitWatch::open(pid);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string why;
  kill(pid, SIGKILL);
  EXPECT_EQ(first_change(*w, &why), ExitWatch::State::kExiting) << why;
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
}

// A main thread that ends alone (pthread_exit) leaves a zombie main thread and
// a live process: it must never look like an exit.
TEST(ExitWatchLive, MainThreadEndingAloneIsNeverCalledExiting) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    pthread_t th;
    pthread_create(&th, nullptr, [](void*) -> void* { for (;;) pause(); }, nullptr);
    // The exit system call ends this thread only (pthread_exit's end, without
    // its unwinding, which gtest's handlers in this forked copy would catch).
    syscall(SYS_exit, 0);
  }
  auto w = ExitWatch::open(pid);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  std::string why;
  EXPECT_EQ(first_change(*w, &why), ExitWatch::State::kUnwatchable) << why;
  EXPECT_EQ(kill(pid, 0), 0) << "the process lives on";
  kill(pid, SIGKILL);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
}

}  // namespace
}  // namespace epd
