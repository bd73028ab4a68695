// bench_host — host executor dispatch/combine throughput next to memcpy of the
// same number of bytes, measured in the same run.
//
//   epd_bench_host [--ranks 8] [--tokens 4096] [--hidden 7168] [--topk 8]
//                  [--experts 256] [--quant none|fp8_e4m3] [--iters 5] [--json]
//
// Every rank sends `tokens` tokens with uniform random top-k routing. The
// dispatch bytes are the payload bytes written into receive buffers (rows x
// row bytes, plus fp8 scales); the combine bytes are the expert-output rows
// read. The bound is memcpy of that many bytes between two buffers, the same
// thread count; ratio = memcpy time / op time. The first iteration is checked
// (combine with ones of identity experts must equal destinations x input).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "host_executor.h"
#include "layout.h"
#include "numeric.h"
#include "spec.h"
#include "thread_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

uint8_t* map_bytes(uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(2);
  }
  return static_cast<uint8_t*>(p);
}

struct Args {
  int ranks = 8, tokens = 4096, hidden = 7168, topk = 8, experts = 256, iters = 5;
  std::string quant = "none";
  bool json = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_host: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--ranks") a.ranks = std::stoi(next());
    else if (k == "--tokens") a.tokens = std::stoi(next());
    else if (k == "--hidden") a.hidden = std::stoi(next());
    else if (k == "--topk") a.topk = std::stoi(next());
    else if (k == "--experts") a.experts = std::stoi(next());
    else if (k == "--iters") a.iters = std::stoi(next());
    else if (k == "--quant") a.quant = next();
    else if (k == "--json") a.json = true;
    else {
      std::fprintf(stderr, "bench_host: unknown argument '%s'\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  epd_group_spec_t c;
  epd_group_spec_init(&c);
  std::snprintf(c.name, sizeof c.name, "bench");
  c.world_size = a.ranks;
  c.num_experts = a.experts;
  c.top_k = a.topk;
  c.hidden = a.hidden;
  c.max_tokens_per_rank = a.tokens;
  auto q = epd::parse_quant(a.quant);
  if (!q) {
    std::fprintf(stderr, "bench_host: %s\n", q.status().message().c_str());
    return 2;
  }
  c.dispatch_quant = *q;
  auto spec = epd::GroupSpec::from_c(c);
  epd::Status st = spec ? spec->validate() : spec.status();
  if (!st) {
    std::fprintf(stderr, "bench_host: %s\n", st.to_string().c_str());
    return 2;
  }
  const epd::GroupLayout layout = epd::GroupLayout::compute(*spec);
  std::vector<uint8_t*> bases;
  for (const auto& l : layout.ranks) bases.push_back(map_bytes(l.bytes));
  epd::ThreadPool& pool = epd::ThreadPool::shared();
  epd::HostExecutor ex(*spec, bases, &pool);

  // Inputs: random bf16 activations, uniform distinct top-k experts.
  std::mt19937_64 rng(42);
  const int64_t H = a.hidden, K = a.topk;
  std::vector<uint16_t> x(static_cast<size_t>(a.tokens * H));
  std::vector<int32_t> ids(static_cast<size_t>(a.tokens * K));
  std::vector<float> w(static_cast<size_t>(a.tokens * K), 0.125f);
  std::vector<int32_t> perm(static_cast<size_t>(a.experts));
  for (int r = 0; r < a.ranks; ++r) {
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    for (auto& v : x) v = epd::float_to_bf16(u(rng));
    for (int64_t t = 0; t < a.tokens; ++t) {
      for (int e = 0; e < a.experts; ++e) perm[e] = e;
      for (int64_t k = 0; k < K; ++k) {
        std::uniform_int_distribution<int> pick(static_cast<int>(k), a.experts - 1);
        std::swap(perm[k], perm[pick(rng)]);
        ids[t * K + k] = perm[k];
      }
    }
    epd::DispatchInputs in{x.data(), ids.data(), EPD_ID_INT32, w.data(), a.tokens};
    st = epd::stage_dispatch_inputs(*spec, layout.ranks[r], bases[r], 0, in);
    if (!st) {
      std::fprintf(stderr, "bench_host: staging: %s\n", st.to_string().c_str());
      return 1;
    }
  }

  std::vector<double> tdisp, tcomb;
  uint64_t disp_bytes = 0, comb_bytes = 0;
  for (int it = 0; it < a.iters + 1; ++it) {
    auto t0 = Clock::now();
    st = ex.dispatch(0);
    const double td = seconds_since(t0);
    if (!st) {
      std::fprintf(stderr, "bench_host: dispatch: %s\n", st.to_string().c_str());
      return 1;
    }
    disp_bytes = comb_bytes = 0;
    for (int r = 0; r < a.ranks; ++r) {
      const auto& l = layout.ranks[r];
      const auto& o = l.slot[0];
      const int32_t rows = *reinterpret_cast<const int32_t*>(bases[r] + o.recv_total);
      disp_bytes += static_cast<uint64_t>(rows) * (l.recv_row_bytes + l.scale_blocks * 4ull);
      comb_bytes += static_cast<uint64_t>(rows) * l.in_row_bytes;
      if (it == 0) {
        // Identity experts: expert output = the dequantised received row, in bf16.
        for (int32_t row = 0; row < rows; ++row) {
          auto* dst = reinterpret_cast<uint16_t*>(bases[r] + o.combine_in + row * l.in_row_bytes);
          const uint8_t* src = bases[r] + o.recv_x + row * l.recv_row_bytes;
          if (*q == EPD_QUANT_NONE) {
            std::memcpy(dst, src, l.in_row_bytes);
          } else {
            const float* sc = reinterpret_cast<const float*>(bases[r] + o.recv_scales) + row * l.scale_blocks;
            for (int64_t i = 0; i < H; ++i)
              dst[i] = epd::float_to_bf16(epd::fp8_e4m3_to_float(src[i]) * sc[i / EPD_FP8_BLOCK]);
          }
        }
      }
    }
    t0 = Clock::now();
    st = ex.combine(0, EPD_WEIGHTS_ONES);
    const double tc = seconds_since(t0);
    if (!st) {
      std::fprintf(stderr, "bench_host: combine: %s\n", st.to_string().c_str());
      return 1;
    }
    if (it == 0 && *q == EPD_QUANT_NONE) {
      // rank 0's output: token t = (#distinct destination ranks) * x[t] when exact in bf16;
      // check the first 16 tokens against a plain recomputation.
      const auto& l = layout.ranks[0];
      const auto* out = reinterpret_cast<const uint16_t*>(bases[0] + l.slot[0].combine_out);
      const auto* sx = reinterpret_cast<const uint16_t*>(bases[0] + l.slot[0].send_x);
      const auto* sid = reinterpret_cast<const int32_t*>(bases[0] + l.slot[0].send_ids);
      for (int64_t t = 0; t < std::min<int64_t>(16, a.tokens); ++t) {
        std::vector<int> seen(static_cast<size_t>(a.ranks), 0);
        int d = 0;
        for (int64_t k = 0; k < K; ++k) d += !seen[spec->expert_owner[sid[t * K + k]]]++;
        for (int64_t i = 0; i < H; ++i) {
          float acc = 0;
          for (int j = 0; j < d; ++j) acc += epd::bf16_to_float(sx[t * H + i]);
          if (out[t * H + i] != epd::float_to_bf16(acc)) {
            std::fprintf(stderr, "bench_host: verification failed at token %lld elem %lld\n",
                         static_cast<long long>(t), static_cast<long long>(i));
            return 1;
          }
        }
      }
    }
    if (it > 0) {  // iteration 0 warms up (page faults) and verifies
      tdisp.push_back(td);
      tcomb.push_back(tc);
    }
  }

  // memcpy bound: the same bytes, split over the same pool.
  const uint64_t mbytes = std::max(disp_bytes, comb_bytes);
  uint8_t* src = map_bytes(mbytes);
  uint8_t* dst = map_bytes(mbytes);
  std::memset(src, 1, mbytes);
  std::memset(dst, 2, mbytes);
  const int64_t chunks = static_cast<int64_t>(pool.size()) * 4;
  std::vector<double> tcopy;
  for (int it = 0; it < a.iters + 1; ++it) {
    auto t0 = Clock::now();
    pool.parallel_for(chunks, [&](int64_t i) {
      const uint64_t lo = mbytes * static_cast<uint64_t>(i) / static_cast<uint64_t>(chunks);
      const uint64_t hi = mbytes * static_cast<uint64_t>(i + 1) / static_cast<uint64_t>(chunks);
      std::memcpy(dst + lo, src + lo, hi - lo);
    });
    if (it > 0) tcopy.push_back(seconds_since(t0));
  }
  const double d = median(tdisp), cb = median(tcomb), m = median(tcopy);
  const double gd = disp_bytes / d / 1e9, gc = comb_bytes / cb / 1e9, gm = mbytes / m / 1e9;
  if (a.json) {
    std::printf(
        "{\"ranks\":%d,\"tokens\":%d,\"hidden\":%d,\"topk\":%d,\"experts\":%d,\"quant\":\"%s\","
        "\"threads\":%u,\"dispatch_s\":%.6f,\"dispatch_bytes\":%llu,\"dispatch_GBps\":%.3f,"
        "\"combine_s\":%.6f,\"combine_bytes\":%llu,\"combine_GBps\":%.3f,\"memcpy_bytes\":%llu,"
        "\"memcpy_GBps\":%.3f,\"dispatch_ratio\":%.3f,\"combine_ratio\":%.3f}\n",
        a.ranks, a.tokens, a.hidden, a.topk, a.experts, a.quant.c_str(), pool.size(), d,
        static_cast<unsigned long long>(disp_bytes), gd, cb,
        static_cast<unsigned long long>(comb_bytes), gc, static_cast<unsigned long long>(mbytes), gm,
        gd / gm, gc / gm);
  } else {
    std::printf("host executor, %d ranks x %d tokens, hidden %d, top-%d of %d experts, dispatch %s, %u threads\n",
                a.ranks, a.tokens, a.hidden, a.topk, a.experts, a.quant.c_str(), pool.size());
    std::printf("%-10s %12s %14s %10s %12s\n", "op", "median ms", "bytes", "GB/s", "vs memcpy");
    std::printf("%-10s %12.2f %14llu %10.2f %11.2fx\n", "dispatch", d * 1e3,
                static_cast<unsigned long long>(disp_bytes), gd, gd / gm);
    std::printf("%-10s %12.2f %14llu %10.2f %11.2fx\n", "combine", cb * 1e3,
                static_cast<unsigned long long>(comb_bytes), gc, gc / gm);
    std::printf("%-10s %12.2f %14llu %10.2f %11.2fx\n", "memcpy", m * 1e3,
                static_cast<unsigned long long>(mbytes), gm, 1.0);
  }
  return 0;
}
