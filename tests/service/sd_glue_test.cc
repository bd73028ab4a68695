// sd_glue_test.cc — sd_notify messages received by a test NOTIFY_SOCKET
// listener (filesystem and abstract), the watchdog environment, and
// socket-activation fds (LISTEN_FDS / LISTEN_PID).
#include "sd_glue.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <thread>

#include "service_test_support.h"

namespace epd {
namespace {

using namespace std::chrono_literals;
using test::Clock;
using test::NotifyListener;
using test::ScopedEnv;
using test::TempDir;

class SdNotify : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    listener_ = std::make_unique<NotifyListener>(dir_.file("notify"));
    ASSERT_TRUE(listener_->ok()) << std::strerror(errno);
    env_ = std::make_unique<ScopedEnv>("NOTIFY_SOCKET", listener_->path());
  }

  // The next message, bounded; fails the test when none comes.
  std::string next() {
    auto m = listener_->receive(Clock::now() + 5s);
    if (!m) {
      ADD_FAILURE() << "no notification within 5 s";
      return {};
    }
    EXPECT_EQ(m->pid, getpid()) << "sender credentials";
    return m->text;
  }

  TempDir dir_;
  std::unique_ptr<NotifyListener> listener_;
  std::unique_ptr<ScopedEnv> env_;
};

TEST_F(SdNotify, ReadyStatusWatchdogStopping) {
  ASSERT_TRUE(notify_ready("serving 0 groups").is_ok());
  EXPECT_EQ(next(), "READY=1\nSTATUS=serving 0 groups");
  ASSERT_TRUE(notify_ready("").is_ok());
  EXPECT_EQ(next(), "READY=1");
  ASSERT_TRUE(notify_status("2 groups, 16 sessions").is_ok());
  EXPECT_EQ(next(), "STATUS=2 groups, 16 sessions");
  ASSERT_TRUE(notify_watchdog().is_ok());
  EXPECT_EQ(next(), "WATCHDOG=1");
  ASSERT_TRUE(notify_stopping().is_ok());
  EXPECT_EQ(next(), "STOPPING=1");
  // Nothing else was sent.
  EXPECT_FALSE(listener_->receive(Clock::now()).has_value());
}

TEST_F(SdNotify, StatusLineStaysOneAssignment) {
  ASSERT_TRUE(notify_status("line one\nREADY=1").is_ok());
  EXPECT_EQ(next(), "STATUS=line one READY=1");
}

TEST_F(SdNotify, FromAnotherThread) {
  Status st;
  std::thread t([&] { st = notify_status("from a thread"); });
  t.join();
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(next(), "STATUS=from a thread");
}

TEST(SdNotifyAbstract, AbstractSocketName) {
  std::random_device rd;
  const std::string name = "@epd-svc-test-" + std::to_string(getpid()) + "-" + std::to_string(rd());
  NotifyListener listener(name);
  ASSERT_TRUE(listener.ok()) << std::strerror(errno);
  ScopedEnv env("NOTIFY_SOCKET", name);
  ASSERT_TRUE(notify_ready("abstract").is_ok());
  auto m = listener.receive(Clock::now() + 5s);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->text, "READY=1\nSTATUS=abstract");
}

TEST(SdNotifyEnv, UnsetIsANoOp) {
  ScopedEnv env("NOTIFY_SOCKET", std::nullopt);
  EXPECT_TRUE(notify_ready("x").is_ok());
  EXPECT_TRUE(notify_status("x").is_ok());
  EXPECT_TRUE(notify_stopping().is_ok());
  EXPECT_TRUE(notify_watchdog().is_ok());
}

TEST(SdNotifyEnv, BadSocketsAreErrorsNamingThem) {
  {
    ScopedEnv env("NOTIFY_SOCKET", "relative/notify");
    Status st = notify_ready("x");
    EXPECT_EQ(st.code(), EPD_ERR_INVALID_ARGUMENT);
    EXPECT_NE(st.message().find("'relative/notify'"), std::string::npos) << st.message();
  }
  {
    TempDir dir;
    ASSERT_TRUE(dir.ok());
    const std::string path = dir.file("nobody-listens");
    ScopedEnv env("NOTIFY_SOCKET", path);
    Status st = notify_ready("x");
    EXPECT_EQ(st.code(), EPD_ERR_SYSTEM);
    EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
  }
  {
    ScopedEnv env("NOTIFY_SOCKET", "/" + std::string(200, 'n'));
    EXPECT_EQ(notify_ready("x").code(), EPD_ERR_INVALID_ARGUMENT);
  }
}

TEST(Watchdog, Interval) {
  const std::string me = std::to_string(getpid());
  {
    ScopedEnv usec("WATCHDOG_USEC", std::nullopt);
    ScopedEnv pid("WATCHDOG_PID", std::nullopt);
    EXPECT_EQ(watchdog_interval().count(), 0);
  }
  {
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", me);
    EXPECT_EQ(watchdog_interval(), std::chrono::seconds(30));
  }
  {
    ScopedEnv usec("WATCHDOG_USEC", "2500000");
    ScopedEnv pid("WATCHDOG_PID", std::nullopt);  // unset = this process
    EXPECT_EQ(watchdog_interval(), std::chrono::milliseconds(2500));
  }
  {
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid() + 1));  // another process's
    EXPECT_EQ(watchdog_interval().count(), 0);
  }
  for (const char* bad : {"", "abc", "-5", "12x", "0"}) {
    ScopedEnv usec("WATCHDOG_USEC", std::string(bad));
    ScopedEnv pid("WATCHDOG_PID", me);
    EXPECT_EQ(watchdog_interval().count(), 0) << "WATCHDOG_USEC=" << bad;
  }
}

// Puts a fresh socket at fd `target` for the test, restoring whatever was there.
class FdSlot {
 public:
  explicit FdSlot(int target) : target_(target) {
    if (fcntl(target, F_GETFD) >= 0) saved_ = fcntl(target, F_DUPFD_CLOEXEC, 100);
    int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);  // no CLOEXEC: listen_fds must set it
    if (s >= 0 && s != target) {
      dup2(s, target);
      close(s);
    }
  }
  ~FdSlot() {
    if (saved_ >= 0) {
      dup2(saved_, target_);
      close(saved_);
    } else {
      close(target_);
    }
  }
  FdSlot(const FdSlot&) = delete;
  FdSlot& operator=(const FdSlot&) = delete;

 private:
  int target_;
  int saved_ = -1;
};

// Keeps fd `target` closed for the scope, restoring whatever was there.
class ClosedSlot {
 public:
  explicit ClosedSlot(int target) : target_(target) {
    if (fcntl(target, F_GETFD) >= 0) {
      saved_ = fcntl(target, F_DUPFD_CLOEXEC, 100);
      close(target);
    }
  }
  ~ClosedSlot() {
    if (saved_ >= 0) {
      dup2(saved_, target_);
      close(saved_);
    }
  }
  ClosedSlot(const ClosedSlot&) = delete;
  ClosedSlot& operator=(const ClosedSlot&) = delete;

 private:
  int target_;
  int saved_ = -1;
};

bool cloexec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

TEST(ListenFds, NoneWithoutEnvironment) {
  ScopedEnv pid("LISTEN_PID", std::nullopt);
  ScopedEnv fds("LISTEN_FDS", std::nullopt);
  EXPECT_TRUE(listen_fds().empty());
  Result<std::vector<int>> r = listen_fds_checked();
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(r->empty());
}

TEST(ListenFds, PassedFdsFrom3WithCloexec) {
  FdSlot a(3), b(4);
  ASSERT_FALSE(cloexec(3));
  ScopedEnv pid("LISTEN_PID", std::to_string(getpid()));
  ScopedEnv fds("LISTEN_FDS", "2");
  EXPECT_EQ(listen_fds(), (std::vector<int>{3, 4}));
  EXPECT_TRUE(cloexec(3));
  EXPECT_TRUE(cloexec(4));
  // The environment is left alone: a second call sees the same fds.
  EXPECT_EQ(listen_fds(), (std::vector<int>{3, 4}));
}

TEST(ListenFds, WrongPidIsIgnored) {
  FdSlot a(3);
  ScopedEnv pid("LISTEN_PID", std::to_string(getpid() + 1));
  ScopedEnv fds("LISTEN_FDS", "1");
  EXPECT_TRUE(listen_fds().empty());
  EXPECT_FALSE(cloexec(3)) << "an fd meant for another process was touched";
}

TEST(ListenFds, FdsWithoutPidAreIgnored) {
  ScopedEnv pid("LISTEN_PID", std::nullopt);
  ScopedEnv fds("LISTEN_FDS", "1");
  EXPECT_TRUE(listen_fds().empty());
}

TEST(ListenFds, MalformedEnvironmentNamesTheValue) {
  const std::string me = std::to_string(getpid());
  {
    ScopedEnv pid("LISTEN_PID", "12ab");
    ScopedEnv fds("LISTEN_FDS", "1");
    Result<std::vector<int>> r = listen_fds_checked();
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("LISTEN_PID = '12ab'"), std::string::npos)
        << r.status().message();
    EXPECT_TRUE(listen_fds().empty());
  }
  {
    ScopedEnv pid("LISTEN_PID", me);
    ScopedEnv fds("LISTEN_FDS", "two");
    Result<std::vector<int>> r = listen_fds_checked();
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("LISTEN_FDS = 'two'"), std::string::npos)
        << r.status().message();
  }
  {
    // fd 3 passed, fd 4 claimed but not open.
    FdSlot a(3);
    ClosedSlot b(4);
    ScopedEnv pid("LISTEN_PID", me);
    ScopedEnv fds("LISTEN_FDS", "2");
    Result<std::vector<int>> r = listen_fds_checked();
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("fd 4 is not open"), std::string::npos)
        << r.status().message();
  }
}

}  // namespace
}  // namespace epd
