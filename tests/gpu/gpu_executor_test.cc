// gpu_executor_test.cc — GpuExecutor against HostExecutor: 8 ranks on one
// GPU (and, where visible, across 2, 4 and 8 GPUs), random specs and routings, both layouts and modes, bf16/fp16/fp32 and
// fp8; dispatch outputs byte-identical (padding rows included, unwritten rows
// keep the same poison on both sides), combine bitwise equal; faults reported
// with rank/token/k/value and nothing written; CUDA graph replay with
// device-side token counts. Skipped (GTEST_SKIP) without a GPU or driver.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "../../kernels/cuda/device_params.h"
#include "gpu_armed.h"
#include "gpu_test_util.h"

namespace epd::test {
namespace {

// Before CUDA initialises: eager module loading, which the multi-GPU executor needs.
const bool kEnvPrepared = (armed_prepare_environment(), true);

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

#define SKIP_WITHOUT_GPU()                                                  \
  do {                                                                      \
    auto count_ = gpu_device_count();                                       \
    if (!count_) GTEST_SKIP() << count_.status().message();                 \
  } while (0)

int visible_gpus() {
  auto n = gpu_device_count();
  return n ? *n : 0;
}

// Ranks over `gpus` GPUs in contiguous runs (rank r on GPU r * gpus / world).
std::vector<int32_t> spread(int32_t world, int32_t gpus) {
  std::vector<int32_t> d;
  for (int32_t r = 0; r < world; ++r) d.push_back(r * gpus / world);
  return d;
}

// Enqueues on every GPU of an executor, each shard's part on its own stream.
class Launcher {
 public:
  explicit Launcher(GpuExecutor& ex) : ex_(ex) {
    for (const auto& sh : ex.shards()) {
      cudaStream_t s = nullptr;
      EXPECT_EQ(cudaSetDevice(sh.device), cudaSuccess);
      EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
      streams_.push_back(s);
    }
  }
  ~Launcher() {
    for (cudaStream_t s : streams_) cudaStreamDestroy(s);
  }
  Status dispatch(int32_t slot) {
    for (int32_t i = 0; i < static_cast<int32_t>(streams_.size()); ++i)
      EPD_RETURN_IF_ERROR(ex_.dispatch_shard(slot, i, streams_[static_cast<size_t>(i)]));
    return Status::ok();
  }
  Status combine(int32_t slot, epd_weight_mode_t mode) {
    for (int32_t i = 0; i < static_cast<int32_t>(streams_.size()); ++i)
      EPD_RETURN_IF_ERROR(ex_.combine_shard(slot, i, mode, streams_[static_cast<size_t>(i)]));
    return Status::ok();
  }

 private:
  GpuExecutor& ex_;
  std::vector<cudaStream_t> streams_;
};

// Uploads every host mirror into freshly allocated device workspaces (rank r
// on devices[r]; all on GPU 0 when empty).
void upload(Group& g, const std::vector<int32_t>& devices = {}) {
  auto ws = devices.empty() ? allocate_gpu_workspaces(g.spec, 0) : allocate_gpu_workspaces(g.spec, devices);
  ASSERT_TRUE(ws.is_ok()) << ws.status().message();
  g.dev = std::move(ws.value());
  for (size_t r = 0; r < g.host.size(); ++r)
    CUDA_OK(cudaMemcpy(g.dev[r]->device_ptr(), g.host[r].data(), g.host[r].size(), cudaMemcpyHostToDevice));
}

std::vector<uint8_t> download(const Group& g, int32_t r) {
  std::vector<uint8_t> out(g.host[static_cast<size_t>(r)].size());
  EXPECT_EQ(cudaMemcpy(out.data(), g.dev[static_cast<size_t>(r)]->device_ptr(), out.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return out;
}

// Compares the device workspaces with the host mirrors over `which` regions.
template <typename Regions>
void expect_equal(Group& g, int32_t slot, Regions which, const char* what) {
  for (int32_t r = 0; r < g.spec.world_size; ++r) {
    const RankLayout& l = g.layout.ranks[r];
    const std::vector<uint8_t> d = download(g, r);
    for (auto [b, e] : which(l)) {
      const std::string diff = first_difference(d.data(), g.host[r].data(), b, e, l, slot);
      ASSERT_EQ(diff, "") << what << " differs on rank " << r;
    }
  }
}

void expect_dispatch_equal(Group& g, int32_t slot) {
  expect_equal(g, slot, [&](const RankLayout& l) { return dispatch_regions(l, slot); }, "dispatch");
}
void expect_combine_equal(Group& g, int32_t slot) {
  expect_equal(g, slot, [&](const RankLayout& l) { return combine_regions(g.spec, l, slot); }, "combine");
}

struct Case {
  epd_layout_t layout;
  epd_mode_t mode;
  epd_dtype_t dtype;
  epd_quant_t quant;
  Routing routing;
  int32_t experts, top_k, hidden, max_tokens, slot;
  bool shuffled_owner;
  int n_pattern;  // 0 all zero, 1 full capacity, else random in [0, M]
  epd_weight_mode_t weights;
};

std::string describe(const Case& c, uint64_t seed) {
  char b[400];
  std::snprintf(b, sizeof b,
                "seed=%llu layout=%s mode=%s dtype=%s quant=%s routing=%s E=%d K=%d H=%d M=%d slot=%d "
                "shuffled_owner=%d n_pattern=%d weights=%s",
                static_cast<unsigned long long>(seed), layout_name(c.layout), mode_name(c.mode),
                dtype_name(c.dtype), quant_name(c.quant), routing_name(c.routing), c.experts, c.top_k, c.hidden,
                c.max_tokens, c.slot, c.shuffled_owner, c.n_pattern, weight_mode_name(c.weights));
  return b;
}

Case random_case(int i, std::mt19937_64& rng) {
  Case c;
  c.layout = i % 2 ? EPD_LAYOUT_EXPERT_MAJOR : EPD_LAYOUT_RANK_MAJOR;
  c.mode = (i / 2) % 2 ? EPD_MODE_LOW_LATENCY : EPD_MODE_HIGH_THROUGHPUT;
  c.routing = static_cast<Routing>((i / 4) % 4);
  c.dtype = static_cast<epd_dtype_t>((i / 3) % 3);
  c.quant = i % 3 == 0 ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE;
  const int32_t experts[] = {8, 16, 24, 64, 256};
  c.experts = experts[rng() % 5];
  c.top_k = 1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(std::min(c.experts, 9)));
  const int32_t hiddens[] = {1, 33, 64, 100, 136, 520, 1000};
  c.hidden = c.quant != EPD_QUANT_NONE ? 128 * (1 + static_cast<int32_t>(rng() % 4))
                                       : hiddens[rng() % 7];
  c.max_tokens = 1 + static_cast<int32_t>(rng() % 200);
  // Keep expert_major (rows = local experts x W x M) within a few hundred MiB.
  const int64_t per_row = static_cast<int64_t>(c.hidden) * 4 * 2;
  const int64_t local = c.layout == EPD_LAYOUT_EXPERT_MAJOR ? c.experts / 8 + 1 : 1;
  while (c.max_tokens > 1 && local * 8 * c.max_tokens * per_row > (int64_t{24} << 20)) c.max_tokens /= 2;
  c.slot = i % 2;
  c.shuffled_owner = i % 5 == 2;
  c.n_pattern = i % 6;
  c.weights = c.layout == EPD_LAYOUT_EXPERT_MAJOR ? (i % 4 < 2 ? EPD_WEIGHTS_APPLY : EPD_WEIGHTS_ONES)
                                                  : (i % 4 < 2 ? EPD_WEIGHTS_ALREADY_APPLIED : EPD_WEIGHTS_ONES);
  return c;
}

// Stages, runs GPU and host executors on the same inputs, compares both
// phases. gpus > 1: the `world` ranks spread over that many GPUs.
void run_case(const Case& c, uint64_t seed, int repeats, const GpuTuning& tuning = {}, int32_t world = 8,
              int32_t gpus = 1) {
  SCOPED_TRACE(describe(c, seed) + " tuning(parts=" + std::to_string(tuning.parts) + ",combine_parts=" +
               std::to_string(tuning.combine_parts) + ",one_launch_across_gpus=" + std::to_string(tuning.one_launch_across_gpus) +
               ") world=" + std::to_string(world) + " gpus=" + std::to_string(gpus));
  Group g(make_spec(world, c.experts, c.top_k, c.hidden, c.max_tokens, c.dtype, c.quant, c.layout, c.mode,
                    c.shuffled_owner, seed));
  ASSERT_TRUE(g.spec.validate().is_ok()) << g.spec.validate().message();
  g.poison(seed * 3 + 1);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> n(static_cast<size_t>(world));
  for (auto& v : n)
    v = c.n_pattern == 0 ? 0 : c.n_pattern == 1 ? c.max_tokens : static_cast<int32_t>(rng() % (c.max_tokens + 1));
  Status st = g.stage(c.slot, c.routing, n, seed + 7);
  ASSERT_TRUE(st.is_ok()) << st.message();
  const std::vector<int32_t> devices = spread(world, gpus);
  upload(g, devices);
  if (::testing::Test::HasFatalFailure()) return;
  auto ex = GpuExecutor::create(g.spec, g.dev_bases(), devices, tuning);
  ASSERT_TRUE(ex.is_ok()) << ex.status().message();
  ASSERT_EQ(ex.value()->shards().size(), static_cast<size_t>(gpus));
  SCOPED_TRACE(ex.value()->describe_launch());
  const bool ll = c.mode == EPD_MODE_LOW_LATENCY;
  const char* variant = gpus > 1 && !(ll && tuning.one_launch_across_gpus) ? "multi_gpu"
                        : ll                                               ? "low_latency"
                                                                           : "high_throughput";
  EXPECT_STREQ(ex.value()->variant_name(), variant);
  HostExecutor host(g.spec, g.host_bases());
  cudaStream_t stream;
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Launcher launch(*ex.value());
  for (int rep = 0; rep < repeats; ++rep) {
    // One GPU: the plain calls on one stream; several: every shard's part.
    st = gpus == 1 ? ex.value()->dispatch(c.slot, stream) : launch.dispatch(c.slot);
    ASSERT_TRUE(st.is_ok()) << st.message();
    Status f = ex.value()->check_fault(gpus == 1 ? stream : nullptr);
    ASSERT_TRUE(f.is_ok()) << f.message();
    st = host.dispatch(c.slot);
    ASSERT_TRUE(st.is_ok()) << st.message();
    expect_dispatch_equal(g, c.slot);
    if (::testing::Test::HasFatalFailure()) break;
    st = gpus == 1 ? ex.value()->combine(c.slot, c.weights, stream) : launch.combine(c.slot, c.weights);
    ASSERT_TRUE(st.is_ok()) << st.message();
    f = ex.value()->check_fault(gpus == 1 ? stream : nullptr);
    ASSERT_TRUE(f.is_ok()) << f.message();
    st = host.combine(c.slot, c.weights);
    ASSERT_TRUE(st.is_ok()) << st.message();
    expect_combine_equal(g, c.slot);
    if (::testing::Test::HasFatalFailure()) break;
  }
  cudaStreamDestroy(stream);
}

// Several GPUs of this node (2, 4 and 8, as many as are visible), one rank per
// GPU and 8 ranks in runs per GPU: every shard pushes its rows over NVLink;
// byte-identical to the host executor. Skipped with fewer than 2 GPUs.
TEST(GpuExecutor, MatchesHostAcrossGpus) {
  const int n = visible_gpus();
  if (n < 2) GTEST_SKIP() << "needs 2 or more GPUs; " << n << " visible";
  const uint64_t base = 20261126;
  for (int32_t gpus : {2, 4, 8}) {
    if (gpus > n) break;
    for (int i = 0; i < 16; ++i) {
      std::mt19937_64 rng(base + static_cast<uint64_t>(i));
      const Case c = random_case(i, rng);
      const int32_t world = i % 2 ? 8 : gpus;
      run_case(c, base + static_cast<uint64_t>(i), i % 5 == 0 ? 2 : 1, {}, world, gpus);
      if (::testing::Test::HasFatalFailure()) return;
      if (c.mode != EPD_MODE_LOW_LATENCY) continue;
      GpuTuning one_launch;  // the one-launch low_latency kernel over several GPUs
      one_launch.one_launch_across_gpus = true;
      run_case(c, base + static_cast<uint64_t>(i), 2, one_launch, world, gpus);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

// A bad expert id on a rank of the second GPU: every GPU's part writes
// nothing, the fault names the rank, and the next call matches the host.
TEST(GpuExecutor, BadInputAcrossGpusFailsCleanly) {
  const int n = visible_gpus();
  if (n < 2) GTEST_SKIP() << "needs 2 or more GPUs; " << n << " visible";
  const uint64_t seed = 4343;
  Group g(make_spec(4, 64, 4, 256, 32, EPD_DTYPE_BF16, EPD_QUANT_NONE, EPD_LAYOUT_RANK_MAJOR,
                    EPD_MODE_HIGH_THROUGHPUT, false, seed));
  g.poison(seed);
  ASSERT_TRUE(g.stage(0, Routing::kSkewed, std::vector<int32_t>(4, 32), seed).is_ok());
  const std::vector<int32_t> devices = spread(4, 2);
  upload(g, devices);
  if (::testing::Test::HasFatalFailure()) return;
  auto ex = GpuExecutor::create(g.spec, g.dev_bases(), devices);
  ASSERT_TRUE(ex.is_ok()) << ex.status().message();
  Launcher launch(*ex.value());
  EXPECT_EQ(ex.value()->dispatch(0, nullptr).code(), EPD_ERR_INVALID_ARGUMENT);  // needs the per-GPU calls
  const RankLayout& l3 = g.layout.ranks[3];
  uint8_t* ids3 = g.dev[3]->device_ptr() + l3.slot[0].send_ids;
  const int32_t K = g.spec.top_k;
  const int32_t good = reinterpret_cast<const int32_t*>(g.host[3].data() + l3.slot[0].send_ids)[5 * K + 1];
  std::vector<std::vector<uint8_t>> before;
  for (int32_t r = 0; r < 4; ++r) before.push_back(download(g, r));
  const int32_t bad = 300;
  CUDA_OK(cudaMemcpy(ids3 + (5 * K + 1) * 4, &bad, 4, cudaMemcpyHostToDevice));
  ASSERT_TRUE(launch.dispatch(0).is_ok());
  const Status f = ex.value()->check_fault();
  EXPECT_EQ(f.code(), EPD_ERR_EXPERT_ID_OUT_OF_RANGE) << f.message();
  EXPECT_NE(f.message().find("rank 3: topk_ids[5][1] = 300"), std::string::npos) << f.message();
  for (int32_t r = 0; r < 4; ++r) {
    const std::vector<uint8_t> after = download(g, r);
    const RankLayout& l = g.layout.ranks[r];
    EXPECT_EQ(first_difference(after.data(), before[r].data(), l.slot[0].recv_total, l.slot[0].combine_in, l, 0), "")
        << "rank " << r << " written by a failed dispatch";
  }
  CUDA_OK(cudaMemcpy(ids3 + (5 * K + 1) * 4, &good, 4, cudaMemcpyHostToDevice));
  HostExecutor host(g.spec, g.host_bases());
  ASSERT_TRUE(launch.dispatch(0).is_ok());
  ASSERT_TRUE(ex.value()->check_fault().is_ok());
  ASSERT_TRUE(host.dispatch(0).is_ok());
  expect_dispatch_equal(g, 0);
  ASSERT_TRUE(launch.combine(0, EPD_WEIGHTS_ONES).is_ok());
  ASSERT_TRUE(ex.value()->check_fault().is_ok());
  ASSERT_TRUE(host.combine(0, EPD_WEIGHTS_ONES).is_ok());
  expect_combine_equal(g, 0);
}

// Ranks of one GPU that are not contiguous are refused, naming them.
TEST(GpuExecutor, RefusesInterleavedGpus) {
  const int n = visible_gpus();
  if (n < 2) GTEST_SKIP() << "needs 2 or more GPUs; " << n << " visible";
  Group g(make_spec(3, 6, 2, 64, 4, EPD_DTYPE_FP16, EPD_QUANT_NONE, EPD_LAYOUT_RANK_MAJOR,
                    EPD_MODE_HIGH_THROUGHPUT, false, 1));
  upload(g, {0, 1, 0});
  if (::testing::Test::HasFatalFailure()) return;
  auto ex = GpuExecutor::create(g.spec, g.dev_bases(), std::vector<int32_t>{0, 1, 0});
  EXPECT_EQ(ex.status().code(), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(ex.status().message().find("rank 2 is on GPU 0"), std::string::npos) << ex.status().message();
}

TEST(GpuExecutor, MatchesHostOnRandomSpecsAndRoutings) {
  SKIP_WITHOUT_GPU();
  const uint64_t base = 20261125;
  for (int i = 0; i < 48; ++i) {
    std::mt19937_64 rng(base + static_cast<uint64_t>(i));
    const Case c = random_case(i, rng);
    // Launch shapes beside the executor's own: one warp per row, odd slicing, one block per SM.
    GpuTuning tuning;
    if (i % 4 == 3) tuning = GpuTuning{1, 1, 1};
    if (i % 4 == 1) tuning = GpuTuning{3, 5, 2};
    run_case(c, base + static_cast<uint64_t>(i), i % 7 == 0 ? 2 : 1, tuning);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(GpuExecutor, Fp8Hidden7168BothLayoutsAndModes) {
  SKIP_WITHOUT_GPU();
  for (int layout = 0; layout < 2; ++layout)
    for (int mode = 0; mode < 2; ++mode) {
      Case c{};
      c.layout = static_cast<epd_layout_t>(layout);
      c.mode = static_cast<epd_mode_t>(mode);
      c.dtype = EPD_DTYPE_BF16;
      c.quant = EPD_QUANT_FP8_E4M3_BLOCK128;
      c.routing = Routing::kSkewed;
      c.experts = 256;
      c.top_k = 8;
      c.hidden = 7168;
      c.max_tokens = layout == EPD_LAYOUT_RANK_MAJOR ? 96 : 6;
      c.slot = 1;
      c.n_pattern = 1;
      c.weights = layout == EPD_LAYOUT_RANK_MAJOR ? EPD_WEIGHTS_ONES : EPD_WEIGHTS_APPLY;
      run_case(c, 777 + static_cast<uint64_t>(layout * 2 + mode), 1);
      if (::testing::Test::HasFatalFailure()) return;
    }
}

// Faults: a bad expert id, a duplicate id and a count above capacity written

// The dispatch's prefix scans a destination with one warp while its column of
// count words (world x chunks) fits kWarpPrefixWords, else with a whole block:
// both sides of that threshold, every layout and mode, against the host.
TEST(GpuExecutor, PrefixScanByWarpAndByBlockMatchesHost) {
  SKIP_WITHOUT_GPU();
  const int32_t at_limit = gpu::kWarpPrefixWords / 8 * 32;  // world 8: chunks = kWarpPrefixWords / 8
  int i = 0;
  for (int32_t max_tokens : {at_limit, at_limit + 1, 4 * at_limit + 5})
    for (int layout = 0; layout < 2; ++layout)
      for (int mode = 0; mode < 2; ++mode, ++i) {
        ASSERT_EQ(gpu::warp_prefix_fits(8, (max_tokens + 31) / 32), max_tokens == at_limit);
        Case c{};
        c.layout = static_cast<epd_layout_t>(layout);
        c.mode = static_cast<epd_mode_t>(mode);
        c.dtype = EPD_DTYPE_BF16;
        c.quant = EPD_QUANT_NONE;
        c.routing = i % 2 ? Routing::kSkewed : Routing::kUniform;
        c.experts = 64;
        c.top_k = 4;
        c.hidden = 64;
        c.max_tokens = max_tokens;
        c.slot = i % 2;
        c.n_pattern = i % 3 == 0 ? 1 : 3;
        c.weights = layout == EPD_LAYOUT_RANK_MAJOR ? EPD_WEIGHTS_ALREADY_APPLIED : EPD_WEIGHTS_APPLY;
        run_case(c, 9100 + static_cast<uint64_t>(i), 1);
        if (::testing::Test::HasFatalFailure()) return;
      }
}
// straight into device memory (the host staging would refuse them).
TEST(GpuExecutor, BadInputFailsCleanlyAndNextCallWorks) {
  SKIP_WITHOUT_GPU();
  for (int mode = 0; mode < 2; ++mode) {
    const uint64_t seed = 4242 + static_cast<uint64_t>(mode);
    SCOPED_TRACE("mode=" + std::string(mode_name(static_cast<epd_mode_t>(mode))));
    Group g(make_spec(8, 64, 4, 256, 32, EPD_DTYPE_BF16, EPD_QUANT_NONE, EPD_LAYOUT_RANK_MAJOR,
                      static_cast<epd_mode_t>(mode), false, seed));
    g.poison(seed);
    ASSERT_TRUE(g.stage(0, Routing::kSkewed, std::vector<int32_t>(8, 32), seed).is_ok());
    upload(g);
    if (::testing::Test::HasFatalFailure()) return;
    auto ex = GpuExecutor::create(g.spec, g.dev_bases(), 0);
    ASSERT_TRUE(ex.is_ok()) << ex.status().message();
    GpuExecutor& gpu = *ex.value();
    const RankLayout& l3 = g.layout.ranks[3];
    uint8_t* ids3 = g.dev[3]->device_ptr() + l3.slot[0].send_ids;
    const int32_t K = g.spec.top_k;
    const int32_t good = reinterpret_cast<const int32_t*>(g.host[3].data() + l3.slot[0].send_ids)[5 * K + 1];
    const int32_t good2 = reinterpret_cast<const int32_t*>(g.host[3].data() + l3.slot[0].send_ids)[5 * K + 2];
    std::vector<std::vector<uint8_t>> before;
    for (int32_t r = 0; r < 8; ++r) before.push_back(download(g, r));

    struct Bad {
      int32_t value;
      int32_t k;
      epd_status_t code;
      const char* text;
    };
    const int32_t dup = good;  // same expert as k = 1, written at k = 2
    const Bad bads[] = {{300, 1, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "rank 3: topk_ids[5][1] = 300 is outside [-1, 64)"},
                        {-2, 1, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "rank 3: topk_ids[5][1] = -2 is outside [-1, 64)"},
                        {dup, 2, EPD_ERR_INVALID_ARGUMENT, "rank 3: topk_ids[5] lists expert"}};
    for (const Bad& b : bads) {
      CUDA_OK(cudaMemcpy(ids3 + (5 * K + b.k) * 4, &b.value, 4, cudaMemcpyHostToDevice));
      ASSERT_TRUE(gpu.dispatch(0, nullptr).is_ok());
      const Status f = gpu.check_fault();
      EXPECT_EQ(f.code(), b.code) << f.message();
      EXPECT_NE(f.message().find(b.text), std::string::npos) << f.message();
      for (int32_t r = 0; r < 8; ++r) {  // nothing written outside the send slot's route words
        const std::vector<uint8_t> after = download(g, r);
        const RankLayout& l = g.layout.ranks[r];
        const std::string diff = first_difference(after.data(), before[r].data(), l.slot[0].recv_total,
                                                  l.slot[0].combine_in, l, 0);
        EXPECT_EQ(diff, "") << "rank " << r << " written by a failed dispatch";
      }
      const int32_t restore = b.k == 1 ? good : good2;
      CUDA_OK(cudaMemcpy(ids3 + (5 * K + b.k) * 4, &restore, 4, cudaMemcpyHostToDevice));
    }
    // A count above capacity.
    const uint32_t too_many = 33, ok_n = 32;
    CUDA_OK(cudaMemcpy(g.dev[6]->device_ptr() + g.layout.ranks[6].slot[0].send_hdr, &too_many, 4,
                       cudaMemcpyHostToDevice));
    ASSERT_TRUE(gpu.dispatch(0, nullptr).is_ok());
    const Status f = gpu.check_fault();
    EXPECT_EQ(f.code(), EPD_ERR_CAPACITY_EXCEEDED) << f.message();
    EXPECT_NE(f.message().find("rank 6: n_tokens = 33"), std::string::npos) << f.message();
    CUDA_OK(cudaMemcpy(g.dev[6]->device_ptr() + g.layout.ranks[6].slot[0].send_hdr, &ok_n, 4,
                       cudaMemcpyHostToDevice));

    // The next call works and matches the host executor.
    HostExecutor host(g.spec, g.host_bases());
    ASSERT_TRUE(gpu.dispatch(0, nullptr).is_ok());
    ASSERT_TRUE(gpu.check_fault().is_ok());
    ASSERT_TRUE(host.dispatch(0).is_ok());
    expect_dispatch_equal(g, 0);
    ASSERT_TRUE(gpu.combine(0, EPD_WEIGHTS_ONES, nullptr).is_ok());
    ASSERT_TRUE(gpu.check_fault().is_ok());
    ASSERT_TRUE(host.combine(0, EPD_WEIGHTS_ONES).is_ok());
    expect_combine_equal(g, 0);
  }
}

TEST(GpuExecutor, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  Group g(make_spec(8, 16, 2, 64, 4, EPD_DTYPE_FP16, EPD_QUANT_NONE, EPD_LAYOUT_RANK_MAJOR,
                    EPD_MODE_HIGH_THROUGHPUT, false, 1));
  upload(g);
  if (::testing::Test::HasFatalFailure()) return;
  auto ex = GpuExecutor::create(g.spec, g.dev_bases(), 0);
  ASSERT_TRUE(ex.is_ok()) << ex.status().message();
  EXPECT_EQ(ex.value()->dispatch(2, nullptr).code(), EPD_ERR_BAD_SLOT);
  EXPECT_EQ(ex.value()->combine(0, EPD_WEIGHTS_ONES, nullptr).code(), EPD_ERR_NO_DISPATCH);
  EXPECT_EQ(ex.value()->combine(0, EPD_WEIGHTS_APPLY, nullptr).code(), EPD_ERR_BAD_WEIGHT_MODE);
  EXPECT_EQ(GpuExecutor::create(g.spec, {}, 0).status().code(), EPD_ERR_INVALID_ARGUMENT);
}

TEST(GpuWorkspace, ExportsAPosixFileDescriptor) {
  SKIP_WITHOUT_GPU();
  auto w = GpuWorkspace::create(3 << 20, 0);
  ASSERT_TRUE(w.is_ok()) << w.status().message();
  EXPECT_GE(w.value()->mapped_bytes(), uint64_t{3} << 20);
  auto fd = w.value()->export_fd();
  ASSERT_TRUE(fd.is_ok()) << fd.status().message();
  EXPECT_GE(fd.value(), 0);
  close(fd.value());
  CUDA_OK(cudaMemset(w.value()->device_ptr(), 0x5a, 3 << 20));
  CUDA_OK(cudaDeviceSynchronize());
}

// Dispatch + combine captured once in a CUDA graph, replayed with token counts
// changed in device memory between replays; each replay checked against the host.
TEST(GpuExecutor, GraphReplayReadsTokenCountsFromDevice) {
  SKIP_WITHOUT_GPU();
  for (int mode = 0; mode < 2; ++mode) {
    const uint64_t seed = 99 + static_cast<uint64_t>(mode);
    SCOPED_TRACE("mode=" + std::string(mode_name(static_cast<epd_mode_t>(mode))));
    Group g(make_spec(8, 32, 3, 128, 40, EPD_DTYPE_BF16, mode ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE,
                      mode ? EPD_LAYOUT_EXPERT_MAJOR : EPD_LAYOUT_RANK_MAJOR, static_cast<epd_mode_t>(mode), true,
                      seed));
    g.poison(seed);
    ASSERT_TRUE(g.stage(1, Routing::kSkewed, std::vector<int32_t>(8, 40), seed).is_ok());
    upload(g);
    if (::testing::Test::HasFatalFailure()) return;
    auto ex = GpuExecutor::create(g.spec, g.dev_bases(), 0);
    ASSERT_TRUE(ex.is_ok()) << ex.status().message();
    HostExecutor host(g.spec, g.host_bases());
    const epd_weight_mode_t wm = mode ? EPD_WEIGHTS_APPLY : EPD_WEIGHTS_ONES;
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    ASSERT_TRUE(ex.value()->dispatch(1, stream).is_ok());
    ASSERT_TRUE(ex.value()->combine(1, wm, stream).is_ok());
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    std::mt19937_64 rng(seed);
    for (int rep = 0; rep < 6; ++rep) {
      for (int32_t r = 0; r < 8; ++r) {
        const uint32_t n = rep == 0 ? 0 : static_cast<uint32_t>(rng() % 41);
        const uint64_t off = g.layout.ranks[r].slot[1].send_hdr;
        std::memcpy(g.host[r].data() + off, &n, 4);
        CUDA_OK(cudaMemcpy(g.dev[r]->device_ptr() + off, &n, 4, cudaMemcpyHostToDevice));
      }
      CUDA_OK(cudaGraphLaunch(exec, stream));
      ASSERT_TRUE(ex.value()->check_fault(stream).is_ok());
      ASSERT_TRUE(host.dispatch(1).is_ok());
      ASSERT_TRUE(host.combine(1, wm).is_ok());
      expect_dispatch_equal(g, 1);
      expect_combine_equal(g, 1);
      if (::testing::Test::HasFatalFailure()) break;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace epd::test
