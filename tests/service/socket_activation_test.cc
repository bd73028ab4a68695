// socket_activation_test.cc — the real `epd` binary started by
// `systemd-socket-activate --seqpacket` on a private socket, with a test
// NOTIFY_SOCKET: a client connection activates it, it must send READY=1 from
// the activated pid and keep serving on the passed socket (same inode), then
// SIGTERM gives STOPPING=1 and a clean exit. Skipped until the epd target exists.
#include <gtest/gtest.h>

#include <sys/inotify.h>

#include <sched.h>

#include "service_test_support.h"

namespace epd {
namespace {

using namespace std::chrono_literals;
using test::Clock;

// Waits (bounded, inotify + poll) until `name` appears in `dir`, or the child exits.
bool wait_for_file(const std::string& dir, const std::string& name, const test::Child& child,
                   Clock::time_point deadline) {
  const int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in < 0) return false;
  inotify_add_watch(in, dir.c_str(), IN_CREATE | IN_MOVED_TO);
  const std::string path = dir + "/" + name;
  bool found = false;
  struct stat st {};
  while (!(found = stat(path.c_str(), &st) == 0) && test::ms_left(deadline) > 0) {
    pollfd p[2] = {{in, POLLIN, 0}, {child.pidfd(), POLLIN, 0}};
    if (poll(p, 2, test::ms_left(deadline)) < 0 && errno != EINTR) break;
    if (p[1].revents) break;  // the activator exited
    char buf[4096];
    while (read(in, buf, sizeof buf) > 0) {
    }
  }
  close(in);
  return found;
}

// Connects a SOCK_SEQPACKET client. The activator binds, then listens: a
// connect between the two is refused, so retry (yielding) until the deadline.
int connect_seqpacket(const std::string& path, Clock::time_point deadline) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  while (true) {
    const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    const int err = errno;
    close(fd);
    if (err != ECONNREFUSED || test::ms_left(deadline) == 0) {
      errno = err;
      return -1;
    }
    sched_yield();
  }
}

TEST(SocketActivation, ReadyOnPassedSocketThenCleanStop) {
  const std::string epd = EPD_BINARY;
  if (epd.empty()) GTEST_SKIP() << "the epd binary is not part of this build yet";
  const std::string activate = test::find_in_path("systemd-socket-activate");
  if (activate.empty()) GTEST_SKIP() << "systemd-socket-activate is not installed";

  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  test::NotifyListener notify(dir.file("notify"));
  ASSERT_TRUE(notify.ok()) << std::strerror(errno);
  const std::string sock = dir.file("epd.sock");
  const std::string log = dir.file("epd.log");

  // systemd-socket-activate passes only TERM, PATH, USER, HOME and -E variables on.
  test::Child child;
  ASSERT_TRUE(child.start({activate, "--seqpacket", "-l", sock, "-E", "NOTIFY_SOCKET=" + notify.path(),
                           "--", epd, "--config", "", "--socket", sock, "--log-target", "stderr",
                           "--log-level", "debug"},
                          log))
      << std::strerror(errno);
  const auto deadline = Clock::now() + 20s;
  const auto daemon_log = [&] { return "\n--- epd log ---\n" + test::read_file(log); };

  ASSERT_TRUE(wait_for_file(dir.path(), "epd.sock", child, deadline))
      << "systemd-socket-activate did not create the socket" << daemon_log();
  struct stat before {};
  ASSERT_EQ(stat(sock.c_str(), &before), 0);

  // The first connection makes the activator exec epd with the socket as fd 3.
  const int client = connect_seqpacket(sock, deadline);
  ASSERT_GE(client, 0) << "connect: " << std::strerror(errno) << daemon_log();

  bool ready = false;
  while (!ready && test::ms_left(deadline) > 0) {
    pollfd p[2] = {{notify.fd(), POLLIN, 0}, {child.pidfd(), POLLIN, 0}};
    if (poll(p, 2, test::ms_left(deadline)) < 0 && errno != EINTR) break;
    if (p[0].revents & POLLIN) {
      auto m = notify.receive_now();
      if (!m) continue;
      if (m->text.find("READY=1") != std::string::npos) {
        ready = true;
        // exec keeps the pid: READY must come from the activated main process.
        EXPECT_EQ(m->pid, child.pid()) << m->text;
      }
    } else if (p[1].revents) {
      auto st = child.reap();
      FAIL() << "epd exited before READY=1 (wait status " << (st ? *st : -1) << ")" << daemon_log();
    }
  }
  ASSERT_TRUE(ready) << "no READY=1 within 20 s" << daemon_log();

  // Serving on the passed socket, not on one it bound again.
  struct stat after {};
  ASSERT_EQ(stat(sock.c_str(), &after), 0) << daemon_log();
  EXPECT_EQ(after.st_ino, before.st_ino) << "epd replaced the activated socket" << daemon_log();

  // SIGTERM: STOPPING=1, then a clean exit.
  ASSERT_EQ(kill(child.pid(), SIGTERM), 0);
  const auto stop_deadline = Clock::now() + 15s;
  bool stopping = false;
  std::optional<int> status;
  while (!status && test::ms_left(stop_deadline) > 0) {
    pollfd p[2] = {{notify.fd(), POLLIN, 0}, {child.pidfd(), POLLIN, 0}};
    if (poll(p, 2, test::ms_left(stop_deadline)) < 0 && errno != EINTR) break;
    if (p[0].revents & POLLIN) {
      if (auto m = notify.receive_now(); m && m->text.find("STOPPING=1") != std::string::npos)
        stopping = true;
    } else if (p[1].revents) {
      status = child.reap();
    }
  }
  while (auto m = notify.receive(Clock::now()))  // drain what came just before the exit
    stopping = stopping || m->text.find("STOPPING=1") != std::string::npos;
  close(client);
  ASSERT_TRUE(status.has_value()) << "epd did not exit within 15 s of SIGTERM" << daemon_log();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "wait status " << *status << daemon_log();
  EXPECT_TRUE(stopping) << "no STOPPING=1 after SIGTERM" << daemon_log();
}

}  // namespace
}  // namespace epd
