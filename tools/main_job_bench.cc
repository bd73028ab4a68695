// main_job_bench.cc — epd_bench_roundtrip: what a round trip through the
// daemon costs. (1) An empty (n = 0) dispatch + combine through the real epd
// from one client vs the same HostExecutor called in-process on the same spec;
// (2) the same empty round trip with 2 and 8 worker processes; (3) throughput
// of 8 worker processes moving real tokens (no verification).
//   epd_bench_roundtrip --daemon build/daemon/epd --worker build/tools/epd_worker
//                       [--iters 3000] [--steps 1000] [--max-tokens 128] [--hidden 1024]
//                       [--host-threads N]   (passed to epd; 0 = all cores)
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "host_executor.h"
#include "main_job_args.h"
#include "main_job_lib.h"

using namespace epd::job;

namespace {

struct Stats {
  double p50, p99, mean;
};

Stats stats(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (int64_t x : v) sum += static_cast<double>(x);
  return {static_cast<double>(v[v.size() / 2]) / 1e3, static_cast<double>(v[v.size() * 99 / 100]) / 1e3,
          sum / static_cast<double>(v.size()) / 1e3};
}

Stats in_process(const epd_group_spec_t& cs, int iters) {
  auto spec = epd::GroupSpec::from_c(cs);
  const epd::GroupLayout layout = epd::GroupLayout::compute(spec.value());
  std::vector<uint8_t> ws(layout.total_bytes + 64);
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(ws.data()) + 63) & ~uintptr_t{63});
  epd::HostExecutor ex(spec.value(), {base});
  std::vector<int64_t> t;
  epd::DispatchInputs in;
  for (int i = 0; i < iters; ++i) {
    const int64_t t0 = now_ns();
    if (!epd::stage_dispatch_inputs(spec.value(), layout.ranks[0], base, i % 2, in).is_ok() ||
        !ex.dispatch(i % 2).is_ok() || !ex.combine(i % 2, EPD_WEIGHTS_ONES).is_ok()) {
      std::fprintf(stderr, "in-process executor failed\n");
      break;
    }
    t.push_back(now_ns() - t0);
  }
  return stats(t);
}

Stats through_daemon(const std::string& socket, const epd_group_spec_t& spec, int iters) {
  epd_client_t* c = nullptr;
  epd_group_t* g = nullptr;
  std::vector<int64_t> t;
  if (epd_client_connect(socket.c_str(), &c) != EPD_OK || epd_group_join(c, &spec, &g) != EPD_OK) {
    std::fprintf(stderr, "connect/join failed: %s\n", epd_client_last_error(c));
    return {0, 0, 0};
  }
  epd_dispatch_args_t a{};
  a.struct_size = sizeof a;
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  const void* out = nullptr;
  for (int i = 0; i < iters + 100; ++i) {
    const int32_t slot = i % 2;
    const int64_t t0 = now_ns();
    if (epd_group_dispatch(g, slot, &a) != EPD_OK || epd_group_dispatch_wait(g, slot, 0, &r) != EPD_OK ||
        epd_group_combine(g, slot, EPD_WEIGHTS_ONES) != EPD_OK || epd_group_combine_wait(g, slot, 0, &out) != EPD_OK) {
      std::fprintf(stderr, "round trip failed: %s\n", epd_group_last_error(g));
      break;
    }
    if (i >= 100) t.push_back(now_ns() - t0);  // the first 100 warm up
  }
  epd_group_leave(g);
  epd_client_disconnect(c);
  return stats(t);
}

struct Fleet {
  double dispatch_p50 = 0, combine_p50 = 0, steps_per_s = 0, tokens_per_s = 0, gbytes_per_s = 0;
  bool ok = false;
};

Fleet run_workers(const std::string& worker, const std::string& socket, const std::string& group, int ranks,
                  long long steps, int max_tokens, int hidden, bool empty) {
  std::vector<Child> ws;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> av = {worker, "--socket", socket, "--group", group, "--rank", std::to_string(r), "--world",
                                   std::to_string(ranks), "--experts", std::to_string(4 * ranks), "--steps",
                                   std::to_string(steps), "--max-tokens", std::to_string(max_tokens), "--hidden",
                                   std::to_string(hidden), "--no-verify"};
    if (empty) av.push_back("--empty");
    ws.push_back(Child::spawn(av));
  }
  Fleet f;
  f.ok = true;
  std::vector<double> d50, c50;
  int64_t tokens = 0, wall = 0, nsteps = 0;
  for (auto& c : ws) {
    std::string line;
    WorkerResult res;
    bool got = false;
    while (c.read_line(line, 600000)) got = got || parse_result(line, res);
    f.ok = f.ok && c.wait(30000) == 0 && got;
    if (!got) continue;
    d50.push_back(res.dispatch_p50_us);
    c50.push_back(res.combine_p50_us);
    tokens += res.tokens;
    wall = std::max(wall, res.wall_ns);
    nsteps = std::max(nsteps, res.steps);
  }
  if (d50.empty()) return f;
  std::sort(d50.begin(), d50.end());
  std::sort(c50.begin(), c50.end());
  f.dispatch_p50 = d50[d50.size() / 2];
  f.combine_p50 = c50[c50.size() / 2];
  const double secs = static_cast<double>(wall) / 1e9;
  f.steps_per_s = static_cast<double>(nsteps) / secs;
  f.tokens_per_s = static_cast<double>(tokens) / secs;
  f.gbytes_per_s = f.tokens_per_s * hidden * 4 / 1e9;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a(argc, argv, ",");
  const std::string daemon = a.str("daemon", "build/daemon/epd");
  const std::string worker = a.str("worker", "build/tools/epd_worker");
  const int iters = static_cast<int>(a.num("iters", 3000));
  const long long steps = a.num("steps", 1000);
  const int max_tokens = static_cast<int>(a.num("max-tokens", 128));
  const int hidden = static_cast<int>(a.num("hidden", 1024));
  const std::string host_threads = a.str("host-threads", "0");
  if (!a.error().empty()) {
    std::fprintf(stderr, "epd_bench_roundtrip: %s\n", a.error().c_str());
    return 2;
  }
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  std::printf("command: %s\nhost: %ld CPUs online; epd --host-threads %s\n\n", cmd.c_str(),
              sysconf(_SC_NPROCESSORS_ONLN), host_threads.c_str());
  TempDir dir("epd-bench");
  DaemonProcess d(daemon, dir.path(), {"--log-level", "warn", "--host-threads", host_threads});
  if (!d.ok()) {
    std::fprintf(stderr, "epd_bench_roundtrip: %s\n", d.error().c_str());
    return 1;
  }
  Workload w;
  w.group = "rt";
  w.world = 1;
  w.experts = 8;
  w.hidden = hidden;
  w.max_tokens = max_tokens;
  const epd_group_spec_t spec = make_spec(w, 0);
  const Stats ip = in_process(spec, iters);
  const Stats dd = through_daemon(d.socket_path(), spec, iters);
  std::printf("empty (n = 0) dispatch + combine round trip, world_size 1, %d iterations\n", iters);
  std::printf("  %-44s p50 %8.2f us   p99 %8.2f us   mean %8.2f us\n", "HostExecutor in-process", ip.p50, ip.p99, ip.mean);
  std::printf("  %-44s p50 %8.2f us   p99 %8.2f us   mean %8.2f us\n", "through epd (1 client, doorbell + futex)", dd.p50,
              dd.p99, dd.mean);
  std::printf("  %-44s %.2f us (p50)\n\n", "daemon overhead", dd.p50 - ip.p50);
  const Fleet e2 = run_workers(worker, d.socket_path(), "e2", 2, steps, max_tokens, hidden, true);
  const Fleet e8 = run_workers(worker, d.socket_path(), "e8", 8, steps, max_tokens, hidden, true);
  const Fleet t8 = run_workers(worker, d.socket_path(), "t8", 8, steps, max_tokens, hidden, false);
  std::printf("worker processes through epd (%lld steps each, median rank's p50)\n", steps);
  std::printf("  %-34s %10s %10s %12s %14s %10s\n", "", "dispatch", "combine", "steps/s", "tokens/s", "GB/s in");
  auto row = [&](const char* name, const Fleet& f) {
    std::printf("  %-34s %7.1f us %7.1f us %12.0f %14.0f %10.3f%s\n", name, f.dispatch_p50, f.combine_p50, f.steps_per_s,
                f.tokens_per_s, f.gbytes_per_s, f.ok ? "" : "  (FAILED)");
  };
  row("2 processes, empty (n = 0)", e2);
  row("8 processes, empty (n = 0)", e8);
  char name[96];
  std::snprintf(name, sizeof name, "8 processes, n <= %d, hidden %d fp32", max_tokens, hidden);
  row(name, t8);
  const int rc = d.stop(10000);
  return rc == 0 && e2.ok && e8.ok && t8.ok ? 0 : 1;
}
