// daemon_overhead.cc — per-call overhead of an empty (n_tokens = 0) GPU-group
// round trip through the real epd and libepd-client: dispatch_async,
// dispatch_wait_async, combine_async, combine_wait_async of every rank on one
// CUDA stream, then a stream sync; next to the same round trip of GpuExecutor
// launched in this process (overhead_common.h); then the same group with
// executor inline (gpu_inline.h: the ranks' own streams launch, one per rank). LL group shape (top-8 of 256
// experts, hidden 7168, 128 tokens per rank, low_latency, rank_major), world 1
// and world 8 on GPU 0, the 8 ranks held by this process (8 sessions); then
// world 8 as serving engines run it: 8 worker processes (this binary again,
// --worker R), each its own CUDA context, session and stream, driving only its
// rank; the line shows the slowest worker's figures (a step waits for it).
// Usage: epd_gpu_daemon_overhead --socket PATH [--iters N] [--label TEXT].
// One line per measurement (µs per round trip: median, mean, p99).
// tools/gpu/daemon_overhead_run starts epd and runs this without and with MPS.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "epd/epd.hpp"
#include "gpu_armed.h"
#include "gpu_executor.h"
#include "main_job_lib.h"
#include "overhead_common.h"

namespace epd {
namespace {

constexpr unsigned kProcessDeadlineS = 600;  // a hung stream ends the run (SIGALRM) instead of blocking forever

// Joins every rank of `spec` at once, one session each (a join returns when all are in).
bool join_all(const std::string& socket, const GroupSpec& spec, std::vector<Client>& clients,
              std::vector<Group>& groups) {
  const int32_t world = spec.world_size;
  clients.resize(static_cast<size_t>(world));
  groups.resize(static_cast<size_t>(world));
  for (int32_t r = 0; r < world; ++r)
    if (clients[r].connect(socket) != EPD_OK) {
      std::printf("connect %s: %s\n", socket.c_str(), epd_client_last_error(nullptr));
      return false;
    }
  std::vector<epd_status_t> rc(static_cast<size_t>(world), EPD_OK);
  std::vector<std::string> msg(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      epd_group_spec_t c = spec.to_c();
      c.rank = r;
      rc[r] = clients[r].join(c, groups[r]);
      if (rc[r] != EPD_OK) msg[r] = clients[r].last_error();
    });
  for (auto& t : threads) t.join();
  for (int32_t r = 0; r < world; ++r)
    if (rc[r] != EPD_OK) {
      std::printf("join of rank %d to %s: %s\n", r, spec.name.c_str(), msg[r].c_str());
      return false;
    }
  return true;
}

// One empty round trip of every rank, rank r on streams[r]; false (with a message) on an enqueue error.
bool round_trip(std::vector<Group>& groups, int32_t slot, const std::vector<cudaStream_t>& streams) {
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.n_tokens = 0;
  auto failed = [&](Group& g, const char* call) {
    std::printf("%s: %s\n", call, g.last_error().c_str());
    return false;
  };
  for (size_t r = 0; r < groups.size(); ++r)
    if (groups[r].dispatch_async(slot, a, streams[r]) != EPD_OK) return failed(groups[r], "epd_group_dispatch_async");
  for (size_t r = 0; r < groups.size(); ++r)
    if (groups[r].dispatch_wait_async(slot, streams[r]) != EPD_OK)
      return failed(groups[r], "epd_group_dispatch_wait_async");
  for (size_t r = 0; r < groups.size(); ++r)
    if (groups[r].combine_async(slot, EPD_WEIGHTS_ALREADY_APPLIED, nullptr, 0, streams[r]) != EPD_OK)
      return failed(groups[r], "epd_group_combine_async");
  for (size_t r = 0; r < groups.size(); ++r)
    if (groups[r].combine_wait_async(slot, streams[r]) != EPD_OK) return failed(groups[r], "epd_group_combine_wait_async");
  return true;
}

bool sync_all(const std::vector<cudaStream_t>& streams, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (cudaStreamSynchronize(streams[i]) != cudaSuccess) return false;
  return true;
}

// Every slot's last operation completed cleanly, at most timeout_ms each.
bool all_ok(std::vector<Group>& groups, uint32_t timeout_ms) {
  for (size_t r = 0; r < groups.size(); ++r)
    for (int32_t s = 0; s < 2; ++s)
      if (groups[r].gpu_status(s, timeout_ms) != EPD_OK) {
        std::printf("epd_group_gpu_status(rank %zu, slot %d): %s\n", r, s, groups[r].last_error().c_str());
        return false;
      }
  return true;
}

// The worker role: rank `rank` of world-8 group `name` in this process only;
// prints "result MEDIAN MEAN P99" (µs) or "error TEXT" on stdout.
int worker_main(const std::string& socket, const std::string& name, int32_t rank, epd_executor_t executor,
                int iters) {
  auto fail = [](const std::string& what) {
    std::printf("error %s\n", what.c_str());
    return 1;
  };
  if (cudaSetDevice(0) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) return fail("no CUDA device 0");
  GroupSpec spec = bench::ll_spec(8, name);
  spec.executor = executor;
  spec.timeout_ms = 60000;  // the join waits for 8 processes' CUDA start-up (seconds under MPS)
  std::vector<Client> clients(1);
  std::vector<Group> groups(1);
  if (clients[0].connect(socket) != EPD_OK) return fail(std::string("connect: ") + epd_client_last_error(nullptr));
  epd_group_spec_t c = spec.to_c();
  c.rank = rank;
  if (clients[0].join(c, groups[0]) != EPD_OK) return fail("join: " + clients[0].last_error());
  std::vector<cudaStream_t> st(1, nullptr);
  if (cudaStreamCreateWithFlags(&st[0], cudaStreamNonBlocking) != cudaSuccess) return fail("stream");
  if (!round_trip(groups, 0, st) || !all_ok(groups, spec.timeout_ms)) return fail("first round trip");
  std::vector<double> us;
  bool ok = true;
  for (int i = 1; i < bench::kWarmup + iters && ok; ++i) {
    const double t0 = bench::now_us();
    ok = round_trip(groups, i % 2, st) && sync_all(st, 1);
    if (i >= bench::kWarmup) us.push_back(bench::now_us() - t0);
  }
  if (!ok || !all_ok(groups, spec.timeout_ms)) return fail("a round trip failed");
  const bench::Stats r = bench::stats(std::move(us));
  std::printf("result %.3f %.3f %.3f\n", r.median, r.mean, r.p99);
  return 0;
}

// Runs 8 worker processes of one group (job::Child: pidfd and bounded
// waits), reads each one's line within `deadline_s` and ends them by pid;
// fills the slowest worker's figures, or returns why not.
std::string run_worker_processes(const std::string& socket, const std::string& name, epd_executor_t executor,
                                 int iters, unsigned deadline_s, bench::Stats* slowest) {
  constexpr int kWorkers = 8;
  std::vector<job::Child> workers;
  for (int r = 0; r < kWorkers; ++r)
    workers.push_back(job::Child::spawn({"/proc/self/exe", "--worker", std::to_string(r), "--socket", socket, "--group",
                                         name, "--executor", std::to_string(static_cast<int>(executor)), "--iters",
                                         std::to_string(iters)}));
  const int64_t end = job::now_ns() + int64_t{deadline_s} * 1000000000;
  std::string why;
  *slowest = bench::Stats{0, 0, 0};
  for (int r = 0; r < kWorkers && why.empty(); ++r) {
    std::string line;
    const int left_ms = static_cast<int>(std::max<int64_t>(0, (end - job::now_ns()) / 1000000));
    bench::Stats s{};
    if (workers[r].pid() <= 0) {
      why = "worker " + std::to_string(r) + " did not start";
    } else if (!workers[r].read_line(line, left_ms)) {
      why = "worker " + std::to_string(r) + " gave no result within " + std::to_string(deadline_s) + " s";
    } else if (std::sscanf(line.c_str(), "result %lf %lf %lf", &s.median, &s.mean, &s.p99) != 3) {
      why = "worker " + std::to_string(r) + ": " + line;
    } else if (s.median > slowest->median) {
      *slowest = s;
    }
  }
  for (auto& w : workers) {
    if (!why.empty()) w.kill(SIGKILL);
    if (w.pid() > 0 && w.wait(10000) < 0) w.kill(SIGKILL);  // the destructor reaps what is left
  }
  return why;
}

int run(const std::string& socket, int iters, const std::string& label) {
  auto count = gpu_device_count();
  if (!count) {
    std::printf("no GPU: %s\n", count.status().message().c_str());
    return 0;
  }
  cudaSetDevice(0);
  cudaFree(nullptr);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("overhead [%s] device %s; %s\n", label.c_str(), prop.name, detect_mps(0).description.c_str());
  {
    Client probe;
    epd_client_info_t info{};
    if (probe.connect(socket) != EPD_OK || probe.query(info) != EPD_OK) {
      std::printf("no epd at %s: %s\n", socket.c_str(), epd_client_last_error(nullptr));
      return 1;
    }
    if (!(info.capabilities & EPD_CAP_GPU_EXECUTOR)) {
      std::printf("epd %s (pid %d) does not serve GPU groups (capabilities 0x%llx)\n", info.daemon_version,
                  info.daemon_pid, static_cast<unsigned long long>(info.capabilities));
      return 1;
    }
  }
  // The daemon's groups: every rank on one stream (as before); inline: rank r
  // on its own stream (its launch waits for the other ranks' launches).
  std::vector<cudaStream_t> streams(8, nullptr);
  for (auto& st : streams)
    if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess) {
      std::printf("cudaStreamCreateWithFlags failed\n");
      return 1;
    }
  int rc = 0;
  for (int32_t world : {1, 8}) {
    GroupSpec spec = bench::ll_spec(world, "overhead_w" + std::to_string(world));
    if (!bench::print_in_process_line(label, world, spec, iters)) return 1;  // the in-process baseline
    for (const epd_executor_t executor : {EPD_EXECUTOR_DAEMON, EPD_EXECUTOR_INLINE}) {
      const bool in_line = executor == EPD_EXECUTOR_INLINE;
      spec.executor = executor;
      spec.name = "overhead_w" + std::to_string(world) + (in_line ? "_inline" : "");
      std::vector<cudaStream_t> use(static_cast<size_t>(world), streams[0]);
      if (in_line) use.assign(streams.begin(), streams.begin() + world);
      std::vector<Client> clients;
      std::vector<Group> groups;
      if (!join_all(socket, spec, clients, groups)) return 1;
      // The first round trip with bounded waits: a daemon that never completes fails here, not in a sync.
      if (!round_trip(groups, 0, use) || !all_ok(groups, spec.timeout_ms)) return 1;
      std::vector<double> us;
      bool ok = true;
      for (int i = 1; i < bench::kWarmup + iters && ok; ++i) {
        const double t0 = bench::now_us();
        ok = round_trip(groups, i % 2, use) && sync_all(use, use.size());
        if (i >= bench::kWarmup) us.push_back(bench::now_us() - t0);
      }
      ok = ok && all_ok(groups, spec.timeout_ms);
      bench::print_line(label, world,
                        in_line ? "epd inline executor, libepd-client (stream per rank)" : "epd daemon, libepd-client",
                        bench::stats(std::move(us)), iters, ok ? "" : " FAILED");
      if (!ok) rc = 1;
    }
  }
  for (auto& st : streams) cudaStreamDestroy(st);
  // World 8 as serving engines run it: one worker process per rank.
  const bool mps = detect_mps(0).active;
  for (const epd_executor_t executor : {EPD_EXECUTOR_DAEMON, EPD_EXECUTOR_INLINE}) {
    const bool in_line = executor == EPD_EXECUTOR_INLINE;
    if (in_line && !mps) {
      // Without MPS the processes' kernels time-slice: one shard's barrier
      // spins through whole time slices waiting for the others (on an H100 no
      // worker finished 1500 round trips within 120 s).
      std::printf("overhead [%s] ranks=8 epd inline executor, 8 worker processes: skipped: needs MPS\n",
                  label.c_str());
      continue;
    }
    bench::Stats slowest{};
    const std::string why = run_worker_processes(socket, in_line ? "overhead_p8_inline" : "overhead_p8", executor,
                                                 iters, 120, &slowest);
    const char* what = in_line ? "epd inline executor, 8 worker processes (slowest)"
                               : "epd daemon, 8 worker processes (slowest)";
    if (why.empty()) {
      bench::print_line(label, 8, what, slowest, iters, "");
    } else {
      std::printf("overhead [%s] ranks=8 %s: FAILED: %s\n", label.c_str(), what, why.c_str());
      rc = 1;
    }
  }
  return rc;
}

}  // namespace
}  // namespace epd

int main(int argc, char** argv) {
  epd::armed_prepare_environment();
  alarm(epd::kProcessDeadlineS);
  std::string socket, label = "default", group;
  int iters = 3000, worker = -1, executor = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--socket") == 0) socket = argv[i + 1];
    else if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--label") == 0) label = argv[i + 1];
    else if (std::strcmp(argv[i], "--worker") == 0) worker = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--group") == 0) group = argv[i + 1];
    else if (std::strcmp(argv[i], "--executor") == 0) executor = std::atoi(argv[i + 1]);
  }
  if (socket.empty() || iters <= 0) {
    std::fprintf(stderr, "usage: %s --socket PATH [--iters N] [--label TEXT]\n", argv[0]);
    return 2;
  }
  if (worker >= 0) return epd::worker_main(socket, group, worker, static_cast<epd_executor_t>(executor), iters);
  return epd::run(socket, iters, label);
}
