// join_helper.cc — a small client the security tests run as another Unix user
// (after the test forked and dropped to that uid): it connects to the daemon
// and performs each action given, printing one line per action, then leaves
// every group it joined and exits 0 (1 when it cannot connect).
//
//   security_join_helper SOCKET join:NAME:GENERATION:WORLD:RANK ...
//
// Each join (host placement, the harness's small_spec shape) prints
// "join NAME GENERATION -> STATUS MESSAGE" and, joined, keeps its group
// until the end (a join into a group whose other ranks never come would wait
// for its 10 s deadline: the tests use it only where a refusal comes first).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../common/small_spec.h"
#include "epd/epd.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SOCKET join:NAME:GENERATION:WORLD:RANK ...\n", argv[0]);
    return 2;
  }
  epd_client_t* c = nullptr;
  if (const epd_status_t rc = epd_client_connect(argv[1], &c); rc != EPD_OK) {
    std::printf("connect -> %d %s\n", static_cast<int>(rc), epd_client_last_error(nullptr));
    return 1;
  }
  std::vector<epd_group_t*> joined;
  for (int i = 2; i < argc; ++i) {
    char name[64] = {};
    unsigned long long gen = 0;
    int world = 1, rank = 0;
    if (std::sscanf(argv[i], "join:%63[^:]:%llu:%d:%d", name, &gen, &world, &rank) != 4) {
      std::printf("bad action %s\n", argv[i]);
      continue;
    }
    const epd_group_spec_t s = epd::test::small_spec(name, world, rank, 10000, gen);
    epd_group_t* g = nullptr;
    const epd_status_t rc = epd_group_join(c, &s, &g);
    std::printf("join %s %llu -> %d %s\n", name, gen, static_cast<int>(rc),
                rc == EPD_OK ? "" : epd_client_last_error(c));
    std::fflush(stdout);
    if (rc == EPD_OK) joined.push_back(g);
  }
  for (epd_group_t* g : joined) epd_group_leave(g);
  epd_client_disconnect(c);
  return 0;
}
