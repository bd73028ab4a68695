// overhead_common.h — what the per-call overhead benchmarks share
// (overhead_bench.cc: in process vs the armed executor from a client process;
// daemon_overhead.cc: through the real epd and libepd-client): the LL group
// shape, percentile statistics, and the in-process baseline, an empty
// (n_tokens = 0) GpuExecutor dispatch + combine launched here + stream sync.
// Thread-safety: plain functions; one benchmark thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spec.h"
#include "status.h"

namespace epd::bench {

constexpr int kWarmup = 300;

// top-8 of 256 experts, hidden 7168 bf16, 128 tokens per rank, low_latency,
// rank_major, 2 slots; every rank on GPU 0.
GroupSpec ll_spec(int32_t world, const std::string& name = "overhead");

struct Stats {
  double median = 0, mean = 0, p99 = 0;
};
Stats stats(std::vector<double> us);
double now_us();

// Prints "overhead [label] ranks=W <what>: median .. us  mean ..  p99 ..  (N iters)<suffix>".
void print_line(const std::string& label, int32_t world, const char* what, const Stats& s, int iters,
                const char* suffix = "");

// The in-process baseline on `spec` (workspaces allocated here on GPU 0,
// zeroed: n = 0 in every send header): kWarmup + iters round trips of
// GpuExecutor dispatch + combine + cudaStreamSynchronize, timed after warm-up.
// *fault_free tells whether the executor's fault words stayed clear.
Result<Stats> in_process_round_trip(const GroupSpec& spec, int iters, bool* fault_free);
// Runs in_process_round_trip and prints its line ("... FAULT" when a fault
// word was set); false after printing the error when it could not run.
bool print_in_process_line(const std::string& label, int32_t world, const GroupSpec& spec, int iters);

}  // namespace epd::bench
