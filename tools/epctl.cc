// epctl.cc — operator command for a running epd:
//   epctl [--socket PATH] [--json] status|groups|ranks|counters|sessions|topology|all
// PATH defaults to $EPD_SOCKET, else /run/epd/epd.sock. Exit 0 on success, 1
// when the daemon answered with an error, 2 on usage errors, 3 when no daemon.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "epctl_query.h"

int main(int argc, char** argv) {
  const char* env = std::getenv("EPD_SOCKET");
  std::string socket = env && *env ? env : "/run/epd/epd.sock";
  std::string what;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--socket" && i + 1 < argc) socket = argv[++i];
    else if (a == "-h" || a == "--help") {
      std::printf("usage: epctl [--socket PATH] [--json] status|groups|ranks|counters|sessions|topology|all\n");
      return 0;
    } else if (a.rfind("-", 0) != 0 && what.empty()) what = a;
    else {
      std::fprintf(stderr, "epctl: unexpected argument '%s' (see epctl --help)\n", a.c_str());
      return 2;
    }
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
