// epd_gpu_bench — GPU dispatch/combine timing on one GPU holding 8 ranks.
//
// Workloads (hidden 7168, top-8 of 256 experts, rank_major, uniform routing):
//   LL: 128 tokens per rank, mode low_latency;  HT: 4096 tokens per rank, mode
//   high_throughput; each with bf16 and fp8-e4m3 dispatch and bf16 combine.
// Each call is timed with CUDA events around it (warm-up first, median of many
// iterations); LL is also timed as a replayed CUDA graph of dispatch+combine.
// Bytes moved (payload read once + rows, scales and metadata written; combine:
// received rows read + outputs written) per second are printed next to the
// device-to-device cudaMemcpy bandwidth measured in the same run (read + write),
// as a ratio. Usage: epd_gpu_bench [--json FILE] [--iters N] [--only LL|HT]
//   [--parts N] [--combine-parts N] [--fused-per-sm N] [--ll-mode low_latency|high_throughput]
// (the last four override the executor's launch choices, for sweeps).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_executor.h"
#include "numeric.h"

namespace {

using namespace epd;

#define CHECK_CUDA(expr)                                                                  \
  do {                                                                                    \
    const cudaError_t e_ = (expr);                                                        \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s: %s at %s:%d\n", #expr, cudaGetErrorName(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

#define CHECK_OK(expr)                                                        \
  do {                                                                        \
    const Status s_ = (expr);                                                 \
    if (!s_) {                                                                \
      std::fprintf(stderr, "%s: %s\n", #expr, s_.to_string().c_str());       \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median milliseconds of `fn` enqueued on `stream`, each iteration between events.
template <typename Fn>
double time_ms(cudaStream_t stream, int warmup, int iters, Fn fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(ms);
}

struct Result1 {
  std::string name;
  int tokens = 0;
  bool fp8 = false;
  double dispatch_us = 0, combine_us = 0, pair_graph_us = 0;
  double dispatch_bytes = 0, combine_bytes = 0;
  int64_t rows = 0;
  std::string launch;
};

GpuTuning g_tuning;
epd_mode_t g_ll_mode = EPD_MODE_LOW_LATENCY;

Result1 run_workload(const char* name, int tokens, epd_mode_t mode, bool fp8, int iters, cudaStream_t stream) {
  const int W = 8, E = 256, K = 8, H = 7168;
  GroupSpec spec;
  spec.name = "bench";
  spec.world_size = W;
  spec.placement.assign(W, epd_placement_t{0, 0});
  spec.num_experts = E;
  spec.top_k = K;
  for (int e = 0; e < E; ++e) spec.expert_owner.push_back(GroupSpec::contiguous_owner(e, E, W));
  spec.hidden = H;
  spec.dtype = EPD_DTYPE_BF16;
  spec.dispatch_quant = fp8 ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE;
  spec.max_tokens_per_rank = tokens;
  spec.mode = mode;
  spec.layout = EPD_LAYOUT_RANK_MAJOR;
  spec.slots = 2;
  CHECK_OK(spec.validate());
  const GroupLayout layout = GroupLayout::compute(spec);
  auto ws = allocate_gpu_workspaces(spec, 0);
  CHECK_OK(ws.status());
  std::vector<uint8_t*> bases;
  for (auto& w : ws.value()) bases.push_back(w->device_ptr());

  // Inputs: random bf16 tokens, uniform top-8 routing, random weights.
  std::mt19937_64 rng(12345 + static_cast<uint64_t>(tokens) + fp8);
  std::uniform_real_distribution<float> val(-3.0f, 3.0f);
  const RankLayout& l0 = layout.ranks[0];
  std::vector<uint16_t> x(static_cast<size_t>(tokens) * H);
  for (auto& v : x) v = float_to_bf16(val(rng));
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * K);
  std::vector<float> w(ids.size());
  std::vector<int32_t> perm(E);
  for (int r = 0; r < W; ++r) {
    for (int t = 0; t < tokens; ++t) {
      for (int e = 0; e < E; ++e) perm[e] = e;
      for (int k = 0; k < K; ++k) {
        std::swap(perm[k], perm[k + static_cast<int>(rng() % static_cast<uint64_t>(E - k))]);
        ids[static_cast<size_t>(t) * K + k] = perm[k];
        w[static_cast<size_t>(t) * K + k] = val(rng) * 0.1f;
      }
    }
    const SlotOffsets& o = layout.ranks[r].slot[0];
    const uint32_t n = static_cast<uint32_t>(tokens);
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_hdr, &n, 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_x, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_weights, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    // Expert outputs: the token payload repeated over every received row.
    for (int64_t row = 0; row < layout.ranks[r].recv_rows; row += tokens)
      CHECK_CUDA(cudaMemcpy(bases[r] + o.combine_in + row * l0.in_row_bytes, bases[r] + o.send_x,
                            static_cast<size_t>(std::min<int64_t>(tokens, layout.ranks[r].recv_rows - row)) * l0.in_row_bytes,
                            cudaMemcpyDeviceToDevice));
  }
  auto ex = GpuExecutor::create(spec, bases, 0, g_tuning);
  CHECK_OK(ex.status());
  GpuExecutor& gpu = *ex.value();

  Result1 res;
  res.name = name;
  res.tokens = tokens;
  res.fp8 = fp8;
  res.launch = gpu.describe_launch();
  CHECK_OK(gpu.dispatch(0, stream));
  CHECK_OK(gpu.check_fault(stream));
  for (int r = 0; r < W; ++r) {
    int32_t total = 0;
    CHECK_CUDA(cudaMemcpy(&total, bases[r] + layout.ranks[r].slot[0].recv_total, 4, cudaMemcpyDeviceToHost));
    res.rows += total;
  }
  const double row_out = static_cast<double>(l0.recv_row_bytes) + l0.scale_blocks * 4.0 + K * 8.0 + 8.0;
  res.dispatch_bytes = static_cast<double>(W) * tokens * l0.in_row_bytes + res.rows * row_out;
  res.combine_bytes = static_cast<double>(res.rows) * l0.in_row_bytes + static_cast<double>(W) * tokens * l0.in_row_bytes;
  const int warmup = 5;
  res.dispatch_us = 1e3 * time_ms(stream, warmup, iters, [&] { CHECK_OK(gpu.dispatch(0, stream)); });
  res.combine_us = 1e3 * time_ms(stream, warmup, iters, [&] { CHECK_OK(gpu.combine(0, EPD_WEIGHTS_ONES, stream)); });
  CHECK_OK(gpu.check_fault(stream));

  // dispatch + combine as one replayed graph (what an armed daemon stream runs).
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  CHECK_OK(gpu.dispatch(0, stream));
  CHECK_OK(gpu.combine(0, EPD_WEIGHTS_ONES, stream));
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  res.pair_graph_us = 1e3 * time_ms(stream, warmup, iters, [&] { CHECK_CUDA(cudaGraphLaunch(exec, stream)); });
  CHECK_OK(gpu.check_fault(stream));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, only;
  int iters = 50;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--parts") && i + 1 < argc) g_tuning.parts = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--combine-parts") && i + 1 < argc) g_tuning.combine_parts = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--fused-per-sm") && i + 1 < argc) g_tuning.fused_blocks_per_sm = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--ll-mode") && i + 1 < argc) {
      auto m = parse_mode(argv[++i]);
      if (!m) {
        std::fprintf(stderr, "%s\n", m.status().message().c_str());
        return 2;
      }
      g_ll_mode = *m;
    }
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--iters N] [--only LL|HT]\n", argv[0]);
      return 2;
    }
  }
  auto count = gpu_device_count();
  if (!count) {
    std::fprintf(stderr, "epd_gpu_bench: %s\n", count.status().message().c_str());
    return 77;
  }
  CHECK_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // Device-to-device copy bandwidth (bytes read + written), 1 GiB.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  CHECK_CUDA(cudaMemset(src, 0x3c, copy_bytes));
  const double copy_ms = time_ms(stream, 3, 20, [&] {
    CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double copy_gbps = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));

  std::vector<Result1> results;
  for (bool fp8 : {false, true}) {
    if (only.empty() || only == "LL") results.push_back(run_workload("LL", 128, g_ll_mode, fp8, iters * 4, stream));
    if (only.empty() || only == "HT") results.push_back(run_workload("HT", 4096, EPD_MODE_HIGH_THROUGHPUT, fp8, iters, stream));
  }

  std::printf("device: %s (%d SMs), d2d copy %.0f GB/s (read+write)\n", prop.name, prop.multiProcessorCount, copy_gbps);
  std::printf("%-4s %-5s %8s %11s %9s %7s %11s %9s %7s %11s\n", "load", "disp", "rows", "dispatch_us", "GB/s",
              "ratio", "combine_us", "GB/s", "ratio", "graph_pair");
  std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"sms\": " +
                     std::to_string(prop.multiProcessorCount) + ",\n  \"copy_GBps\": " + std::to_string(copy_gbps) +
                     ",\n  \"results\": [\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result1& r = results[i];
    const double dg = r.dispatch_bytes / (r.dispatch_us * 1e-6) / 1e9;
    const double cg = r.combine_bytes / (r.combine_us * 1e-6) / 1e9;
    std::printf("%-4s %-5s %8lld %11.1f %9.0f %7.2f %11.1f %9.0f %7.2f %11.1f  %s\n", r.name.c_str(),
                r.fp8 ? "fp8" : "bf16", static_cast<long long>(r.rows), r.dispatch_us, dg, dg / copy_gbps, r.combine_us,
                cg, cg / copy_gbps, r.pair_graph_us, r.launch.c_str());
    char b[1024];
    std::snprintf(b, sizeof b,
                  "    {\"workload\": \"%s\", \"tokens_per_rank\": %d, \"ranks\": 8, \"hidden\": 7168, \"top_k\": 8, "
                  "\"experts\": 256, \"dispatch\": \"%s\", \"combine\": \"bf16\", \"rows\": %lld, "
                  "\"dispatch_us\": %.3f, \"combine_us\": %.3f, \"graph_dispatch_combine_us\": %.3f, "
                  "\"dispatch_bytes\": %.0f, \"combine_bytes\": %.0f, \"dispatch_GBps\": %.1f, \"combine_GBps\": %.1f, "
                  "\"dispatch_copy_ratio\": %.3f, \"combine_copy_ratio\": %.3f, \"launch\": \"%s\"}%s\n",
                  r.name.c_str(), r.tokens, r.fp8 ? "fp8_e4m3" : "bf16", static_cast<long long>(r.rows), r.dispatch_us,
                  r.combine_us, r.pair_graph_us, r.dispatch_bytes, r.combine_bytes, dg, cg, dg / copy_gbps,
                  cg / copy_gbps, r.launch.c_str(), i + 1 < results.size() ? "," : "");
    json += b;
  }
  json += "  ]\n}\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) {
      std::perror(json_path.c_str());
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
