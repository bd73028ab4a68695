// rank_helper.cc — one rank of a host group in its own process, driven line by
// line on stdin, so a test can SIGKILL it at an exact point of a step (inside
// combine_wait, between steps). Usage: fault_rank_helper --socket PATH.
// Commands (one per line; each answered by one line on stdout):
//   join NAME WORLD RANK GENERATION TIMEOUT_MS -> JOINED | ERR join CODE MESSAGE
//   dispatch SLOT N | dwait SLOT | combine SLOT | cwait SLOT | step SLOT N | leave
//                                               -> OK CMD | ERR CMD CODE MESSAGE
//   mappings N: maps one 2 MiB memfd N times, populated, so that the
//     process's exit must tear down N * 512 page-table entries (a slow exit,
//     as a GPU worker's is, from 2 MiB and N * 4 KiB of page tables)
//                                               -> OK mappings | ERR mappings CODE MESSAGE
//   lock PATH: opens (creates) PATH and takes a POSIX write lock on it, held
//     until the process closes its descriptors: an exit releases it before
//     any of its files (its session socket) is released
//                                               -> OK lock | ERR lock CODE MESSAGE
// A wait prints "WAITING CMD" just before it blocks. The spec is the tests'
// small host spec (fp32, hidden 32, 4 experts per rank, top_k 2, 2 slots).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../common/small_spec.h"
#include "epd/epd.h"

namespace {

epd_client_t* client = nullptr;
epd_group_t* group = nullptr;
std::string group_name;

void answer(const char* cmd, epd_status_t st) {
  if (st == EPD_OK) std::printf("OK %s\n", cmd);
  else std::printf("ERR %s %d %s\n", cmd, static_cast<int>(st), group ? epd_group_last_error(group) : "");
  std::fflush(stdout);
}

void waiting(const char* cmd) {
  std::printf("WAITING %s\n", cmd);
  std::fflush(stdout);
}

epd_status_t dispatch(int slot, int n) {
  static std::vector<float> x(8 * 32);
  static std::vector<int32_t> ids(8 * 2);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) * 0.25f;
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 4);  // per token: two distinct experts
  epd_dispatch_args_t a{sizeof a, x.data(), ids.data(), EPD_ID_INT32, nullptr, n};
  return epd_group_dispatch(group, slot, &a);
}

epd_status_t dwait(int slot) {
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  return epd_group_dispatch_wait(group, slot, 0, &r);
}

epd_status_t cwait(int slot) {
  const void* out = nullptr;
  return epd_group_combine_wait(group, slot, 0, &out);
}

epd_status_t join(const char* name, int world, int rank, unsigned long long generation, unsigned timeout_ms) {
  const epd_group_spec_t s = epd::test::small_spec(name, world, rank, timeout_ms, generation);
  return epd_group_join(client, &s, &group);
}

// Answers "mappings N" (see the top of the file).
void map_many(int n) {
  constexpr size_t kBytes = 2u << 20;
  const int fd = memfd_create("fault_rank_helper", MFD_CLOEXEC);
  int mapped = 0;
  if (fd >= 0 && ftruncate(fd, kBytes) == 0)
    while (mapped < n && mmap(nullptr, kBytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0) != MAP_FAILED) ++mapped;
  const int err = errno;
  if (fd >= 0) close(fd);  // the mappings keep the memory until the process exits
  if (mapped == n) std::printf("OK mappings\n");
  else std::printf("ERR mappings %d %d of %d mappings made: %s\n", static_cast<int>(EPD_ERR_SYSTEM), mapped, n,
                   std::strerror(err));
  std::fflush(stdout);
}

// Answers "lock PATH" (see the top of the file).
void lock_file(const char* path) {
  const int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);  // kept open until the process exits
  flock fl{};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fd >= 0 && fcntl(fd, F_SETLK, &fl) == 0) std::printf("OK lock\n");
  else std::printf("ERR lock %d %s: %s\n", static_cast<int>(EPD_ERR_SYSTEM), path, std::strerror(errno));
  std::fflush(stdout);
}

void run(const std::string& line) {
  char cmd[32] = {0}, name[64] = {0};
  int a = 0, b = 0, c = 0;
  unsigned long long gen = 0;
  unsigned t = 0;
  if (std::sscanf(line.c_str(), "%31s", cmd) != 1) return;
  const std::string k = cmd;
  if (k == "join" && std::sscanf(line.c_str(), "%*s %63s %d %d %llu %u", name, &a, &b, &gen, &t) == 5) {
    const epd_status_t st = join(name, a, b, gen, t);
    if (st == EPD_OK) std::printf("JOINED\n");
    else std::printf("ERR join %d %s\n", static_cast<int>(st), epd_client_last_error(client));
    std::fflush(stdout);
    return;
  }
  if (k == "mappings" && std::sscanf(line.c_str(), "%*s %d", &a) == 1) return map_many(a);
  char path[256] = {0};
  if (k == "lock" && std::sscanf(line.c_str(), "%*s %255s", path) == 1) return lock_file(path);
  if (!group) return answer(cmd, EPD_ERR_NOT_JOINED);
  const int n = std::sscanf(line.c_str(), "%*s %d %d", &a, &c);
  if (k == "dispatch" && n == 2) return answer(cmd, dispatch(a, c));
  if (k == "dwait" && n >= 1) return waiting(cmd), answer(cmd, dwait(a));
  if (k == "combine" && n >= 1) return answer(cmd, epd_group_combine(group, a, EPD_WEIGHTS_ONES));
  if (k == "cwait" && n >= 1) return waiting(cmd), answer(cmd, cwait(a));
  if (k == "step" && n == 2) {
    epd_status_t st = dispatch(a, c);
    if (st == EPD_OK) st = dwait(a);
    if (st == EPD_OK) st = epd_group_combine(group, a, EPD_WEIGHTS_ONES);
    if (st == EPD_OK) st = cwait(a);
    return answer(cmd, st);
  }
  if (k == "leave") {
    const epd_status_t st = epd_group_leave(group);
    group = nullptr;
    return answer(cmd, st);
  }
  std::printf("ERR %s %d unknown command: %s\n", cmd, static_cast<int>(EPD_ERR_INVALID_ARGUMENT), line.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || std::strcmp(argv[1], "--socket") != 0) {
    std::fprintf(stderr, "usage: %s --socket PATH\n", argv[0]);
    return 2;
  }
  if (epd_client_connect(argv[2], &client) != EPD_OK) {
    std::printf("ERR connect %s\n", epd_client_last_error(nullptr));
    return 1;
  }
  char buf[512];
  while (std::fgets(buf, sizeof buf, stdin)) run(buf);
  if (group) epd_group_leave(group);
  epd_client_disconnect(client);
  return 0;
}
