// armed_executor_test.cc — the armed GPU executor (kernels/gpu_armed.h) with
// the client half (libclient/gpu_ops.h): 8 ranks on one GPU against
// HostExecutor in process (both layouts, all weight modes, a bad expert id
// reported through the completion word and the next call clean); a client
// that captures 10 dispatch/combine pairs in a CUDA graph and replays it 1000
// times with device-side token counts (every replay's receive totals checked,
// every 100th replay's outputs checked byte for byte); a client in another
// process importing the workspaces over SCM_RIGHTS; and the abort path: a
// client SIGKILLed with armed waits pending, the daemon role aborts, its
// streams drain within the deadline, and a new client continues.
// Skipped (GTEST_SKIP) without a GPU or driver.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "armed_ipc.h"
#include "control_block.h"
#include "gpu_armed.h"
#include "gpu_ops.h"
#include "gpu_test_util.h"

namespace epd::test {
namespace {

// Before CUDA initialises (static initialisation runs before main).
const bool kEnvPrepared = (armed_prepare_environment(), true);

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

#define SKIP_WITHOUT_GPU()                                                  \
  do {                                                                      \
    auto count_ = gpu_device_count();                                       \
    if (!count_) GTEST_SKIP() << count_.status().message();                 \
  } while (0)

constexpr int kDeadlineMs = 20000;

// cudaStreamSynchronize with a deadline (a lost completion must fail the test, not hang it).
bool sync_within(cudaStream_t s, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    const cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) return false;
    if (std::chrono::steady_clock::now() > end) return false;
  }
}

GroupSpec armed_spec(epd_layout_t layout, epd_mode_t mode, int32_t hidden, int32_t max_tokens, uint64_t seed) {
  GroupSpec s = make_spec(8, 64, 4, hidden, max_tokens, EPD_DTYPE_BF16, EPD_QUANT_NONE, layout, mode,
                          /*shuffled_owner=*/true, seed);
  s.timeout_ms = 5000;
  return s;
}

void upload_all(Group& g) {
  auto ws = allocate_gpu_workspaces(g.spec, 0);
  ASSERT_TRUE(ws.is_ok()) << ws.status().message();
  g.dev = std::move(ws.value());
  for (size_t r = 0; r < g.host.size(); ++r)
    CUDA_OK(cudaMemcpy(g.dev[r]->device_ptr(), g.host[r].data(), g.host[r].size(), cudaMemcpyHostToDevice));
}

// Device workspaces -> host mirrors (so both sides start a check from the same bytes).
void download_all(Group& g) {
  for (size_t r = 0; r < g.host.size(); ++r)
    ASSERT_EQ(cudaMemcpy(g.host[r].data(), g.dev[r]->device_ptr(), g.host[r].size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
}

void set_host_n(Group& g, int32_t slot, const std::vector<int32_t>& n) {
  for (int32_t r = 0; r < g.spec.world_size; ++r) {
    auto* h = reinterpret_cast<SendHeader*>(g.host[r].data() + g.layout.ranks[r].slot[slot].send_hdr);
    h->n_tokens = static_cast<uint32_t>(n[r]);
  }
}

// Device regions equal to the host mirror's after an executor ran on both.
void expect_same(Group& g, int32_t slot, bool combine, const std::string& what) {
  for (int32_t r = 0; r < g.spec.world_size; ++r) {
    const RankLayout& l = g.layout.ranks[r];
    std::vector<uint8_t> d(g.host[r].size());
    ASSERT_EQ(cudaMemcpy(d.data(), g.dev[r]->device_ptr(), d.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    const auto regions = combine ? combine_regions(g.spec, l, slot) : dispatch_regions(l, slot);
    for (auto [b, e] : regions)
      ASSERT_EQ(first_difference(d.data(), g.host[r].data(), b, e, l, slot), "")
          << what << ": " << (combine ? "combine" : "dispatch") << " differs on rank " << r << ", slot " << slot;
  }
}

std::vector<int32_t> random_n(std::mt19937_64& rng, int32_t world, int32_t max_tokens) {
  std::vector<int32_t> n(static_cast<size_t>(world));
  for (auto& v : n) v = static_cast<int32_t>(rng() % static_cast<uint64_t>(max_tokens + 1));
  return n;
}

const cu::GpuDriver& driver_or_die() {
  auto d = cu::GpuDriver::get();
  if (!d) {
    std::fprintf(stderr, "%s\n", d.status().message().c_str());
    std::abort();
  }
  return *d.value();
}

std::vector<std::unique_ptr<GpuRankOps>> make_ops(const Group& g, const std::vector<uint8_t*>& bases) {
  std::vector<std::unique_ptr<GpuRankOps>> ops;
  for (int32_t r = 0; r < g.spec.world_size; ++r)
    ops.push_back(std::make_unique<GpuRankOps>(driver_or_die(), g.spec, r, bases[r]));
  return ops;
}

// ---- in process ---------------------------------------------------------------

void run_in_process(epd_layout_t layout, epd_mode_t mode, const std::vector<epd_weight_mode_t>& modes, uint64_t seed) {
  SCOPED_TRACE("seed=" + std::to_string(seed) + " layout=" + layout_name(layout) + " mode=" + mode_name(mode));
  std::mt19937_64 rng(seed);
  Group g(armed_spec(layout, mode, 264, 48, seed));
  ASSERT_TRUE(g.spec.validate().is_ok()) << g.spec.validate().message();
  g.poison(seed + 1);
  // Every row valid (full capacity), so any later count in [0, 48] reads staged routing.
  for (int32_t s = 0; s < 2; ++s)
    ASSERT_TRUE(g.stage(s, s == 0 ? Routing::kUniform : Routing::kSkewed, std::vector<int32_t>(8, 48), seed + 10 + s)
                    .is_ok());
  upload_all(g);
  // The copy path's caller buffers for slot 1: the staged rows, outside the workspace.
  std::vector<void*> cx(8), cids(8), cw(8);
  for (int32_t r = 0; r < 8; ++r) {
    const RankLayout& l = g.layout.ranks[r];
    const SlotOffsets& o = l.slot[1];
    const size_t M = 48, K = 4;
    CUDA_OK(cudaMalloc(&cx[r], M * l.in_row_bytes));
    CUDA_OK(cudaMalloc(&cids[r], M * K * 4));
    CUDA_OK(cudaMalloc(&cw[r], M * K * 4));
    CUDA_OK(cudaMemcpy(cx[r], g.host[r].data() + o.send_x, M * l.in_row_bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(cids[r], g.host[r].data() + o.send_ids, M * K * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(cw[r], g.host[r].data() + o.send_weights, M * K * 4, cudaMemcpyHostToDevice));
  }
  int32_t* n_dev = nullptr;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&n_dev), 8 * sizeof(int32_t)));

  auto armed = ArmedExecutor::create(g.spec, g.dev_bases(), 0, ArmedOptions{4, 20});
  ASSERT_TRUE(armed.is_ok()) << armed.status().message();
  ASSERT_TRUE((*armed)->start().is_ok());
  std::printf("%s\n", (*armed)->describe().c_str());
  // Behind armed waits each mode runs its own variant, as in process (the
  // low_latency dispatch is one ordinary launch: no fallback).
  const char* want = mode == EPD_MODE_LOW_LATENCY ? "low_latency" : "high_throughput";
  EXPECT_STREQ((*armed)->variant_name(), want);
  EXPECT_NE((*armed)->describe().find(std::string("variant ") + want), std::string::npos) << (*armed)->describe();
  auto ops = make_ops(g, g.dev_bases());
  cudaStream_t cs = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  HostExecutor hx(g.spec, g.host_bases());

  for (size_t round = 0; round < modes.size(); ++round)
    for (int32_t slot = 0; slot < 2; ++slot) {
      const std::vector<int32_t> n = random_n(rng, 8, 48);
      const std::string what = "round " + std::to_string(round) + " slot " + std::to_string(slot);
      set_host_n(g, slot, n);
      CUDA_OK(cudaMemcpy(n_dev, n.data(), 8 * sizeof(int32_t), cudaMemcpyHostToDevice));
      for (int32_t r = 0; r < 8; ++r) {
        GpuDispatchArgs a;
        if (slot == 1) {  // copy path, count from device memory, host bound = capacity
          a.x = cx[r];
          a.topk_ids = static_cast<const int32_t*>(cids[r]);
          a.topk_weights = static_cast<const float*>(cw[r]);
          a.n_tokens_device = n_dev + r;
          a.n_tokens_host = 48;
        } else {  // caller wrote into the send slot, count from the host
          a.n_tokens_host = n[r];
        }
        ASSERT_TRUE(ops[r]->dispatch(slot, a, cs).is_ok());
      }
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(slot, cs).is_ok());
      ASSERT_TRUE(sync_within(cs, kDeadlineMs)) << what << ": dispatch completion never came";
      ASSERT_TRUE(hx.dispatch(slot).is_ok());
      expect_same(g, slot, false, what);
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->query(slot).is_ok()) << ops[r]->query(slot).message();
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine(slot, modes[round], nullptr, 0, cs).is_ok());
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine_wait(slot, cs).is_ok());
      ASSERT_TRUE(sync_within(cs, kDeadlineMs)) << what << ": combine completion never came";
      ASSERT_TRUE(hx.combine(slot, modes[round]).is_ok());
      expect_same(g, slot, true, what + " weights=" + weight_mode_name(modes[round]));
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->query(slot).is_ok()) << ops[r]->query(slot).message();
    }

  // Call order is enforced on the client: combine without dispatch, a second dispatch.
  EXPECT_EQ(ops[0]->combine(0, modes[0], nullptr, 0, cs).code(), EPD_ERR_NO_DISPATCH);

  // A bad expert id: the completion carries EPD_ERR_EXPERT_ID_OUT_OF_RANGE naming
  // rank, token, k and value; the next call on the slot succeeds.
  {
    const RankLayout& l = g.layout.ranks[3];
    int32_t* ids = reinterpret_cast<int32_t*>(g.dev[3]->device_ptr() + l.slot[0].send_ids);
    int32_t good = 0;
    CUDA_OK(cudaMemcpy(&good, ids + 1 * 4 + 2, 4, cudaMemcpyDeviceToHost));
    const int32_t bad = 999;
    CUDA_OK(cudaMemcpy(ids + 1 * 4 + 2, &bad, 4, cudaMemcpyHostToDevice));
    for (int32_t r = 0; r < 8; ++r) {
      GpuDispatchArgs a;
      a.n_tokens_host = 5;
      ASSERT_TRUE(ops[r]->dispatch(0, a, cs).is_ok());
    }
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(0, cs).is_ok());
    ASSERT_TRUE(sync_within(cs, kDeadlineMs));
    const Status st = ops[5]->query(0);
    EXPECT_EQ(st.code(), EPD_ERR_EXPERT_ID_OUT_OF_RANGE) << st.message();
    EXPECT_NE(st.message().find("rank 3, token 1, k 2, value 999"), std::string::npos) << st.message();
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine(0, modes[0], nullptr, 0, cs).is_ok());
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine_wait(0, cs).is_ok());
    ASSERT_TRUE(sync_within(cs, kDeadlineMs));
    CUDA_OK(cudaMemcpy(ids + 1 * 4 + 2, &good, 4, cudaMemcpyHostToDevice));
    download_all(g);
    const std::vector<int32_t> n(8, 5);
    set_host_n(g, 0, n);
    HostExecutor hx2(g.spec, g.host_bases());
    for (int32_t r = 0; r < 8; ++r) {
      GpuDispatchArgs a;
      a.n_tokens_host = 5;
      ASSERT_TRUE(ops[r]->dispatch(0, a, cs).is_ok());
    }
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(0, cs).is_ok());
    ASSERT_TRUE(sync_within(cs, kDeadlineMs));
    for (int32_t r = 0; r < 8; ++r) EXPECT_TRUE(ops[r]->query(0).is_ok()) << ops[r]->query(0).message();
    ASSERT_TRUE(hx2.dispatch(0).is_ok());
    expect_same(g, 0, false, "after the bad id");
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine(0, modes[0], nullptr, 0, cs).is_ok());
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine_wait(0, cs).is_ok());
    ASSERT_TRUE(sync_within(cs, kDeadlineMs));
    ASSERT_TRUE(hx2.combine(0, modes[0]).is_ok());
    expect_same(g, 0, true, "after the bad id");
  }
  EXPECT_TRUE((*armed)->health().is_ok()) << (*armed)->health().message();
  EXPECT_TRUE((*armed)->abort(EPD_ERR_SHUTTING_DOWN, 5000).is_ok());
  CUDA_OK(cudaStreamDestroy(cs));
  for (int32_t r = 0; r < 8; ++r) {
    cudaFree(cx[r]);
    cudaFree(cids[r]);
    cudaFree(cw[r]);
  }
  cudaFree(n_dev);
}

// Line-buffered output so a failure is visible even if the process is then killed.
const bool kLineBuffered = (std::setvbuf(stdout, nullptr, _IOLBF, 0), true);

TEST(ArmedExecutor, InProcessRankMajorLowLatencyMatchesHost) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  run_in_process(EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, {EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES}, 11);
}

TEST(ArmedExecutor, InProcessExpertMajorHighThroughputAllWeightModesMatchHost) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  run_in_process(EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_HIGH_THROUGHPUT,
                 {EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ONES, EPD_WEIGHTS_APPLY}, 12);
}

// The one-launch low_latency dispatch and the combine that reads the weight
// mode on the device, switching modes between steps.
TEST(ArmedExecutor, InProcessExpertMajorLowLatencyAllWeightModesMatchHost) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  run_in_process(EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_LOW_LATENCY,
                 {EPD_WEIGHTS_ONES, EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ONES, EPD_WEIGHTS_APPLY}, 13);
}

// ---- graph capture and replay -----------------------------------------------------

TEST(ArmedExecutor, GraphOfTenPairsReplayedThousandTimesWithDeviceCounts) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  const uint64_t seed = 21;
  std::mt19937_64 rng(seed);
  constexpr int32_t M = 32, kReplays = 1000, kPairs = 10;
  Group g(armed_spec(EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, 128, M, seed));
  g.poison(seed + 1);
  for (int32_t s = 0; s < 2; ++s) ASSERT_TRUE(g.stage(s, Routing::kUniform, std::vector<int32_t>(8, M), seed + 5 + s).is_ok());
  upload_all(g);
  const auto prefix0 = rank_major_prefix_rows(g, 0), prefix1 = rank_major_prefix_rows(g, 1);

  // Allocations first: nothing that may synchronise the device runs while waits are armed.
  cudaStream_t cs = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  int32_t* n_dev = nullptr;
  int32_t* totals_dev = nullptr;  // [replay][slot][rank] recv_total after the replay
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&n_dev), 8 * sizeof(int32_t)));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&totals_dev), sizeof(int32_t) * kReplays * 2 * 8));
  int32_t* n_pinned = nullptr;  // [replay][rank]
  CUDA_OK(cudaMallocHost(reinterpret_cast<void**>(&n_pinned), sizeof(int32_t) * kReplays * 8));
  for (int i = 0; i < kReplays * 8; ++i) n_pinned[i] = static_cast<int32_t>(rng() % (M + 1));
  auto armed = ArmedExecutor::create(g.spec, g.dev_bases(), 0, ArmedOptions{32, 10});
  ASSERT_TRUE(armed.is_ok()) << armed.status().message();
  ASSERT_TRUE((*armed)->start().is_ok());
  auto ops = make_ops(g, g.dev_bases());

  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
  for (int p = 0; p < kPairs; ++p) {
    const int32_t slot = p % 2;
    for (int32_t r = 0; r < 8; ++r) {
      GpuDispatchArgs a;
      a.n_tokens_device = n_dev + r;
      a.n_tokens_host = M;
      ASSERT_TRUE(ops[r]->dispatch(slot, a, cs).is_ok());
    }
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(slot, cs).is_ok());
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine(slot, EPD_WEIGHTS_ONES, nullptr, 0, cs).is_ok());
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine_wait(slot, cs).is_ok());
  }
  CUDA_OK(cudaStreamEndCapture(cs, &graph));
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  int checked = 0;
  for (int i = 0; i < kReplays; ++i) {
    const bool full = i % 100 == 37;
    const std::vector<int32_t> n(n_pinned + i * 8, n_pinned + i * 8 + 8);
    if (full) {
      ASSERT_TRUE(sync_within(cs, kDeadlineMs)) << "replay " << i;
      download_all(g);
      set_host_n(g, 0, n);
      set_host_n(g, 1, n);
    }
    CUDA_OK(cudaMemcpyAsync(n_dev, n_pinned + i * 8, 8 * sizeof(int32_t), cudaMemcpyHostToDevice, cs));
    CUDA_OK(cudaGraphLaunch(exec, cs));
    for (int32_t s = 0; s < 2; ++s)
      for (int32_t r = 0; r < 8; ++r)
        CUDA_OK(cudaMemcpyAsync(totals_dev + (i * 2 + s) * 8 + r,
                                g.dev[r]->device_ptr() + g.layout.ranks[r].slot[s].recv_total, 4,
                                cudaMemcpyDeviceToDevice, cs));
    if (full) {
      ASSERT_TRUE(sync_within(cs, kDeadlineMs)) << "replay " << i;
      HostExecutor hx(g.spec, g.host_bases());
      const std::string what = "replay " + std::to_string(i);
      for (int32_t s = 0; s < 2; ++s) {
        ASSERT_TRUE(hx.dispatch(s).is_ok());
        ASSERT_TRUE(hx.combine(s, EPD_WEIGHTS_ONES).is_ok());
        expect_same(g, s, false, what);
        expect_same(g, s, true, what);
      }
      for (int32_t r = 0; r < 8; ++r)
        for (int32_t s = 0; s < 2; ++s) ASSERT_TRUE(ops[r]->query(s).is_ok()) << ops[r]->query(s).message();
      ++checked;
    }
  }
  ASSERT_TRUE(sync_within(cs, 60000)) << "graph replays did not finish";
  std::vector<int32_t> totals(static_cast<size_t>(kReplays) * 2 * 8);
  CUDA_OK(cudaMemcpy(totals.data(), totals_dev, totals.size() * 4, cudaMemcpyDeviceToHost));
  int mismatches = 0;
  for (int i = 0; i < kReplays; ++i)
    for (int32_t s = 0; s < 2; ++s)
      for (int32_t d = 0; d < 8; ++d) {
        const auto& pre = s == 0 ? prefix0 : prefix1;
        int32_t want = 0;
        for (int32_t src = 0; src < 8; ++src) want += pre[src][n_pinned[i * 8 + src]][d];
        if (totals[(i * 2 + s) * 8 + d] != want && mismatches++ < 5)
          ADD_FAILURE() << "replay " << i << " slot " << s << " rank " << d << ": recv_total "
                        << totals[(i * 2 + s) * 8 + d] << ", expected " << want;
      }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(checked, 10);
  EXPECT_EQ((*armed)->completed(0), static_cast<uint64_t>(kReplays) * (kPairs / 2) * 2);
  EXPECT_EQ((*armed)->completed(1), static_cast<uint64_t>(kReplays) * (kPairs / 2) * 2);
  EXPECT_TRUE((*armed)->health().is_ok()) << (*armed)->health().message();
  EXPECT_TRUE((*armed)->abort(EPD_ERR_SHUTTING_DOWN, 5000).is_ok());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(cs);
  cudaFree(n_dev);
  cudaFree(totals_dev);
  cudaFreeHost(n_pinned);
}

// ---- two processes ----------------------------------------------------------------

// What the daemon role tells a client role (followed by world_size fds).
struct ClientOrder {
  uint64_t seed;
  int32_t layout, mode, hidden, max_tokens;
  int32_t behaviour;       // 0: run `iterations` pairs on both slots; 1: arm waits that never complete, then block
  int32_t iterations;
  int32_t weight_mode;
  int32_t n[8];
  uint64_t mapped_bytes[8];
};
struct ClientReport {
  int32_t ok;              // 1 when every call enqueued and every query was OK
  int32_t status[8][2];    // query() per rank and slot
  char message[256];
};

// The client role: runs only in a process spawned by the daemon role.
TEST(ArmedClientRole, Run) {
  const int sock = client_role_fd();
  if (sock < 0) GTEST_SKIP() << "client role of the two-process tests (spawned by them)";
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  ClientOrder o{};
  std::vector<int> fds;
  ASSERT_TRUE(recv_msg(sock, &o, sizeof o, kDeadlineMs, &fds));
  ASSERT_EQ(fds.size(), 8u);
  const GroupSpec spec = armed_spec(static_cast<epd_layout_t>(o.layout), static_cast<epd_mode_t>(o.mode), o.hidden,
                                    o.max_tokens, o.seed);
  auto drv = cu::GpuDriver::get();
  ASSERT_TRUE(drv.is_ok()) << drv.status().message();
  std::vector<std::unique_ptr<GpuWorkspaceMapping>> maps;
  std::vector<std::unique_ptr<GpuRankOps>> ops;
  for (int32_t r = 0; r < 8; ++r) {
    auto m = GpuWorkspaceMapping::import(**drv, fds[r], o.mapped_bytes[r], 0);
    ASSERT_TRUE(m.is_ok()) << m.status().message();
    ::close(fds[r]);
    ops.push_back(std::make_unique<GpuRankOps>(**drv, spec, r, (*m)->base()));
    maps.push_back(std::move(m.value()));
  }
  cu::CUstream st = nullptr;
  ASSERT_EQ((*drv)->stream_create(&st, cu::CU_STREAM_NON_BLOCKING), 0);
  ClientReport rep{};
  rep.ok = 1;
  const auto mode = static_cast<epd_weight_mode_t>(o.weight_mode);
  if (o.behaviour == 1) {
    // Dispatch completes; the combine of rank 7 is never rung, so the daemon's
    // armed combine waits forever and so does this stream.
    for (int32_t r = 0; r < 8; ++r) {
      GpuDispatchArgs a;
      a.n_tokens_host = o.n[r];
      ASSERT_TRUE(ops[r]->dispatch(0, a, st).is_ok());
    }
    for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(0, st).is_ok());
    for (int32_t r = 0; r < 7; ++r) ASSERT_TRUE(ops[r]->combine(0, mode, nullptr, 0, st).is_ok());
    for (int32_t r = 0; r < 7; ++r) ASSERT_TRUE(ops[r]->combine_wait(0, st).is_ok());
    ASSERT_TRUE(send_msg(sock, &rep, sizeof rep));
    char c;
    if (::read(sock, &c, 1) < 0) std::perror("read");  // blocks until SIGKILL
    return;
  }
  for (int it = 0; it < o.iterations; ++it)
    for (int32_t slot = 0; slot < 2; ++slot) {
      for (int32_t r = 0; r < 8; ++r) {
        GpuDispatchArgs a;
        a.n_tokens_host = o.n[r];
        ASSERT_TRUE(ops[r]->dispatch(slot, a, st).is_ok());
      }
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(slot, st).is_ok());
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine(slot, mode, nullptr, 0, st).is_ok());
      for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->combine_wait(slot, st).is_ok());
    }
  ASSERT_EQ((*drv)->stream_synchronize(st), 0);
  for (int32_t r = 0; r < 8; ++r)
    for (int32_t s = 0; s < 2; ++s) {
      const Status q = ops[r]->query(s);
      rep.status[r][s] = q.code();
      if (!q) {
        rep.ok = 0;
        std::snprintf(rep.message, sizeof rep.message, "%s", q.message().c_str());
      }
    }
  ASSERT_TRUE(send_msg(sock, &rep, sizeof rep));
}

struct DaemonRole {
  Group g;
  std::unique_ptr<ArmedExecutor> armed;
  ClientOrder order{};

  DaemonRole(epd_layout_t layout, epd_mode_t mode, uint64_t seed)
      : g(armed_spec(layout, mode, 200, 40, seed)) {
    order.seed = seed;
    order.layout = layout;
    order.mode = mode;
    order.hidden = 200;
    order.max_tokens = 40;
    order.weight_mode = layout == EPD_LAYOUT_RANK_MAJOR ? EPD_WEIGHTS_ALREADY_APPLIED : EPD_WEIGHTS_APPLY;
  }
  void setup() {
    std::mt19937_64 rng(order.seed);
    g.poison(order.seed + 1);
    const std::vector<int32_t> n = random_n(rng, 8, 40);
    for (int32_t r = 0; r < 8; ++r) order.n[r] = n[r];
    for (int32_t s = 0; s < 2; ++s) ASSERT_TRUE(g.stage(s, Routing::kSkewed, n, order.seed + 3 + s).is_ok());
    upload_all(g);
    for (int32_t r = 0; r < 8; ++r) order.mapped_bytes[r] = g.dev[r]->mapped_bytes();
    auto a = ArmedExecutor::create(g.spec, g.dev_bases(), 0, ArmedOptions{4, 20});
    ASSERT_TRUE(a.is_ok()) << a.status().message();
    armed = std::move(a.value());
    ASSERT_TRUE(armed->start().is_ok());
  }
  // Spawns a client role with `behaviour`; returns its pid and socket.
  pid_t spawn(int32_t behaviour, int32_t iterations, int* sock) {
    order.behaviour = behaviour;
    order.iterations = iterations;
    const pid_t pid = spawn_self({"--gtest_filter=ArmedClientRole.Run"}, sock);
    if (pid < 0) return pid;
    std::vector<int> fds;
    for (auto& d : g.dev) {
      auto fd = d->export_fd();
      if (!fd) return -1;
      fds.push_back(*fd);
    }
    const bool sent = send_msg(*sock, &order, sizeof order, fds);
    for (int fd : fds) ::close(fd);
    return sent ? pid : -1;
  }
  // A normal client run, then the outputs checked against the host executor.
  void run_and_verify(const std::string& what) {
    download_all(g);
    for (int32_t s = 0; s < 2; ++s) set_host_n(g, s, std::vector<int32_t>(order.n, order.n + 8));
    int sock = -1;
    const pid_t pid = spawn(0, 3, &sock);
    ASSERT_GT(pid, 0);
    ClientReport rep{};
    const bool got = recv_msg(sock, &rep, sizeof rep, kDeadlineMs);
    const int st = reap(pid, kDeadlineMs);
    ::close(sock);
    ASSERT_TRUE(got) << what << ": no report from the client process";
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << what << ": client exit status " << st;
    ASSERT_EQ(rep.ok, 1) << what << ": " << rep.message;
    HostExecutor hx(g.spec, g.host_bases());
    const auto mode = static_cast<epd_weight_mode_t>(order.weight_mode);
    for (int32_t s = 0; s < 2; ++s) {
      ASSERT_TRUE(hx.dispatch(s).is_ok());
      ASSERT_TRUE(hx.combine(s, mode).is_ok());
      expect_same(g, s, false, what);
      expect_same(g, s, true, what);
    }
  }
};

TEST(ArmedExecutor, ClientInAnotherProcessImportsWorkspacesAndMatchesHost) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  for (epd_layout_t layout : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    DaemonRole d(layout, EPD_MODE_LOW_LATENCY, 31 + layout);
    d.setup();
    if (HasFatalFailure()) return;
    d.run_and_verify(std::string("two processes, ") + layout_name(layout));
    if (HasFatalFailure()) return;
    EXPECT_TRUE(d.armed->health().is_ok()) << d.armed->health().message();
  }
}

TEST(ArmedExecutor, KilledClientWithArmedWaitsIsAbortedAndANewClientContinues) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  DaemonRole d(EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, 41);
  d.setup();
  if (HasFatalFailure()) return;
  int sock = -1;
  const pid_t pid = d.spawn(1, 0, &sock);
  ASSERT_GT(pid, 0);
  ClientReport rep{};
  ASSERT_TRUE(recv_msg(sock, &rep, sizeof rep, kDeadlineMs)) << "the client never armed its waits";
  // The dispatch completes; the daemon's combine on slot 0 stays armed, waiting for rank 7's doorbell.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kDeadlineMs);
  while (d.armed->completed(0) < 1 && std::chrono::steady_clock::now() < until) {
  }
  ASSERT_EQ(d.armed->completed(0), 1u);  // the dispatch only
  ::kill(pid, SIGKILL);
  ASSERT_NE(reap(pid, kDeadlineMs), -1);
  ::close(sock);

  const uint32_t deadline_ms = 2000;
  const auto t0 = std::chrono::steady_clock::now();
  const Status ab = d.armed->abort(EPD_ERR_PEER_LOST, deadline_ms);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(ab.is_ok()) << ab.message();
  EXPECT_LT(ms, deadline_ms);
  std::printf("abort drained %llu + %llu armed operations in %.3f ms\n",
              static_cast<unsigned long long>(d.armed->completed(0)),
              static_cast<unsigned long long>(d.armed->completed(1)), ms);
  for (int32_t r = 0; r < 8; ++r) {
    ControlSlot cs{};
    CUDA_OK(cudaMemcpy(&cs, d.g.dev[r]->device_ptr() + offsetof(ControlBlock, slot), sizeof cs, cudaMemcpyDeviceToHost));
    EXPECT_EQ(completion_status(cs.completion), EPD_ERR_PEER_LOST) << "rank " << r << " completion " << cs.completion;
    EXPECT_TRUE(cs.completion & kArmedAbortBit) << "rank " << r;
  }
  // A client of the aborted generation sees PEER_LOST from its query.
  {
    auto drv = cu::GpuDriver::get();
    ASSERT_TRUE(drv.is_ok());
    GpuRankOps ops(**drv, d.g.spec, 2, d.g.dev[2]->device_ptr());
    EXPECT_EQ(ops.query(0).code(), EPD_ERR_PEER_LOST) << ops.query(0).message();
  }
  ASSERT_TRUE(d.armed->reset().is_ok());
  d.run_and_verify("a new client after the abort");
  EXPECT_TRUE(d.armed->health().is_ok()) << d.armed->health().message();
}

// The daemon creates and destroys groups while other groups on the same GPU
// have waits armed: neither may wait for the device to go idle (it never does).
TEST(ArmedExecutor, SecondGroupCreatedAndDestroyedWhileFirstIsArmed) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  DaemonRole first(EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, 51);
  first.setup();
  if (HasFatalFailure()) return;
  Group g2(armed_spec(EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_HIGH_THROUGHPUT, 128, 16, 52));
  g2.poison(53);
  std::atomic<int> stage{0};
  std::string error;
  std::thread worker([&] {
    auto ws = allocate_gpu_workspaces(g2.spec, 0);
    if (!ws) {
      error = ws.status().message();
      stage = -1;
      return;
    }
    stage = 1;  // allocated
    std::vector<uint8_t*> bases;
    for (auto& w : *ws) bases.push_back(w->device_ptr());
    {
      auto a = ArmedExecutor::create(g2.spec, bases, 0, ArmedOptions{2, 20});
      if (!a) {
        error = a.status().message();
        stage = -1;
        return;
      }
      stage = 2;  // created
      if (Status st = (*a)->start(); !st) error = st.message();
    }
    ws.value().clear();  // workspaces unmapped and released
    stage = 3;  // destroyed (its own streams aborted and drained)
  });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (stage.load() >= 0 && stage.load() < 3 && std::chrono::steady_clock::now() < until) ::poll(nullptr, 0, 1);
  const int reached = stage.load();
  if (reached != 3 && reached >= 0) (void)first.armed->abort(EPD_ERR_SHUTTING_DOWN, 5000);  // unblocks the worker
  worker.join();
  EXPECT_EQ(reached, 3) << "stage " << reached
                        << " (0: allocating, 1: creating, 2: destroying executor or workspaces) blocked while another group's waits were "
                           "armed on the same GPU " << error;
  EXPECT_EQ(error, "");
}

// A rank that never rings while the others did: after the group's timeout the
// executor aborts itself with EPD_ERR_TIMEOUT naming the late rank, every
// waiting stream is released, and after reset() the group runs again.
TEST(ArmedExecutor, LateRankTimesOutNamingItAndReleasesTheOthers) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  Group g(armed_spec(EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, 128, 16, 61));
  g.spec.timeout_ms = 400;
  g.poison(62);
  ASSERT_TRUE(g.stage(0, Routing::kUniform, std::vector<int32_t>(8, 16), 63).is_ok());
  upload_all(g);
  if (HasFatalFailure()) return;
  auto armed = ArmedExecutor::create(g.spec, g.dev_bases(), 0, ArmedOptions{2, 20});
  ASSERT_TRUE(armed.is_ok()) << armed.status().message();
  ASSERT_TRUE((*armed)->start().is_ok());
  auto ops = make_ops(g, g.dev_bases());
  cudaStream_t cs = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t r = 0; r < 7; ++r) {  // rank 7 stays silent
    GpuDispatchArgs a;
    a.n_tokens_host = 16;
    ASSERT_TRUE(ops[r]->dispatch(0, a, cs).is_ok());
  }
  for (int32_t r = 0; r < 7; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(0, cs).is_ok());
  ASSERT_TRUE(sync_within(cs, kDeadlineMs)) << "the waiting ranks' stream was never released";
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(ms, 400.0);
  EXPECT_LT(ms, 400.0 + 2000.0);
  const Status q = ops[0]->query(0);
  EXPECT_EQ(q.code(), EPD_ERR_TIMEOUT) << q.message();
  const Status h = (*armed)->health();
  EXPECT_EQ(h.code(), EPD_ERR_TIMEOUT);
  EXPECT_NE(h.message().find("rank 7 did not ring"), std::string::npos) << h.message();
  std::printf("late rank released after %.1f ms: %s\n", ms, h.message().c_str());
  // Drained: reset and a full verified step.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kDeadlineMs);
  while (!(*armed)->drained() && std::chrono::steady_clock::now() < until) ::poll(nullptr, 0, 1);
  ASSERT_TRUE((*armed)->drained());
  ASSERT_TRUE((*armed)->reset().is_ok());
  for (auto& o : ops) o->reset_slots();
  download_all(g);
  set_host_n(g, 0, std::vector<int32_t>(8, 16));
  HostExecutor hx(g.spec, g.host_bases());
  for (int32_t r = 0; r < 8; ++r) {
    GpuDispatchArgs a;
    a.n_tokens_host = 16;
    ASSERT_TRUE(ops[r]->dispatch(0, a, cs).is_ok());
  }
  for (int32_t r = 0; r < 8; ++r) ASSERT_TRUE(ops[r]->dispatch_wait(0, cs).is_ok());
  ASSERT_TRUE(sync_within(cs, kDeadlineMs));
  for (int32_t r = 0; r < 8; ++r) EXPECT_TRUE(ops[r]->query(0).is_ok()) << ops[r]->query(0).message();
  ASSERT_TRUE(hx.dispatch(0).is_ok());
  expect_same(g, 0, false, "after the late-rank reset");
  EXPECT_TRUE((*armed)->abort(EPD_ERR_SHUTTING_DOWN, 5000).is_ok());
  CUDA_OK(cudaStreamDestroy(cs));
}

TEST(ArmedExecutor, MpsDetectionDescribesItself) {
  SKIP_WITHOUT_GPU();
  const Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name(), 120);
  const MpsState m = detect_mps(0);
  std::printf("%s\n", m.description.c_str());
  EXPECT_FALSE(m.description.empty());
  EXPECT_NE(m.description.find("MPS"), std::string::npos);
}

}  // namespace
}  // namespace epd::test
