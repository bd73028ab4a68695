// harness.cc — the test fixtures of harness.h.
#include "harness.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "epctl_query.h"
#include "protocol.h"

namespace epd::test {

std::string worker_path() { return EPD_TEST_WORKER; }
std::string epd_path() { return EPD_TEST_DAEMON; }
std::string epctl_path() { return EPD_TEST_EPCTL; }

Watchdog::Watchdog(const std::string& name, int seconds) {
  thread_ = std::thread([this, name, seconds] {
    std::unique_lock<std::mutex> lk(mu_);
    if (cv_.wait_for(lk, std::chrono::seconds(seconds), [&] { return done_; })) return;
    std::fprintf(stderr, "WATCHDOG: test %s passed its deadline of %d s; ending its processes\n", name.c_str(), seconds);
    for (int pid : pids_) kill(pid, SIGKILL);
    std::abort();
  });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::add_pid(int pid) {
  std::lock_guard<std::mutex> lk(mu_);
  pids_.push_back(pid);
}

void DaemonTest::SetUp() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  watchdog_ = std::make_unique<Watchdog>(std::string(info->test_suite_name()) + "." + info->name(), deadline_s());
  dir_ = std::make_unique<job::TempDir>("epd-test");
  ASSERT_FALSE(dir_->path().empty()) << "mkdtemp failed";
  daemon_ = std::make_unique<job::DaemonProcess>(epd_path(), dir_->path(), daemon_args());
  if (daemon_->child().pid() > 0) watchdog_->add_pid(daemon_->child().pid());
  ASSERT_TRUE(daemon_->ok()) << daemon_->error();
}

void DaemonTest::TearDown() {
  children_.clear();  // SIGKILLs any still running, by pid
  if (daemon_ && daemon_->child().running()) {
    const int rc = daemon_->stop(10000);
    EXPECT_EQ(rc, 0) << "epd did not exit 0 on SIGTERM";
  }
  daemon_.reset();
  dir_.reset();
  watchdog_.reset();
}

job::Child& DaemonTest::worker(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {worker_path(), "--socket", socket()};
  argv.insert(argv.end(), args.begin(), args.end());
  children_.push_back(std::make_unique<job::Child>(job::Child::spawn(argv)));
  if (children_.back()->pid() > 0) watchdog_->add_pid(children_.back()->pid());
  return *children_.back();
}

epd_client_t* connect_or_die(const std::string& socket) {
  epd_client_t* c = nullptr;
  const epd_status_t rc = epd_client_connect(socket.c_str(), &c);
  EXPECT_EQ(rc, EPD_OK) << epd_client_last_error(nullptr);
  return c;
}

bool wait_rank_state(const std::string& socket, const std::string& group, int rank, const std::string& state,
                     int timeout_ms) {
  const std::string want = "{\"group\":\"" + group + "\",\"generation\":";
  const std::string tail = "\"rank\":" + std::to_string(rank) + ",\"state\":\"" + state + "\"";
  const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  while (job::now_ns() < deadline) {
    std::string body;
    if (query_daemon_status(socket, "ranks", true, body) != EPD_OK) continue;
    for (size_t at = body.find(want); at != std::string::npos; at = body.find(want, at + 1)) {
      const size_t end = body.find('}', at);
      if (body.substr(at, end - at).find(tail) != std::string::npos) return true;
    }
  }
  return false;
}

int raw_connect(const std::string& socket) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", socket.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool raw_send(int fd, const std::vector<uint8_t>& bytes) {
  return send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

bool raw_reply(int fd, int timeout_ms, int32_t& status, std::string& message, uint16_t& type) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return false;
  proto::Received rx;
  if (proto::recv_record(fd, rx, false) != 0 || rx.eof) return false;
  for (int f : rx.fds) close(f);
  auto f = proto::decode_frame(rx.data.data(), rx.data.size());
  if (!f) return false;
  type = static_cast<uint16_t>(f->header.type);
  if (f->header.type == proto::MsgType::kError || f->header.type == proto::MsgType::kShutdown) {
    auto r = proto::decode_reply(*f);
    if (!r) return false;
    status = r->status;
    message = r->message;
    return true;
  }
  if (f->header.type == proto::MsgType::kJoinReply) {
    auto r = proto::decode_join_reply(*f);
    if (!r) return false;
    status = r->status;
    message = r->message;
    return true;
  }
  status = 0;
  message.clear();
  return true;
}

}  // namespace epd::test
