// epd_gpu_bench — GPU dispatch/combine timing: one GPU holding 8 ranks, or
// (--gpus N) N GPUs of this node holding one rank each.
//
// Workloads (hidden 7168, top-8 of 256 experts, rank_major, uniform routing):
//   LL: 128 tokens per rank, mode low_latency;  HT: 4096 tokens per rank, mode
//   high_throughput; each with bf16 and fp8-e4m3 dispatch and bf16 combine.
// One GPU: each call is timed with CUDA events around it (warm-up first, median
// of many iterations); LL is also timed as a replayed CUDA graph of dispatch+combine.
// Bytes moved (payload read once + rows, scales and metadata written; combine:
// received rows read + outputs written) per second are printed next to the
// device-to-device cudaMemcpy bandwidth measured in the same run (read + write),
// as a ratio.
// --gpus N (N >= 2): world N, rank r on GPU r; the same workloads plus LL with
// 1 token (both LL rows with capacity 128). Each iteration holds every GPU's
// stream on a host word until all are enqueued (so the host's launch skew is
// not timed), then runs dispatch_shard and combine_shard between events; per
// op the slowest GPU's median. Bytes per GPU come from the routing counted on
// the host: "nvl" = rows to other GPUs (dispatch) / rows returned to other
// GPUs (combine), "alg" = every row the GPU receives, its own included. The
// bound is an all-to-all of cudaMemcpyPeerAsync with the dispatch's bytes per
// GPU pair, in the same run. Exit 77 (skipped) with fewer than N GPUs or a pair
// without peer access.
// Usage: epd_gpu_bench [--json FILE] [--iters N] [--only LL|HT] [--gpus N]
//   [--parts N] [--combine-parts N] [--one-launch-across-gpus] [--ll-mode low_latency|high_throughput]
//   [--barrier 0|1]  (multi-GPU barrier: 0 a word per GPU, local polling; 1 one word on the home GPU)
// (the last four override the executor's launch choices, for sweeps). Every row
// names the launch variant it measured: "variant=..." leads the launch column,
// and the JSON has "variant".
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu_armed.h"
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

constexpr int kExperts = 256, kTopK = 8, kHidden = 7168;

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
  std::string variant;  // the launch variant measured (gpu_launch_plan.h)
};

GpuTuning g_tuning;
epd_mode_t g_ll_mode = EPD_MODE_LOW_LATENCY;

// The benchmark group: rank r on GPU rank_gpu[r], hidden 7168, top-8 of 256
// experts owned contiguously, bf16, rank_major, two slots.
GroupSpec make_spec(const std::vector<int32_t>& rank_gpu, int max_tokens, epd_mode_t mode, bool fp8) {
  const int W = static_cast<int>(rank_gpu.size());
  GroupSpec spec;
  spec.name = "bench";
  spec.world_size = W;
  for (int32_t g : rank_gpu) spec.placement.push_back(epd_placement_t{0, g});
  spec.num_experts = kExperts;
  spec.top_k = kTopK;
  for (int e = 0; e < kExperts; ++e) spec.expert_owner.push_back(GroupSpec::contiguous_owner(e, kExperts, W));
  spec.hidden = kHidden;
  spec.dtype = EPD_DTYPE_BF16;
  spec.dispatch_quant = fp8 ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE;
  spec.max_tokens_per_rank = max_tokens;
  spec.mode = mode;
  spec.layout = EPD_LAYOUT_RANK_MAJOR;
  spec.slots = 2;
  CHECK_OK(spec.validate());
  return spec;
}

// Fills slot 0 of every rank (on GPU rank_gpu[r]) for `tokens` tokens: random
// bf16 tokens (the same on every rank), uniform top-8 routing without repeats,
// random weights, all from a fixed seed; and expert outputs (the token payload
// repeated over every row a dispatch can fill). Returns the routing counted on
// the host, rows[s * W + d]: tokens of rank s with an expert on rank d (one
// rank_major row each).
std::vector<int64_t> fill_inputs(const GroupSpec& spec, const GroupLayout& layout, const std::vector<uint8_t*>& bases,
                                 const std::vector<int32_t>& rank_gpu, int tokens) {
  const int W = spec.world_size, E = spec.num_experts, K = spec.top_k, H = spec.hidden;
  const bool fp8 = spec.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  std::mt19937_64 rng(12345 + static_cast<uint64_t>(tokens) + fp8);
  std::uniform_real_distribution<float> val(-3.0f, 3.0f);
  const RankLayout& l0 = layout.ranks[0];
  std::vector<uint16_t> x(static_cast<size_t>(tokens) * H);
  for (auto& v : x) v = float_to_bf16(val(rng));
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * K);
  std::vector<float> w(ids.size());
  std::vector<int32_t> perm(E);
  std::vector<int64_t> rows(static_cast<size_t>(W) * W, 0);
  std::vector<int> seen(W);
  for (int r = 0; r < W; ++r) {
    std::fill(seen.begin(), seen.end(), -1);
    for (int t = 0; t < tokens; ++t) {
      for (int e = 0; e < E; ++e) perm[e] = e;
      for (int k = 0; k < K; ++k) {
        std::swap(perm[k], perm[k + static_cast<int>(rng() % static_cast<uint64_t>(E - k))]);
        ids[static_cast<size_t>(t) * K + k] = perm[k];
        w[static_cast<size_t>(t) * K + k] = val(rng) * 0.1f;
        const int d = spec.expert_owner[static_cast<size_t>(perm[k])];
        if (seen[d] != t) {
          seen[d] = t;
          ++rows[static_cast<size_t>(r) * W + d];
        }
      }
    }
    CHECK_CUDA(cudaSetDevice(rank_gpu[static_cast<size_t>(r)]));
    const SlotOffsets& o = layout.ranks[r].slot[0];
    const uint32_t n = static_cast<uint32_t>(tokens);
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_hdr, &n, 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_x, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(bases[r] + o.send_weights, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    // Expert outputs: the token payload repeated over every row a dispatch can
    // fill (rows are compact from 0, at most W * tokens of them).
    const int64_t fill = std::min<int64_t>(layout.ranks[r].recv_rows, static_cast<int64_t>(W) * tokens);
    for (int64_t row = 0; row < fill; row += tokens)
      CHECK_CUDA(cudaMemcpy(bases[r] + o.combine_in + row * l0.in_row_bytes, bases[r] + o.send_x,
                            static_cast<size_t>(std::min<int64_t>(tokens, fill - row)) * l0.in_row_bytes,
                            cudaMemcpyDeviceToDevice));
  }
  return rows;
}

Result1 run_workload(const char* name, int tokens, epd_mode_t mode, bool fp8, int iters, cudaStream_t stream) {
  const int W = 8, K = kTopK;
  const std::vector<int32_t> on_gpu0(W, 0);
  const GroupSpec spec = make_spec(on_gpu0, tokens, mode, fp8);
  const GroupLayout layout = GroupLayout::compute(spec);
  auto ws = allocate_gpu_workspaces(spec, 0);
  CHECK_OK(ws.status());
  std::vector<uint8_t*> bases;
  for (auto& w : ws.value()) bases.push_back(w->device_ptr());
  const RankLayout& l0 = layout.ranks[0];
  (void)fill_inputs(spec, layout, bases, on_gpu0, tokens);
  auto ex = GpuExecutor::create(spec, bases, 0, g_tuning);
  CHECK_OK(ex.status());
  GpuExecutor& gpu = *ex.value();

  Result1 res;
  res.name = name;
  res.tokens = tokens;
  res.fp8 = fp8;
  res.launch = gpu.describe_launch();
  res.variant = gpu.variant_name();
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

// ---- several GPUs, one rank each ----

// Every GPU's stream, its timing events and, for the copy bound, a stream and
// an event per ordered pair. The start gate holds every stream on a host-mapped
// word (cuStreamWaitValue32) until all GPUs' work of an iteration is enqueued:
// without it the GPU enqueued first would wait in the cross-GPU barriers for
// the host to reach the others, and its time would include that skew.
struct Gpus {
  int n = 0;
  std::vector<cudaStream_t> stream;              // [g], on GPU g
  std::vector<std::vector<cudaEvent_t>> mark;    // [g][3], timing, on GPU g
  std::vector<std::vector<cudaStream_t>> pair;   // [g][h], on GPU g: g's copy to h
  std::vector<std::vector<cudaEvent_t>> copied;  // [g][h], on GPU g, no timing
  decltype(&cuStreamWaitValue32) wait32 = nullptr;  // nullptr: no gate
  uint32_t* gate = nullptr;                          // host word, mapped for every GPU
  CUdeviceptr gate_dev = 0;                          // its device address
  uint32_t gate_value = 0;
  std::string gate_note;
};

void open_gate(Gpus& G) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess || !p) {
    G.gate_note = "none (cuStreamWaitValue32 unavailable): GPUs start in host launch order";
    return;
  }
  G.wait32 = reinterpret_cast<decltype(G.wait32)>(p);
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&G.gate), sizeof(uint32_t),
                           cudaHostAllocMapped | cudaHostAllocPortable));
  *G.gate = 0;
  void* dev = nullptr;
  CHECK_CUDA(cudaHostGetDevicePointer(&dev, G.gate, 0));
  G.gate_dev = reinterpret_cast<CUdeviceptr>(dev);
  for (int g = 0; g < G.n; ++g) {  // probe: a wait that is already satisfied
    CHECK_CUDA(cudaSetDevice(g));
    const CUresult r = G.wait32(reinterpret_cast<CUstream>(G.stream[g]), G.gate_dev, 0, CU_STREAM_WAIT_VALUE_GEQ);
    if (r != CUDA_SUCCESS) {
      G.wait32 = nullptr;
      G.gate_note = "none (cuStreamWaitValue32 failed with CUresult " + std::to_string(static_cast<int>(r)) +
                    "): GPUs start in host launch order";
      return;
    }
    CHECK_CUDA(cudaStreamSynchronize(G.stream[g]));
  }
  G.gate_note = "cuStreamWaitValue32 on a host word, released after every GPU's work is enqueued";
}

Gpus open_gpus(int n) {
  Gpus G;
  G.n = n;
  G.stream.resize(n);
  G.mark.assign(n, std::vector<cudaEvent_t>(3));
  G.pair.assign(n, std::vector<cudaStream_t>(n, nullptr));
  G.copied.assign(n, std::vector<cudaEvent_t>(n, nullptr));
  for (int g = 0; g < n; ++g) {
    CHECK_CUDA(cudaSetDevice(g));
    CHECK_CUDA(cudaStreamCreateWithFlags(&G.stream[g], cudaStreamNonBlocking));
    for (auto& e : G.mark[g]) CHECK_CUDA(cudaEventCreate(&e));
    for (int h = 0; h < n; ++h) {
      if (h == g) continue;
      CHECK_CUDA(cudaStreamCreateWithFlags(&G.pair[g][h], cudaStreamNonBlocking));
      CHECK_CUDA(cudaEventCreateWithFlags(&G.copied[g][h], cudaEventDisableTiming));
    }
  }
  open_gate(G);
  return G;
}

// Runs `iters` iterations; in each, GPU g's stream waits at the gate, then runs
// enqueue(g, op) for op in [0, ops) (ops <= 2), each between two events.
// Returns each op's median microseconds per GPU: [op][g].
template <typename Fn>
std::vector<std::vector<double>> run_gated(Gpus& G, int iters, int ops, Fn enqueue) {
  std::vector<std::vector<std::vector<float>>> ms(ops, std::vector<std::vector<float>>(G.n));
  for (int i = 0; i < iters; ++i) {
    ++G.gate_value;
    for (int g = 0; g < G.n; ++g) {
      CHECK_CUDA(cudaSetDevice(g));
      if (G.wait32) {
        const CUresult r =
            G.wait32(reinterpret_cast<CUstream>(G.stream[g]), G.gate_dev, G.gate_value, CU_STREAM_WAIT_VALUE_GEQ);
        if (r != CUDA_SUCCESS) {
          std::fprintf(stderr, "cuStreamWaitValue32 on GPU %d: CUresult %d\n", g, static_cast<int>(r));
          std::exit(1);
        }
      }
      CHECK_CUDA(cudaEventRecord(G.mark[g][0], G.stream[g]));
      for (int op = 0; op < ops; ++op) {
        enqueue(g, op);
        CHECK_CUDA(cudaEventRecord(G.mark[g][op + 1], G.stream[g]));
      }
    }
    if (G.gate) __atomic_store_n(G.gate, G.gate_value, __ATOMIC_SEQ_CST);
    for (int g = 0; g < G.n; ++g) {
      CHECK_CUDA(cudaSetDevice(g));
      CHECK_CUDA(cudaEventSynchronize(G.mark[g][ops]));
      for (int op = 0; op < ops; ++op) {
        float t = 0;
        CHECK_CUDA(cudaEventElapsedTime(&t, G.mark[g][op], G.mark[g][op + 1]));
        ms[op][g].push_back(t);
      }
    }
  }
  std::vector<std::vector<double>> us(ops, std::vector<double>(G.n));
  for (int op = 0; op < ops; ++op)
    for (int g = 0; g < G.n; ++g) us[op][g] = 1e3 * median(ms[op][g]);
  return us;
}

double slowest(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); }

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// The copy-engine bound: every GPU g copies bytes[g * n + h] to every other GPU
// h at once (cudaMemcpyPeerAsync, one stream per ordered pair, all forked from
// g's stream after the gate and joined back). Returns per-GPU median microseconds.
std::vector<double> peer_bound_us(Gpus& G, const std::vector<size_t>& bytes, int iters) {
  const int n = G.n;
  std::vector<void*> src(n, nullptr), dst(n, nullptr);
  std::vector<size_t> dst_at(static_cast<size_t>(n) * n, 0);  // offset of g's region in dst[h]
  for (int h = 0; h < n; ++h) {
    size_t out = 0, in = 0;
    for (int g = 0; g < n; ++g) {
      out = std::max(out, bytes[static_cast<size_t>(h) * n + g]);
      dst_at[static_cast<size_t>(g) * n + h] = in;
      in += (bytes[static_cast<size_t>(g) * n + h] + 255) / 256 * 256;
    }
    CHECK_CUDA(cudaSetDevice(h));
    CHECK_CUDA(cudaMalloc(&src[h], std::max<size_t>(out, 256)));
    CHECK_CUDA(cudaMalloc(&dst[h], std::max<size_t>(in, 256)));
    CHECK_CUDA(cudaMemset(src[h], 0x3c, std::max<size_t>(out, 256)));
  }
  auto copy_all = [&](int g, int) {
    for (int h = 0; h < n; ++h) {
      const size_t b = bytes[static_cast<size_t>(g) * n + h];
      if (h == g || b == 0) continue;
      CHECK_CUDA(cudaStreamWaitEvent(G.pair[g][h], G.mark[g][0], 0));
      CHECK_CUDA(cudaMemcpyPeerAsync(static_cast<uint8_t*>(dst[h]) + dst_at[static_cast<size_t>(g) * n + h], h,
                                     src[g], g, b, G.pair[g][h]));
      CHECK_CUDA(cudaEventRecord(G.copied[g][h], G.pair[g][h]));
      CHECK_CUDA(cudaStreamWaitEvent(G.stream[g], G.copied[g][h], 0));
    }
  };
  (void)run_gated(G, 3, 1, copy_all);
  const std::vector<double> us = run_gated(G, iters, 1, copy_all)[0];
  for (int h = 0; h < n; ++h) {
    CHECK_CUDA(cudaSetDevice(h));
    CHECK_CUDA(cudaFree(src[h]));
    CHECK_CUDA(cudaFree(dst[h]));
  }
  return us;
}

// make_spec's group with one rank per GPU (rank r on GPU r of n): its
// workspaces, their bases and an executor over them with `tuning`. The
// executor is destroyed before the workspaces (member order).
struct RankPerGpu {
  GroupSpec spec;
  std::vector<int32_t> rank_gpu;
  std::vector<std::unique_ptr<GpuWorkspace>> workspaces;
  std::vector<uint8_t*> bases;
  std::unique_ptr<GpuExecutor> executor;
};

RankPerGpu rank_per_gpu(int n, int capacity, epd_mode_t mode, bool fp8, const GpuTuning& tuning) {
  RankPerGpu g;
  for (int r = 0; r < n; ++r) g.rank_gpu.push_back(r);
  g.spec = make_spec(g.rank_gpu, capacity, mode, fp8);
  auto ws = allocate_gpu_workspaces(g.spec, g.rank_gpu);
  CHECK_OK(ws.status());
  g.workspaces = std::move(ws.value());
  for (auto& w : g.workspaces) g.bases.push_back(w->device_ptr());
  auto ex = GpuExecutor::create(g.spec, g.bases, g.rank_gpu, tuning);
  CHECK_OK(ex.status());
  g.executor = std::move(ex.value());
  return g;
}

struct ResultN {
  std::string name;
  int tokens = 0, capacity = 0;
  bool fp8 = false;
  epd_mode_t mode = EPD_MODE_HIGH_THROUGHPUT;
  int64_t rows = 0;
  std::vector<double> dispatch_us, combine_us, bound_us;  // per GPU, medians
  // Bytes per GPU: dispatch rows sent to other GPUs / all rows received;
  // combine rows returned to other GPUs / all rows returned for its tokens.
  std::vector<double> dispatch_nvl, dispatch_alg, combine_nvl, combine_alg, bound_bytes;
  std::string launch;
  std::string variant;  // the launch variant measured (gpu_launch_plan.h)
};

ResultN run_workload_gpus(const char* name, int tokens, int capacity, epd_mode_t mode, bool fp8, int iters, Gpus& G) {
  const int W = G.n;
  const RankPerGpu group = rank_per_gpu(W, capacity, mode, fp8, g_tuning);
  const GroupSpec& spec = group.spec;
  const std::vector<uint8_t*>& bases = group.bases;
  const GroupLayout layout = GroupLayout::compute(spec);
  // After the executor's creation, which writes only the control blocks, not slot 0.
  const std::vector<int64_t> rows = fill_inputs(spec, layout, bases, group.rank_gpu, tokens);
  GpuExecutor& gpu = *group.executor;
  const auto& shards = gpu.shards();
  for (int g = 0; g < W; ++g)
    if (static_cast<int>(shards.size()) != W || shards[g].device != g || shards[g].rank_lo != g) {
      std::fprintf(stderr, "epd_gpu_bench: expected shard %d = GPU %d holding rank %d\n", g, g, g);
      std::exit(1);
    }

  ResultN res;
  res.name = name;
  res.tokens = tokens;
  res.capacity = capacity;
  res.fp8 = fp8;
  res.mode = mode;
  res.launch = gpu.describe_launch();
  res.variant = gpu.variant_name();
  const RankLayout& l0 = layout.ranks[0];
  const double row_out = static_cast<double>(l0.recv_row_bytes) + l0.scale_blocks * 4.0 + l0.ids_per_row * 8.0 + 8.0;
  const double row_in = static_cast<double>(l0.in_row_bytes);
  std::vector<size_t> pair_bytes(static_cast<size_t>(W) * W, 0);
  for (int g = 0; g < W; ++g) {
    double d_nvl = 0, d_alg = 0, c_nvl = 0, c_alg = 0;
    for (int h = 0; h < W; ++h) {
      const double to = static_cast<double>(rows[static_cast<size_t>(g) * W + h]);    // g's tokens on h
      const double from = static_cast<double>(rows[static_cast<size_t>(h) * W + g]);  // h's tokens on g
      d_alg += from * row_out;
      c_alg += to * row_in;
      if (h == g) continue;
      d_nvl += to * row_out;
      c_nvl += from * row_in;
      pair_bytes[static_cast<size_t>(g) * W + h] = static_cast<size_t>(to * row_out);
    }
    res.dispatch_nvl.push_back(d_nvl);
    res.dispatch_alg.push_back(d_alg);
    res.combine_nvl.push_back(c_nvl);
    res.combine_alg.push_back(c_alg);
    res.bound_bytes.push_back(d_nvl);
    for (int h = 0; h < W; ++h) res.rows += rows[static_cast<size_t>(h) * W + g];
  }

  auto dispatch_then_combine = [&](int g, int op) {
    if (op == 0) CHECK_OK(gpu.dispatch_shard(0, g, G.stream[g]));
    else CHECK_OK(gpu.combine_shard(0, g, EPD_WEIGHTS_ONES, G.stream[g]));
  };
  (void)run_gated(G, 5, 2, dispatch_then_combine);
  CHECK_OK(gpu.check_fault(nullptr));
  // The executor's row counts against the host's: the byte figures rest on them.
  for (int d = 0; d < W; ++d) {
    int64_t expect = 0;
    for (int s = 0; s < W; ++s) expect += rows[static_cast<size_t>(s) * W + d];
    int32_t total = 0;
    CHECK_CUDA(cudaSetDevice(d));
    CHECK_CUDA(cudaMemcpy(&total, bases[d] + layout.ranks[d].slot[0].recv_total, 4, cudaMemcpyDeviceToHost));
    if (total != expect) {
      std::fprintf(stderr, "epd_gpu_bench: %s %s: rank %d received %d rows, the host routing gives %lld\n", name,
                   fp8 ? "fp8" : "bf16", d, total, static_cast<long long>(expect));
      std::exit(1);
    }
  }
  const auto us = run_gated(G, iters, 2, dispatch_then_combine);
  CHECK_OK(gpu.check_fault(nullptr));
  res.dispatch_us = us[0];
  res.combine_us = us[1];
  res.bound_us = peer_bound_us(G, pair_bytes, iters);
  return res;
}

std::string json_array(const std::vector<double>& v, const char* fmt) {
  std::string s = "[";
  char b[64];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(b, sizeof b, fmt, v[i]);
    s += (i ? ", " : "") + std::string(b);
  }
  return s + "]";
}

// Writes `json` to `path` (nothing when it is empty). 0, or 1 once the error is printed.
int write_json(const std::string& path, const std::string& json) {
  if (path.empty()) return 0;
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::perror(path.c_str());
    return 1;
  }
  std::fputs(json.c_str(), f);
  std::fclose(f);
  return 0;
}

// One cross-GPU barrier's cost: a chain of kChain barriers per GPU on slot 0
// of an executor with the given GpuTuning::barrier, the slowest GPU's median
// divided by the chain length (the start skew is spread over the chain).
double barrier_us(Gpus& G, int iters, int mode) {
  constexpr int kChain = 50;
  GpuTuning t = g_tuning;
  t.barrier = mode;
  const RankPerGpu group = rank_per_gpu(G.n, 128, EPD_MODE_HIGH_THROUGHPUT, false, t);
  GpuExecutor& gpu = *group.executor;
  auto chain = [&](int g, int) {
    for (int i = 0; i < kChain; ++i) CHECK_OK(gpu.barrier_shard(0, g, G.stream[g]));
  };
  (void)run_gated(G, 3, 1, chain);
  const auto us = run_gated(G, iters, 1, chain);
  CHECK_OK(gpu.check_fault(nullptr));
  return slowest(us[0]) / kChain;
}

int run_gpus(int n, int iters, const std::string& only, const std::string& json_path) {
  auto count = gpu_device_count();
  if (!count) {
    std::fprintf(stderr, "epd_gpu_bench: %s\n", count.status().message().c_str());
    return 77;
  }
  if (*count < n) {
    std::fprintf(stderr, "epd_gpu_bench: --gpus %d needs %d GPUs, %d visible: skipped\n", n, n, *count);
    return 77;
  }
  std::vector<int32_t> devices(n);
  for (int g = 0; g < n; ++g) devices[g] = g;
  const Status peer = enable_peer_access(devices);
  if (!peer) {
    std::fprintf(stderr, "epd_gpu_bench: --gpus %d: %s%s\n", n, peer.message().c_str(),
                 peer.code() == EPD_ERR_UNSUPPORTED ? ": skipped" : "");
    return peer.code() == EPD_ERR_UNSUPPORTED ? 77 : 1;
  }
  int atomics = 0, pairs = 0;
  auto links = gpu_peer_links();
  CHECK_OK(links.status());
  for (const GpuPeerLink& l : *links)
    if (l.from < n && l.to < n) {
      ++pairs;
      atomics += l.native_atomics;
    }
  std::vector<std::string> names(n);
  std::vector<int> sms(n);
  for (int g = 0; g < n; ++g) {
    cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, g));
    names[g] = prop.name;
    sms[g] = prop.multiProcessorCount;
  }
  Gpus G = open_gpus(n);

  std::vector<ResultN> results;
  for (bool fp8 : {false, true}) {
    if (only.empty() || only == "LL") {
      results.push_back(run_workload_gpus("LL", 1, 128, g_ll_mode, fp8, iters * 4, G));
      results.push_back(run_workload_gpus("LL", 128, 128, g_ll_mode, fp8, iters * 4, G));
    }
    if (only.empty() || only == "HT")
      results.push_back(run_workload_gpus("HT", 4096, 4096, EPD_MODE_HIGH_THROUGHPUT, fp8, iters, G));
  }

  const double bar_local = barrier_us(G, iters, 0), bar_home = barrier_us(G, iters, 1);
  std::printf("gpus: %d, one rank each; peer access on %d ordered pairs, native atomics on %d\n", n, pairs, atomics);
  std::printf("cross-GPU barrier (a chain of 50 per GPU): %.2f us each with a word per GPU (local polling, the "
              "default), %.2f us with one word on the home GPU; runs below use %s\n",
              bar_local, bar_home, g_tuning.barrier == 1 ? "the home word" : "local polling");
  for (int g = 0; g < n; ++g) std::printf("  GPU %d: %s (%d SMs)\n", g, names[g].c_str(), sms[g]);
  std::printf("start gate: %s\n", G.gate_note.c_str());
  std::printf("us: per op the slowest GPU's median over %d (LL) / %d (HT) iterations\n", iters * 4, iters);
  std::printf("GB/s per GPU (a GPU's mean bytes / that time): nvl = rows to (dispatch) or back to (combine) other "
              "GPUs, alg = every row a GPU receives, its own included\n");
  std::printf("bound: all GPUs at once cudaMemcpyPeerAsync to every other GPU, the dispatch's bytes per pair; "
              "/bound = nvl GB/s / bound GB/s\n");
  std::printf("%-4s %-5s %5s %5s %-15s %8s %11s %8s %8s %6s %11s %8s %8s %6s %9s %8s\n", "load", "disp", "tok", "cap",
              "spec_mode", "rows", "dispatch_us", "nvl_GB/s", "alg_GB/s", "/bound", "combine_us", "nvl_GB/s", "alg_GB/s",
              "/bound", "bound_us", "bnd_GB/s");
  std::string json = "{\n  \"gpus\": " + std::to_string(n) + ",\n  \"devices\": [";
  for (int g = 0; g < n; ++g) json += (g ? ", \"" : "\"") + names[g] + "\"";
  json += "],\n  \"peer_pairs\": " + std::to_string(pairs) + ",\n  \"native_atomic_pairs\": " +
          std::to_string(atomics) + ",\n  \"start_gate\": " + (G.wait32 ? "true" : "false") +
          ",\n  \"barrier_us_local\": " + std::to_string(bar_local) + ",\n  \"barrier_us_home\": " +
          std::to_string(bar_home) + ",\n  \"results\": [\n";
  auto gbps = [](double bytes, double us) { return us > 0 ? bytes / (us * 1e-6) / 1e9 : 0.0; };
  for (size_t i = 0; i < results.size(); ++i) {
    const ResultN& r = results[i];
    const double dt = slowest(r.dispatch_us), ct = slowest(r.combine_us), bt = slowest(r.bound_us);
    const double dn = gbps(mean(r.dispatch_nvl), dt), da = gbps(mean(r.dispatch_alg), dt);
    const double cn = gbps(mean(r.combine_nvl), ct), ca = gbps(mean(r.combine_alg), ct);
    const double bn = gbps(mean(r.bound_bytes), bt);
    const double dr = bn > 0 ? dn / bn : 0.0, cr = bn > 0 ? cn / bn : 0.0;
    std::printf("%-4s %-5s %5d %5d %-15s %8lld %11.1f %8.0f %8.0f %6.2f %11.1f %8.0f %8.0f %6.2f %9.1f %8.0f  %s\n",
                r.name.c_str(), r.fp8 ? "fp8" : "bf16", r.tokens, r.capacity, mode_name(r.mode),
                static_cast<long long>(r.rows), dt, dn, da, dr, ct, cn, ca, cr, bt, bn, r.launch.c_str());
    char b[1024];
    std::snprintf(b, sizeof b,
                  "    {\"workload\": \"%s\", \"tokens_per_rank\": %d, \"max_tokens_per_rank\": %d, \"ranks\": %d, "
                  "\"gpus\": %d, \"hidden\": %d, \"top_k\": %d, \"experts\": %d, \"dispatch\": \"%s\", "
                  "\"combine\": \"bf16\", \"spec_mode\": \"%s\", \"rows\": %lld, \"dispatch_us\": %.3f, "
                  "\"combine_us\": %.3f, \"bound_us\": %.3f, \"dispatch_nvl_GBps\": %.1f, \"dispatch_alg_GBps\": %.1f, "
                  "\"combine_nvl_GBps\": %.1f, \"combine_alg_GBps\": %.1f, \"bound_nvl_GBps\": %.1f, "
                  "\"dispatch_bound_ratio\": %.3f, \"combine_bound_ratio\": %.3f, ",
                  r.name.c_str(), r.tokens, r.capacity, n, n, kHidden, kTopK, kExperts, r.fp8 ? "fp8_e4m3" : "bf16",
                  mode_name(r.mode), static_cast<long long>(r.rows), dt, ct, bt, dn, da, cn, ca, bn, dr, cr);
    json += b;
    json += "\"dispatch_us_per_gpu\": " + json_array(r.dispatch_us, "%.3f") +
            ", \"combine_us_per_gpu\": " + json_array(r.combine_us, "%.3f") +
            ", \"bound_us_per_gpu\": " + json_array(r.bound_us, "%.3f") +
            ", \"dispatch_nvl_bytes\": " + json_array(r.dispatch_nvl, "%.0f") +
            ", \"dispatch_alg_bytes\": " + json_array(r.dispatch_alg, "%.0f") +
            ", \"combine_nvl_bytes\": " + json_array(r.combine_nvl, "%.0f") +
            ", \"combine_alg_bytes\": " + json_array(r.combine_alg, "%.0f") + ", \"variant\": \"" + r.variant +
            "\", \"launch\": \"" + r.launch + "\"}" +
            (i + 1 < results.size() ? "," : "") + "\n";
  }
  json += "  ]\n}\n";
  return write_json(json_path, json);
}

}  // namespace

int main(int argc, char** argv) {
  epd::armed_prepare_environment();  // before CUDA initialises: eager loading (the multi-GPU executor needs it)
  std::string json_path, only;
  int iters = 50, gpus = 1;
  bool iters_given = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
      iters_given = true;
    }
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--gpus") && i + 1 < argc) gpus = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--parts") && i + 1 < argc) g_tuning.parts = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--combine-parts") && i + 1 < argc) g_tuning.combine_parts = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--one-launch-across-gpus")) g_tuning.one_launch_across_gpus = true;
    else if (!std::strcmp(argv[i], "--barrier") && i + 1 < argc) g_tuning.barrier = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--ll-mode") && i + 1 < argc) {
      auto m = parse_mode(argv[++i]);
      if (!m) {
        std::fprintf(stderr, "%s\n", m.status().message().c_str());
        return 2;
      }
      g_ll_mode = *m;
    }
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--iters N] [--only LL|HT] [--gpus N]\n", argv[0]);
      return 2;
    }
  }
  if (gpus < 1 || gpus > EPD_MAX_WORLD_SIZE) {
    std::fprintf(stderr, "epd_gpu_bench: --gpus %d is outside [1, %d]\n", gpus, EPD_MAX_WORLD_SIZE);
    return 2;
  }
  // Several GPUs: 20 timed iterations unless told (LL four times as many), at most 200.
  if (gpus > 1) return run_gpus(gpus, std::clamp(iters_given ? iters : 20, 1, 200), only, json_path);
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
                  "\"dispatch_copy_ratio\": %.3f, \"combine_copy_ratio\": %.3f, \"variant\": \"%s\", "
                  "\"launch\": \"%s\"}%s\n",
                  r.name.c_str(), r.tokens, r.fp8 ? "fp8_e4m3" : "bf16", static_cast<long long>(r.rows), r.dispatch_us,
                  r.combine_us, r.pair_graph_us, r.dispatch_bytes, r.combine_bytes, dg, cg, dg / copy_gbps,
                  cg / copy_gbps, r.variant.c_str(), r.launch.c_str(), i + 1 < results.size() ? "," : "");
    json += b;
  }
  json += "  ]\n}\n";
  return write_json(json_path, json);
}
