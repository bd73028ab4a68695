// epctl.cc — operator command for a running epd:
//   epctl [--socket PATH] [--json] status|groups|ranks|counters|sessions|topology|all
//   epctl [--socket PATH] --version
// PATH defaults to $EPD_SOCKET, else /run/epd/epd.sock. Exit 0 on success, 1
// when the daemon answered with an error, 2 on usage errors, 3 when no daemon.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "epctl_query.h"
#include "protocol.h"

#ifndef EPD_VERSION_STRING
#define EPD_VERSION_STRING "unknown"
#endif

namespace {

void usage(FILE* to) {
  std::fprintf(to,
               "usage: epctl [--socket PATH] [--json] SUBCOMMAND\n"
               "       epctl [--socket PATH] --version\n"
               "subcommands: %s (default: status)\n"
               "  status    the daemon: pid, uptime, executor, socket, GPU, cluster threads\n"
               "  groups    one row per group: spec, ranks joined, lost ranks, executor\n"
               "  ranks     one row per rank: state, session, pid, uid, last progress\n"
               "  counters  per rank: dispatch/combine calls, tokens, rows and bytes\n"
               "  sessions  one row per client connection (alias: clients)\n"
               "  topology  GPUs, NICs, NUMA nodes, proxy pinning, GPU peer matrix\n"
               "  all       every one of the above\n"
               "PATH defaults to $EPD_SOCKET, else /run/epd/epd.sock. --json: machine-readable output.\n",
               epd::kEpctlSubcommands);
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("EPD_SOCKET");
  std::string socket = env && *env ? env : "/run/epd/epd.sock";
  std::string what;
  bool json = false, version = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--version" || a == "-V") version = true;
    else if (a == "--socket" && i + 1 < argc) socket = argv[++i];
    else if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a.rfind("-", 0) != 0 && what.empty()) what = a;
    else {
      std::fprintf(stderr, "epctl: unexpected argument '%s' (see epctl --help)\n", a.c_str());
      return 2;
    }
  }
  if (version) {
    // Our own version always; the daemon's when one answers on the socket.
    std::printf("epctl %s (protocol %u.%u)\n", EPD_VERSION_STRING, epd::proto::kMajor, epd::proto::kMinor);
    std::string daemon;
    if (epd::query_daemon_version(socket, daemon) == EPD_OK)
      std::printf("epd %s at %s\n", daemon.c_str(), socket.c_str());
    else
      std::printf("epd: not reachable at %s (%s)\n", socket.c_str(), daemon.c_str());
    return 0;
  }
  if (what.empty()) what = "status";
  std::string body;
  const epd_status_t rc = epd::query_daemon_status(socket, what, json, body);
  if (rc != EPD_OK) {
    std::fprintf(stderr, "epctl: %s\n", body.c_str());
    return rc == EPD_ERR_INVALID_ARGUMENT ? 2 : rc == EPD_ERR_DAEMON_LOST ? 3 : 1;
  }
  std::fputs(body.c_str(), stdout);
  if (body.empty() || body.back() != '\n') std::fputc('\n', stdout);
  return 0;
}
