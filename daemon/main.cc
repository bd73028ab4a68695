// main.cc — the epd binary: configuration, logging, socket activation, then
// the daemon core (server.h) until SIGTERM.
#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

#include "config.h"
#include "gpu_group.h"
#include "logging.h"
#include "sd_glue.h"
#include "server.h"
#include "topology_view.h"

namespace {

// One fd per session, doorbell and shared region: take all the hard limit allows.
void raise_file_limit() {
  using namespace epd;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    log_message(LogLevel::kWarn, errno_status("getrlimit(RLIMIT_NOFILE)", errno).to_string());
    return;
  }
  const rlim_t soft = rl.rlim_cur;
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      log_message(LogLevel::kWarn, "cannot raise the file descriptor limit from " + std::to_string(soft) + " to " +
                                       std::to_string(rl.rlim_max) + ": " + errno_status("setrlimit", errno).to_string());
      return;
    }
  }
  log_message(LogLevel::kInfo, "file descriptor limit: " + std::to_string(rl.rlim_cur) +
                                   (soft != rl.rlim_cur ? " (raised from " + std::to_string(soft) + ")" : "") +
                                   ", hard limit " + std::to_string(rl.rlim_max));
}

// Tearing the server down joins group threads and releases device memory. If
// that hangs (a driver call that does not return), exit anyway: stopping is
// bounded whatever state the groups are in.
constexpr auto kTeardownLimit = std::chrono::seconds(5);

}  // namespace

int main(int argc, char** argv) {
  using namespace epd;
  gpu_prepare_process();  // before anything initialises CUDA
  // SIGTERM / SIGINT are taken through the server's signalfd: block them before
  // any library (CUDA, hwloc plugins) starts threads, which inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto loaded = load_config(argc, argv);
  if (!loaded) {
    std::fprintf(stderr, "epd: %s\n", loaded.status().to_string().c_str());
    return 2;
  }
  if (loaded->outcome != LoadOutcome::kRun) {
    std::fputs(loaded->text.c_str(), stdout);
    return 0;
  }
  const DaemonConfig& cfg = loaded->config;
  auto level = parse_log_level(cfg.log_level);
  if (!level) {
    std::fprintf(stderr, "epd: %s\n", level.status().to_string().c_str());
    return 2;
  }
  if (Status st = init_logging(level.value(), cfg.log_target); !st) {
    std::fprintf(stderr, "epd: %s\n", st.to_string().c_str());
    return 2;
  }
  raise_file_limit();
  load_daemon_topology();
  Server::Options opts;
  opts.config = cfg;
  const std::vector<int> fds = listen_fds();
  if (fds.size() > 1) log_message(LogLevel::kWarn, "socket activation passed several sockets; using the first");
  if (!fds.empty()) opts.listen_fd = fds[0];
  auto server = Server::create(std::move(opts));
  if (!server) {
    log_message(LogLevel::kCritical, "cannot start: " + server.status().to_string());
    return 1;
  }
  Status st;
  try {
    st = server.value()->run();
  } catch (const std::exception& e) {
    st = make_status(EPD_ERR_INTERNAL, "control thread: %s", e.what());
  }
  const int code = st ? 0 : 1;
  if (!st) log_message(LogLevel::kCritical, "stopped on error: " + st.to_string());
  std::mutex mu;
  std::condition_variable cv;
  bool torn_down = false;
  std::thread guard([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, kTeardownLimit, [&] { return torn_down; })) {
      log_message(LogLevel::kWarn, "tearing the groups down takes longer than " +
                                       std::to_string(kTeardownLimit.count()) + " s: exiting without waiting");
      std::_Exit(code);
    }
  });
  server.value().reset();
  {
    std::lock_guard<std::mutex> lock(mu);
    torn_down = true;
  }
  cv.notify_one();
  guard.join();
  return code;
}
