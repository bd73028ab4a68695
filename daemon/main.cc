// main.cc — the epd binary: configuration, logging, socket activation, then
// the daemon core (server.h) until SIGTERM.
#include <signal.h>

#include <cstdio>
#include <exception>

#include "config.h"
#include "gpu_group.h"
#include "logging.h"
#include "sd_glue.h"
#include "server.h"
#include "topology_view.h"

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
  if (!st) {
    log_message(LogLevel::kCritical, "stopped on error: " + st.to_string());
    return 1;
  }
  return 0;
}
