// overhead_bench.cc — per-call overhead of an empty (n = 0) dispatch + combine
// round trip: (a) GpuExecutor launched in process + stream sync, (b) through
// the armed executor from a client in a separate process (doorbell and
// completion words in the daemon's cuMem workspaces, imported over
// SCM_RIGHTS), from one client process driving every rank and (8 ranks) from
// one process per rank as serving engines run. LL group shape (top-8 of 256
// experts, hidden 7168, 128 tokens per rank, low_latency, rank_major) with 1
// and 8 ranks on GPU 0.
// Usage: epd_overhead_bench [--iters N] [--label TEXT]. Prints one line per
// measurement (µs per round trip: median, mean, p99). Run it once without and
// once with an MPS server started before it (by hand; tools/gpu/daemon_overhead_run measures the path through epd).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../tests/gpu/armed_ipc.h"
#include "gpu_armed.h"
#include "gpu_executor.h"
#include "gpu_ops.h"
#include "layout.h"
#include "overhead_common.h"
#include "spec.h"

namespace epd {
namespace {

using bench::kWarmup;
using bench::now_us;
using bench::Stats;

// What one client process drives: ranks [first, first + count) of the group.
struct Order {
  int32_t world, iters, first, count;
  uint64_t mapped_bytes[8];
};
struct Report {
  int32_t ok;
  double median, mean, p99;
  char message[200];
};

// The client role: imports the workspaces and times round trips on its stream.
int client_main(int sock) {
  Order o{};
  std::vector<int> fds;
  Report rep{};
  if (!test::recv_msg(sock, &o, sizeof o, 30000, &fds) || static_cast<int32_t>(fds.size()) != o.count) return 2;
  auto fail = [&](const Status& s) {
    std::snprintf(rep.message, sizeof rep.message, "%s", s.message().c_str());
    test::send_msg(sock, &rep, sizeof rep);
    return 1;
  };
  auto drv = cu::GpuDriver::get();
  if (!drv) return fail(drv.status());
  const GroupSpec spec = bench::ll_spec(o.world);
  std::vector<std::unique_ptr<GpuWorkspaceMapping>> maps;
  std::vector<std::unique_ptr<GpuRankOps>> ops;
  for (int32_t i = 0; i < o.count; ++i) {
    const int32_t r = o.first + i;
    auto m = GpuWorkspaceMapping::import(**drv, fds[i], o.mapped_bytes[i], 0);
    if (!m) return fail(m.status());
    ::close(fds[i]);
    ops.push_back(std::make_unique<GpuRankOps>(**drv, spec, r, (*m)->base()));
    maps.push_back(std::move(m.value()));
  }
  cu::CUstream st = nullptr;
  if ((*drv)->stream_create(&st, cu::CU_STREAM_NON_BLOCKING) != 0) return fail(make_status(EPD_ERR_CUDA, "stream"));
  std::vector<double> us;
  for (int i = 0; i < kWarmup + o.iters; ++i) {
    const int32_t slot = i % 2;
    const double t0 = now_us();
    for (auto& op : ops) {
      GpuDispatchArgs a;
      a.n_tokens_host = 0;
      if (Status s = op->dispatch(slot, a, st); !s) return fail(s);
    }
    for (auto& op : ops)
      if (Status s = op->dispatch_wait(slot, st); !s) return fail(s);
    for (auto& op : ops)
      if (Status s = op->combine(slot, EPD_WEIGHTS_ALREADY_APPLIED, nullptr, 0, st); !s) return fail(s);
    for (auto& op : ops)
      if (Status s = op->combine_wait(slot, st); !s) return fail(s);
    if ((*drv)->stream_synchronize(st) != 0) return fail(make_status(EPD_ERR_CUDA, "cuStreamSynchronize"));
    if (i >= kWarmup) us.push_back(now_us() - t0);
  }
  for (auto& op : ops)
    for (int32_t s = 0; s < 2; ++s)
      if (Status q = op->query(s); !q) return fail(q);
  const Stats s = bench::stats(us);
  rep.ok = 1;
  rep.median = s.median;
  rep.mean = s.mean;
  rep.p99 = s.p99;
  test::send_msg(sock, &rep, sizeof rep);
  return 0;
}

// Spawns `procs` client processes over the `world` ranks (contiguous, equal
// shares), hands each its ranks' workspaces and collects every report. "" on
// success, else what failed.
std::string run_clients(const std::vector<std::unique_ptr<GpuWorkspace>>& ws, int32_t world, int32_t procs,
                        int32_t iters, std::vector<Report>* reps) {
  std::vector<pid_t> pids;
  std::vector<int> socks;
  std::string why;
  const int32_t per = world / procs;
  for (int32_t p = 0; p < procs && why.empty(); ++p) {
    int sock = -1;
    pids.push_back(test::spawn_self({}, &sock));
    socks.push_back(sock);
    Order o{};
    o.world = world;
    o.iters = iters;
    o.first = p * per;
    o.count = per;
    std::vector<int> fds;
    for (int32_t i = 0; i < per && why.empty(); ++i) {
      o.mapped_bytes[i] = ws[o.first + i]->mapped_bytes();
      auto fd = ws[o.first + i]->export_fd();
      if (fd) fds.push_back(*fd);
      else why = "export: " + fd.status().message();
    }
    if (why.empty() && !test::send_msg(sock, &o, sizeof o, fds)) why = "sending the order to client " + std::to_string(p);
    for (int fd : fds) ::close(fd);
  }
  for (size_t p = 0; p < socks.size(); ++p) {
    Report rep{};
    const bool got = why.empty() && test::recv_msg(socks[p], &rep, sizeof rep, 120000);
    const int st = test::reap(pids[p], 30000);
    ::close(socks[p]);
    if (why.empty() && (!got || !rep.ok || st != 0))
      why = "client " + std::to_string(p) + " (got " + std::to_string(got) + ", exit " + std::to_string(st) + "): " +
            rep.message;
    reps->push_back(rep);
  }
  return why;
}

int run(int iters, const std::string& label) {
  auto count = gpu_device_count();
  if (!count) {
    std::printf("no GPU: %s\n", count.status().message().c_str());
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const MpsState mps = detect_mps(0);
  std::printf("overhead [%s] device %s; %s\n", label.c_str(), prop.name, mps.description.c_str());
  for (int32_t world : {1, 8}) {
    const GroupSpec spec = bench::ll_spec(world);
    if (!bench::print_in_process_line(label, world, spec, iters)) return 1;  // (a) in process
    auto ws = allocate_gpu_workspaces(spec, 0);
    if (!ws) {
      std::printf("allocate: %s\n", ws.status().message().c_str());
      return 1;
    }
    std::vector<uint8_t*> bases;
    for (auto& w : *ws) {
      bases.push_back(w->device_ptr());
      cudaMemset(w->device_ptr(), 0, w->bytes());  // n = 0 in every send header
    }
    {  // (b) armed, client in another process
      ArmedOptions opt;  // depth as epd's (64 with 8 ranks never started: armed_depth_for caps it now)
      opt.poll_us = 10;
      auto armed = ArmedExecutor::create(spec, bases, 0, opt);
      if (!armed || !(*armed)->start()) {
        std::printf("armed: %s\n", armed ? "start failed" : armed.status().message().c_str());
        return 1;
      }
      // One client process driving every rank, then (8 ranks) one process per
      // rank, as serving engines run: each times its own round trips.
      for (int32_t procs : world == 1 ? std::vector<int32_t>{1} : std::vector<int32_t>{1, world}) {
        std::vector<Report> reps;
        const std::string why = run_clients(*ws, world, procs, iters, &reps);
        if (!why.empty()) {
          std::printf("armed clients failed: %s\n", why.c_str());
          (void)(*armed)->abort(EPD_ERR_SHUTTING_DOWN, 2000);
          return 1;
        }
        const char* health = (*armed)->health() ? "" : " UNHEALTHY";
        if (procs == 1) {
          bench::print_line(label, world, "armed, client process, dev", Stats{reps[0].median, reps[0].mean, reps[0].p99},
                            iters, health);
          continue;
        }
        Stats slowest{0, 0, 0};  // the step waits for the slowest worker: the largest median of the processes
        for (const Report& r : reps)
          if (r.median > slowest.median) slowest = Stats{r.median, r.mean, r.p99};
        bench::print_line(label, world, "armed, one client process per rank (slowest), dev", slowest, iters, health);
      }
      const Status ab = (*armed)->abort(EPD_ERR_SHUTTING_DOWN, 2000);
      if (!ab) std::printf("abort: %s\n", ab.message().c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace epd

int main(int argc, char** argv) {
  epd::armed_prepare_environment();
  if (const int fd = epd::test::client_role_fd(); fd >= 0) return epd::client_main(fd);
  int iters = 3000;
  std::string label = "default";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--label") == 0) label = argv[i + 1];
  }
  return epd::run(iters, label);
}
