// main_job.cc — epd_main_job: the quick start's main job. Starts the real epd
// (host executor) in a private runtime directory, waits for READY=1 on its own
// NOTIFY_SOCKET, starts N worker processes (epd_worker) that join one group
// and run verified dispatch/combine steps with random routing, prints per-op
// latency (p50/p99) and throughput, then stops epd with SIGTERM and checks it
// exits 0.
//   epd_main_job --daemon build/daemon/epd --worker build/tools/epd_worker
//                [--ranks 8] [--steps 300] [--max-tokens 64] [--hidden 256]
//                [--experts 32] [--top-k 4] [--seed 1] [--empty] [--no-verify]
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "epctl_query.h"
#include "main_job_args.h"
#include "main_job_lib.h"

using namespace epd::job;

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a(argc, argv, ",empty,no-verify,");
  const std::string daemon = a.str("daemon", "build/daemon/epd");
  const std::string worker = a.str("worker", "build/tools/epd_worker");
  const int ranks = static_cast<int>(a.num("ranks", 8));
  const long long steps = a.num("steps", 300);
  Workload w;
  w.world = ranks;
  w.max_tokens = static_cast<int32_t>(a.num("max-tokens", 64));
  w.hidden = static_cast<int32_t>(a.num("hidden", 256));
  w.experts = static_cast<int32_t>(a.num("experts", 4 * ranks));
  w.top_k = static_cast<int32_t>(a.num("top-k", 4));
  w.seed = static_cast<uint64_t>(a.num("seed", 1));
  if (!a.error().empty()) {
    std::fprintf(stderr, "epd_main_job: %s\n", a.error().c_str());
    return 2;
  }
  TempDir dir("epd-main-job");
  std::printf("epd main job: %d worker processes, %lld steps, seed %llu, runtime dir %s\n", ranks, steps,
              static_cast<unsigned long long>(w.seed), dir.path().c_str());
  DaemonProcess d(daemon, dir.path(), {"--log-level", "warn"});
  if (!d.ok()) {
    std::fprintf(stderr, "epd_main_job: %s\n", d.error().c_str());
    return 1;
  }
  std::printf("epd started: pid %d, socket %s (READY=1 received)\n", d.child().pid(), d.socket_path().c_str());
  std::vector<Child> workers;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> av = {worker, "--socket", d.socket_path(), "--rank", std::to_string(r), "--world",
                                   std::to_string(ranks), "--experts", std::to_string(w.experts), "--top-k",
                                   std::to_string(w.top_k), "--hidden", std::to_string(w.hidden), "--max-tokens",
                                   std::to_string(w.max_tokens), "--steps", std::to_string(steps), "--seed",
                                   std::to_string(w.seed)};
    if (a.has("empty")) av.push_back("--empty");
    if (a.has("no-verify")) av.push_back("--no-verify");
    workers.push_back(Child::spawn(av, {}, true));
  }
  for (auto& c : workers)
    if (c.pid() <= 0) {
      std::fprintf(stderr, "epd_main_job: cannot start %s\n", worker.c_str());
      return 1;
    }
  // Every rank joined: show what the daemon sees (what `epctl groups` prints).
  std::string line;
  bool ok = true;
  for (int r = 0; r < ranks && ok; ++r) ok = workers[static_cast<size_t>(r)].read_line(line, 30000) && line.rfind("JOINED", 0) == 0;
  if (ok) {
    std::string body;
    if (epd::query_daemon_status(d.socket_path(), "groups", false, body) == EPD_OK) std::printf("\n%s\n", body.c_str());
  }
  std::vector<WorkerResult> results;
  for (int r = 0; r < ranks; ++r) {
    Child& c = workers[static_cast<size_t>(r)];
    WorkerResult wr;
    bool got = false;
    while (c.read_line(line, 600000)) {
      if (parse_result(line, wr)) got = true;
      else if (line.rfind("ERROR", 0) == 0) std::fprintf(stderr, "rank %d: %s\n", r, line.c_str());
    }
    const int rc = c.wait(30000);
    if (!got || rc != 0) {
      std::fprintf(stderr, "rank %d failed (exit %d)\n", r, rc);
      ok = false;
    } else {
      results.push_back(wr);
    }
  }
  std::printf("%-6s %7s %9s %9s %14s %14s %14s %14s\n", "rank", "steps", "tokens", "rows", "dispatch p50", "dispatch p99",
              "combine p50", "combine p99");
  int64_t tokens = 0, rows = 0, wall = 0, nsteps = 0;
  std::vector<double> d50, d99, c50, c99;
  for (const auto& r : results) {
    std::printf("%-6d %7lld %9lld %9lld %11.1f us %11.1f us %11.1f us %11.1f us\n", r.rank,
                static_cast<long long>(r.steps), static_cast<long long>(r.tokens), static_cast<long long>(r.rows),
                r.dispatch_p50_us, r.dispatch_p99_us, r.combine_p50_us, r.combine_p99_us);
    tokens += r.tokens;
    rows += r.rows;
    wall = std::max(wall, r.wall_ns);
    nsteps = std::max(nsteps, r.steps);
    d50.push_back(r.dispatch_p50_us);
    d99.push_back(r.dispatch_p99_us);
    c50.push_back(r.combine_p50_us);
    c99.push_back(r.combine_p99_us);
  }
  const int stop_rc = d.stop(10000);
  if (!results.empty()) {
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    auto mx = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
    const double secs = static_cast<double>(wall) / 1e9;
    std::printf("\n%-34s %s\n", "summary", "value");
    std::printf("%-34s %d processes, %lld verified steps each\n", "workers", ranks, static_cast<long long>(nsteps));
    std::printf("%-34s %.1f / %.1f us\n", "dispatch p50 (median rank) / p99 (worst rank)", med(d50), mx(d99));
    std::printf("%-34s %.1f / %.1f us\n", "combine p50 (median rank) / p99 (worst rank)", med(c50), mx(c99));
    std::printf("%-34s %.0f steps/s\n", "step rate (dispatch+combine)", static_cast<double>(nsteps) / secs);
    std::printf("%-34s %.0f tokens/s (%lld tokens, %lld rows received)\n", "throughput (all ranks)",
                static_cast<double>(tokens) / secs, static_cast<long long>(tokens), static_cast<long long>(rows));
    std::printf("%-34s %s\n", "results", ok ? "every dispatch and combine matched the reference" : "FAILURES (see above)");
  }
  std::printf("%-34s %s\n", "epd stop (SIGTERM)", stop_rc == 0 ? "exit 0" : ("exit " + std::to_string(stop_rc)).c_str());
  return ok && stop_rc == 0 ? 0 : 1;
}
