// overhead_common.cc — see overhead_common.h.
#include "overhead_common.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "gpu_executor.h"

namespace epd::bench {

GroupSpec ll_spec(int32_t world, const std::string& name) {
  GroupSpec s;
  s.name = name;
  s.generation = 1;
  s.world_size = world;
  s.placement.assign(static_cast<size_t>(world), epd_placement_t{0, 0});
  s.num_experts = 256;
  s.top_k = 8;
  s.expert_owner.resize(256);
  for (int32_t e = 0; e < 256; ++e) s.expert_owner[e] = GroupSpec::contiguous_owner(e, 256, world);
  s.hidden = 7168;
  s.dtype = EPD_DTYPE_BF16;
  s.max_tokens_per_rank = 128;
  s.mode = EPD_MODE_LOW_LATENCY;
  s.layout = EPD_LAYOUT_RANK_MAJOR;
  s.slots = 2;
  s.timeout_ms = 5000;
  return s;
}

Stats stats(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.median = v[v.size() / 2];
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return s;
}

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void print_line(const std::string& label, int32_t world, const char* what, const Stats& s, int iters,
                const char* suffix) {
  std::printf("overhead [%s] ranks=%d %-32s: median %7.2f us  mean %7.2f  p99 %7.2f  (%d iters)%s\n", label.c_str(),
              world, what, s.median, s.mean, s.p99, iters, suffix);
  std::fflush(stdout);
}

Result<Stats> in_process_round_trip(const GroupSpec& spec, int iters, bool* fault_free) {
  auto ws = allocate_gpu_workspaces(spec, 0);
  if (!ws) return ws.status();
  std::vector<uint8_t*> bases;
  for (auto& w : *ws) {
    bases.push_back(w->device_ptr());
    if (cudaMemset(w->device_ptr(), 0, w->bytes()) != cudaSuccess)  // n = 0 in every send header
      return make_status(EPD_ERR_CUDA, "cudaMemset of the workspace failed");
  }
  auto ex = GpuExecutor::create(spec, bases, 0);
  if (!ex) return ex.status();
  cudaStream_t st = nullptr;
  if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess)
    return make_status(EPD_ERR_CUDA, "cudaStreamCreateWithFlags failed");
  std::vector<double> us;
  Status s;
  for (int i = 0; i < kWarmup + iters && s; ++i) {
    const int32_t slot = i % 2;
    const double t0 = now_us();
    s = (*ex)->dispatch(slot, st);
    if (s) s = (*ex)->combine(slot, EPD_WEIGHTS_ALREADY_APPLIED, st);
    if (s && cudaStreamSynchronize(st) != cudaSuccess) s = make_status(EPD_ERR_CUDA, "cudaStreamSynchronize failed");
    if (i >= kWarmup) us.push_back(now_us() - t0);
  }
  if (s) *fault_free = (*ex)->check_fault(st).is_ok();
  cudaStreamDestroy(st);
  if (!s) return s;
  return stats(std::move(us));
}

bool print_in_process_line(const std::string& label, int32_t world, const GroupSpec& spec, int iters) {
  bool fault_free = false;
  auto r = in_process_round_trip(spec, iters, &fault_free);
  if (!r) {
    std::printf("in-process: %s\n", r.status().message().c_str());
    return false;
  }
  print_line(label, world, "in-process launch+sync", *r, iters, fault_free ? "" : " FAULT");
  return true;
}

}  // namespace epd::bench
