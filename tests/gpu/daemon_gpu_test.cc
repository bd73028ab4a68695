// daemon_gpu_test.cc — GPU groups through the real epd and libepd-client: 8
// ranks spread over this node's GPUs (all visible ones up to 8, contiguous
// runs: 8 on one GPU, 4 per GPU on two, one per GPU on eight; EPD_TEST_GPUS=N
// uses only the first N) held by this process (8 sessions, one CUDA stream each
// on its rank's GPU)
// against HostExecutor run in process on the same inputs (both layouts, bf16
// and fp8 dispatch, every valid weight mode, skewed / masked / one-expert
// routing, 0 tokens, full capacity, in-place and copied inputs and outputs,
// token counts from device memory); 8 CUDA graphs of 10 dispatch/combine
// pairs replayed 1000 times with device-side counts; a bad expert id reported
// by epd_group_gpu_status and the next call clean; and a rank in a child process
// SIGKILLed mid-step: PEER_LOST within the group's timeout, the daemon stays
// up, every rank re-joins and a verified step runs.
//
// Device regions are compared byte for byte with the host mirror (combine
// too: both sum in a fixed order). Every wait has a deadline; the fixture's
// watchdog ends the daemon and children by pid. Skipped (exit 77) without a
// GPU or driver, or when the daemon does not advertise EPD_CAP_GPU_EXECUTOR.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "daemon_ranks.h"
#include "epctl_query.h"
#include "epd/epd.h"
#include "gpu_armed.h"

namespace epd::test {
namespace {

// Before CUDA initialises: enough hardware queues that one stream's armed wait
// never stalls another rank's stream behind it, and eager module loading.
const bool kEnvPrepared = (armed_prepare_environment(), true);

constexpr int32_t kWorld = 8;
constexpr const char* kWorkerEnv = "EPD_DAEMON_GPU_WORKER";

// GPUs the ranks spread over: every visible one (at most 8), or EPD_TEST_GPUS.
int32_t test_gpus() {
  static const int32_t n = [] {
    auto count = gpu_device_count();
    int32_t g = count ? std::min<int32_t>(*count, kWorld) : 1;
    if (const char* e = std::getenv("EPD_TEST_GPUS"); e && std::atoi(e) > 0) g = std::min(g, std::atoi(e));
    while (kWorld % g) --g;  // whole runs of ranks per GPU
    return g;
  }();
  return n;
}
int32_t device_of(int32_t rank) { return rank * test_gpus() / kWorld; }

GroupSpec gpu_spec(const char* name, epd_layout_t layout, epd_mode_t mode, epd_quant_t quant, int32_t hidden,
                   int32_t max_tokens, uint32_t timeout_ms, uint64_t seed,
                   epd_executor_t executor = EPD_EXECUTOR_DAEMON) {
  GroupSpec s = make_spec(kWorld, 64, 4, hidden, max_tokens, EPD_DTYPE_BF16, quant, layout, mode,
                          /*shuffled_owner=*/true, seed);
  s.name = name;
  s.generation = 1;
  s.timeout_ms = timeout_ms;
  s.executor = executor;
  for (int32_t r = 0; r < kWorld; ++r) s.placement[static_cast<size_t>(r)] = epd_placement_t{0, device_of(r)};
  return s;
}

// The executors a test runs its groups with: the daemon's armed streams, and
// the inline executor when every rank is on one GPU (its only placement).
std::vector<epd_executor_t> test_executors() {
  if (test_gpus() == 1) return {EPD_EXECUTOR_DAEMON, EPD_EXECUTOR_INLINE};
  return {EPD_EXECUTOR_DAEMON};
}
const char* executor_tag(epd_executor_t e) { return e == EPD_EXECUTOR_INLINE ? "inline" : "daemon"; }
constexpr const char* kWorkerExecutorEnv = "EPD_DAEMON_GPU_WORKER_EXECUTOR";

// The group of the SIGKILL case; the worker role builds the same spec.
GroupSpec kill_spec(epd_executor_t executor) {
  return gpu_spec(executor == EPD_EXECUTOR_INLINE ? "killed-inline" : "killed", EPD_LAYOUT_RANK_MAJOR,
                  EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 128, 16, 3000, 61, executor);
}

class DaemonGpuTest : public DaemonTest {
 protected:
  int deadline_s() const override { return 300; }

  void SetUp() override {
    auto count = gpu_device_count();
    if (!count) GTEST_SKIP() << count.status().message();
    DaemonTest::SetUp();
    if (HasFatalFailure()) return;
    const epd_client_info_t info = query_daemon(socket());
    ASSERT_FALSE(HasFailure()) << "epd did not answer a new session";
    if (!(info.capabilities & EPD_CAP_GPU_EXECUTOR))
      GTEST_SKIP() << "the daemon does not advertise EPD_CAP_GPU_EXECUTOR (capabilities 0x" << std::hex
                   << info.capabilities << ")";
    open_gpu_contexts(test_gpus());
    if (HasFatalFailure()) return;
    std::printf("ranks over %d GPU(s)\n", test_gpus());
    gpu_ready_ = true;
  }

  void TearDown() override {
    if (gpu_ready_) {
      // cudaFreeHost synchronises too: only when nothing of ours is still waiting.
      if (ranks_.release() && pinned_) cudaFreeHost(pinned_);
      pinned_ = nullptr;
    }
    DaemonTest::TearDown();
  }

  // 8 sessions to the one epd, 8 streams on the ranks' GPUs.
  void connect_all() { ranks_.connect([this](int32_t) { return socket(); }); }
  void graphs_replayed(epd_executor_t executor);
  void killed_rank(epd_executor_t executor);
  // Every rank's dispatch of the n tokens already in its send views, on
  // `slot`, then every rank's dispatch_wait.
  void dispatch_all_in_place(int32_t slot, int32_t n) {
    for (int32_t r = 0; r < kWorld; ++r) {
      epd_gpu_dispatch_args_t a{};
      a.struct_size = sizeof a;
      a.n_tokens = n;
      ASSERT_EQ(epd_group_dispatch_async(ranks_.group(r), slot, &a, ranks_.stream(r)), EPD_OK)
          << epd_group_last_error(ranks_.group(r));
    }
    for (int32_t r = 0; r < kWorld; ++r)
      ASSERT_EQ(epd_group_dispatch_wait_async(ranks_.group(r), slot, ranks_.stream(r)), EPD_OK);
  }

  bool gpu_ready_ = false;
  DaemonRanks ranks_{kWorld, device_of};
  void* pinned_ = nullptr;  // host pinned, test-specific
};

// ---- a: eight ranks, every layout / dtype / weight mode ---------------------------------------

TEST_F(DaemonGpuTest, EightRanksMatchHostExecutorAcrossLayoutsDtypesAndWeightModes) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  connect_all();
  if (HasFatalFailure()) return;
  struct Case {
    const char* name;
    epd_layout_t layout;
    epd_mode_t mode;
    epd_quant_t quant;
    int32_t hidden;
  };
  const Case cases[] = {
      {"rm_bf16", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 264},
      {"rm_fp8", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_HIGH_THROUGHPUT, EPD_QUANT_FP8_E4M3_BLOCK128, 256},
      {"em_bf16", EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_HIGH_THROUGHPUT, EPD_QUANT_NONE, 264},
      {"em_fp8", EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_FP8_E4M3_BLOCK128, 256},
  };
  constexpr int32_t M = 48;
  for (const epd_executor_t executor : test_executors())
  for (size_t ci = 0; ci < std::size(cases); ++ci) {
    const Case& c = cases[ci];
    const uint64_t cseed = seed * 131 + ci;
    SCOPED_TRACE(std::string("executor ") + executor_tag(executor));
    const std::string name = std::string(c.name) + "-" + executor_tag(executor);
    const GroupSpec spec = gpu_spec(name.c_str(), c.layout, c.mode, c.quant, c.hidden, M, 5000, cseed, executor);
    ASSERT_TRUE(spec.validate().is_ok()) << spec.validate().message();
    ranks_.join_all(spec);
    if (HasFatalFailure()) return;
    Group m(spec);
    m.poison(cseed + 1);
    ranks_.alloc_buffers(m);
    if (HasFatalFailure()) return;
    std::mt19937_64 rng(cseed + 2);
    const std::vector<epd_weight_mode_t> modes =
        c.layout == EPD_LAYOUT_RANK_MAJOR
            ? std::vector<epd_weight_mode_t>{EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES}
            : std::vector<epd_weight_mode_t>{EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES};
    struct Round {
      Routing routing;
      std::vector<int32_t> n;
      Step step;
    };
    std::vector<int32_t> mixed = random_n(rng, kWorld, M);
    mixed[0] = 0;
    mixed[1] = M;
    const Round rounds[] = {
        {Routing::kUniform, random_n(rng, kWorld, M), Step{0}},
        {Routing::kSkewed, std::vector<int32_t>(kWorld, M), Step{1, {}, true, false, false, true}},   // full capacity
        {Routing::kUniform, std::vector<int32_t>(kWorld, 0), Step{0}},                              // 0 tokens
        {Routing::kMasked, mixed, Step{1, {}, true, true, true, false}},                            // -1 masking
        {Routing::kOneExpert, random_n(rng, kWorld, M), Step{0, {}, false, false, false, true}},
        {Routing::kSkewed, random_n(rng, kWorld, M), Step{1, {}, true, false, true, false}},
    };
    for (size_t ri = 0; ri < std::size(rounds); ++ri) {
      Step st = rounds[ri].step;
      st.mode = modes[ri % modes.size()];
      const std::string what = name + " round " + std::to_string(ri) + " (" +
                               routing_name(rounds[ri].routing) + ")";
      const Status staged = m.stage(st.slot, rounds[ri].routing, rounds[ri].n, cseed + 10 + ri);
      ASSERT_TRUE(staged.is_ok()) << staged.message();
      ranks_.run_step(m, st, what);
      if (HasFatalFailure()) return;
    }
    ranks_.leave_all();
  }
}

// ---- b: CUDA graphs replayed with device-side counts ---------------------------------------

TEST_F(DaemonGpuTest, GraphsOfTenPairsPerRankReplayedThousandTimesWithDeviceCounts) {
  graphs_replayed(EPD_EXECUTOR_DAEMON);
}

// Eight inline ranks, a graph per rank: the cross-rank barriers inside the
// launches take their targets from device-side counts, so replays meet.
TEST_F(DaemonGpuTest, InlineGraphsOfTenPairsPerRankReplayedThousandTimesWithDeviceCounts) {
  if (test_gpus() != 1) GTEST_SKIP() << "the inline executor needs every rank on one GPU (EPD_TEST_GPUS=1)";
  graphs_replayed(EPD_EXECUTOR_INLINE);
}

void DaemonGpuTest::graphs_replayed(epd_executor_t executor) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", executor " + executor_tag(executor));
  constexpr int32_t M = 32, kReplays = 1000, kPairs = 10;
  const GroupSpec spec = gpu_spec(executor == EPD_EXECUTOR_INLINE ? "graph-inline" : "graph", EPD_LAYOUT_RANK_MAJOR,
                                  EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 128, M, 5000, seed, executor);
  connect_all();
  if (HasFatalFailure()) return;
  ranks_.join_all(spec);
  if (HasFatalFailure()) return;
  Group m(spec);
  m.poison(seed + 1);
  for (int32_t s = 0; s < 2; ++s)
    ASSERT_TRUE(m.stage(s, Routing::kUniform, std::vector<int32_t>(kWorld, M), seed + 5 + s).is_ok());
  ranks_.upload(m, 0);
  ranks_.upload(m, 1);
  const auto prefix0 = rank_major_prefix_rows(m, 0), prefix1 = rank_major_prefix_rows(m, 1);

  // Allocations before anything waits.
  ranks_.alloc_buffers(m);
  int32_t* totals_pinned = nullptr;  // [replay][slot][rank], written by each rank's stream
  int32_t* n_pinned = nullptr;       // [replay][rank]
  CUDA_OK(cudaMallocHost(reinterpret_cast<void**>(&n_pinned),
                         sizeof(int32_t) * (kReplays * kWorld + kReplays * 2 * kWorld)));
  pinned_ = n_pinned;
  totals_pinned = n_pinned + kReplays * kWorld;
  std::mt19937_64 rng(seed + 9);
  for (int i = 0; i < kReplays * kWorld; ++i) n_pinned[i] = static_cast<int32_t>(rng() % (M + 1));

  // One graph per rank, each captured on the rank's own stream: what 8 workers would do.
  std::vector<cudaGraph_t> graphs(kWorld, nullptr);
  std::vector<cudaGraphExec_t> execs(kWorld, nullptr);
  for (int32_t r = 0; r < kWorld; ++r) {
    epd_group_t* g = ranks_.group(r);
    cudaStream_t st = ranks_.stream(r);
    ranks_.on(r);
    CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int p = 0; p < kPairs; ++p) {
      const int32_t slot = p % 2;
      epd_gpu_dispatch_args_t a{};
      a.struct_size = sizeof a;
      a.n_tokens_device = ranks_.n_device(r);
      a.n_tokens = M;
      ASSERT_EQ(epd_group_dispatch_async(g, slot, &a, st), EPD_OK) << epd_group_last_error(g);
      ASSERT_EQ(epd_group_dispatch_wait_async(g, slot, st), EPD_OK) << epd_group_last_error(g);
      ASSERT_EQ(epd_group_combine_async(g, slot, EPD_WEIGHTS_ONES, nullptr, 0, st), EPD_OK) << epd_group_last_error(g);
      ASSERT_EQ(epd_group_combine_wait_async(g, slot, st), EPD_OK) << epd_group_last_error(g);
    }
    CUDA_OK(cudaStreamEndCapture(st, &graphs[r]));
    CUDA_OK(cudaGraphInstantiate(&execs[r], graphs[r], 0));
  }

  int checked = 0;
  for (int i = 0; i < kReplays; ++i) {
    const bool full = i % 100 == 37;
    if (full) {  // the mirror starts from the device's bytes and this replay's counts
      ranks_.sync_all("before replay " + std::to_string(i));
      if (HasFatalFailure()) return;
      ranks_.download(m, 0);
      ranks_.download(m, 1);
      for (int32_t r = 0; r < kWorld; ++r)
        for (int32_t s = 0; s < 2; ++s)
          reinterpret_cast<SendHeader*>(m.host[r].data() + m.layout.ranks[r].slot[s].send_hdr)->n_tokens =
              static_cast<uint32_t>(n_pinned[i * kWorld + r]);
    }
    for (int32_t r = 0; r < kWorld; ++r) {
      cudaStream_t st = ranks_.stream(r);
      ranks_.on(r);
      CUDA_OK(cudaMemcpyAsync(ranks_.n_device(r), n_pinned + i * kWorld + r, sizeof(int32_t),
                              cudaMemcpyHostToDevice, st));
      CUDA_OK(cudaGraphLaunch(execs[r], st));
      for (int32_t s = 0; s < 2; ++s)
        CUDA_OK(cudaMemcpyAsync(totals_pinned + (i * 2 + s) * kWorld + r, ranks_.views(r, s).recv_total,
                                sizeof(int32_t), cudaMemcpyDeviceToHost, st));
    }
    CUDA_OK(cudaSetDevice(0));
    if (full) {
      ranks_.sync_all("replay " + std::to_string(i));
      if (HasFatalFailure()) return;
      HostExecutor hx(m.spec, m.host_bases());
      const std::string what = "replay " + std::to_string(i);
      for (int32_t s = 0; s < 2; ++s) {
        ASSERT_TRUE(hx.dispatch(s).is_ok());
        ASSERT_TRUE(hx.combine(s, EPD_WEIGHTS_ONES).is_ok());
        ranks_.expect_same(m, s, false, what);
        ranks_.expect_same(m, s, true, what);
        ranks_.expect_status_ok(s, what);
        if (HasFatalFailure()) return;
      }
      ++checked;
    }
  }
  for (int32_t r = 0; r < kWorld; ++r)
    ASSERT_TRUE(sync_within(ranks_.stream(r), 60000)) << "the replays of rank " << r << " did not finish";
  const int32_t* totals = totals_pinned;  // every stream has drained
  int mismatches = 0;
  for (int i = 0; i < kReplays; ++i)
    for (int32_t s = 0; s < 2; ++s)
      for (int32_t d = 0; d < kWorld; ++d) {
        const auto& pre = s == 0 ? prefix0 : prefix1;
        int32_t want = 0;
        for (int32_t src = 0; src < kWorld; ++src) want += pre[src][n_pinned[i * kWorld + src]][d];
        if (totals[(i * 2 + s) * kWorld + d] != want && mismatches++ < 5)
          ADD_FAILURE() << "replay " << i << " slot " << s << " rank " << d << ": recv_total "
                        << totals[(i * 2 + s) * kWorld + d] << ", expected " << want;
      }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(checked, 10);
  for (int32_t s = 0; s < 2; ++s) ranks_.expect_status_ok(s, "after the replays");
  for (int32_t r = 0; r < kWorld; ++r) {
    cudaGraphExecDestroy(execs[r]);
    cudaGraphDestroy(graphs[r]);
  }
  ranks_.leave_all();
}

// ---- c: a bad expert id ---------------------------------------------------------------------

TEST_F(DaemonGpuTest, BadExpertIdIsReportedByGpuStatusAndTheNextCallSucceeds) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const GroupSpec spec = gpu_spec("badid", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 128, 16, 5000, seed);
  connect_all();
  if (HasFatalFailure()) return;
  ranks_.join_all(spec);
  if (HasFatalFailure()) return;
  Group m(spec);
  m.poison(seed + 1);
  ASSERT_TRUE(m.stage(0, Routing::kUniform, std::vector<int32_t>(kWorld, 5), seed + 2).is_ok());
  ranks_.upload(m, 0);
  const int32_t K = spec.top_k, bad = 999;
  ranks_.on(3);
  CUDA_OK(cudaMemcpy(ranks_.base(3) + m.layout.ranks[3].slot[0].send_ids + (1 * K + 2) * sizeof(int32_t), &bad,
                     sizeof bad, cudaMemcpyHostToDevice));
  dispatch_all_in_place(0, 5);
  if (HasFatalFailure()) return;
  for (int32_t r = 0; r < kWorld; ++r) {
    EXPECT_EQ(epd_group_gpu_status(ranks_.group(r), 0, kDeadlineMs), EPD_ERR_EXPERT_ID_OUT_OF_RANGE) << "rank " << r;
    const std::string msg = epd_group_last_error(ranks_.group(r));
    EXPECT_NE(msg.find("rank 3, token 1, k 2, value 999"), std::string::npos) << "rank " << r << ": " << msg;
  }
  // The slot's order continues with the combine; its status is not asserted.
  for (int32_t r = 0; r < kWorld; ++r)
    ASSERT_EQ(epd_group_combine_async(ranks_.group(r), 0, EPD_WEIGHTS_ALREADY_APPLIED, nullptr, 0, ranks_.stream(r)),
              EPD_OK);
  for (int32_t r = 0; r < kWorld; ++r)
    ASSERT_EQ(epd_group_combine_wait_async(ranks_.group(r), 0, ranks_.stream(r)), EPD_OK);
  for (int32_t r = 0; r < kWorld; ++r) (void)epd_group_gpu_status(ranks_.group(r), 0, kDeadlineMs);
  ranks_.sync_all("after the bad id");
  if (HasFatalFailure()) return;
  ranks_.alloc_buffers(m);
  // The next call on the slot: the same inputs with the id restored (run_step uploads the mirror).
  ranks_.run_step(m, Step{0, EPD_WEIGHTS_ALREADY_APPLIED}, "after the bad id");
  if (HasFatalFailure()) return;
  ranks_.leave_all();
}

// Every rank's combine completion compares the ranks' weight modes: the
// daemon's path has each worker's stream write its mode word, the inline
// executor's kernels store it themselves before the cross-rank barrier. Rank 5
// sums with EPD_WEIGHTS_ONES, the others with ALREADY_APPLIED (both valid for
// rank_major): every rank's combine fails, and the next step is right again.
TEST_F(DaemonGpuTest, WeightModesThatDifferAcrossRanksFailEveryRanksCombine) {
  connect_all();
  if (HasFatalFailure()) return;
  for (const epd_executor_t executor : test_executors()) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed) + ", executor " + executor_tag(executor));
    const GroupSpec spec = gpu_spec(executor == EPD_EXECUTOR_INLINE ? "modes-inline" : "modes", EPD_LAYOUT_RANK_MAJOR,
                                    EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 128, 16, 5000, seed, executor);
    ranks_.join_all(spec);
    if (HasFatalFailure()) return;
    Group m(spec);
    m.poison(seed + 1);
    ASSERT_TRUE(m.stage(0, Routing::kUniform, std::vector<int32_t>(kWorld, 7), seed + 2).is_ok());
    ranks_.upload(m, 0);
    dispatch_all_in_place(0, 7);
    if (HasFatalFailure()) return;
    for (int32_t r = 0; r < kWorld; ++r) {
      const epd_weight_mode_t mode = r == 5 ? EPD_WEIGHTS_ONES : EPD_WEIGHTS_ALREADY_APPLIED;
      ASSERT_EQ(epd_group_combine_async(ranks_.group(r), 0, mode, nullptr, 0, ranks_.stream(r)), EPD_OK)
          << epd_group_last_error(ranks_.group(r));
    }
    for (int32_t r = 0; r < kWorld; ++r)
      ASSERT_EQ(epd_group_combine_wait_async(ranks_.group(r), 0, ranks_.stream(r)), EPD_OK);
    for (int32_t r = 0; r < kWorld; ++r)
      EXPECT_EQ(epd_group_gpu_status(ranks_.group(r), 0, kDeadlineMs), EPD_ERR_BAD_WEIGHT_MODE)
          << "rank " << r << ": " << epd_group_last_error(ranks_.group(r));
    ranks_.sync_all("after the differing modes");
    if (HasFatalFailure()) return;
    ranks_.alloc_buffers(m);
    ranks_.run_step(m, Step{0, EPD_WEIGHTS_ALREADY_APPLIED}, "after the differing modes");
    if (HasFatalFailure()) return;
    ranks_.leave_all();
    if (HasFatalFailure()) return;
  }
}

// ---- d: a rank SIGKILLed mid-step ---------------------------------------------------------------

// The worker role: joins rank 7 of kill_spec(), rings its dispatch, then waits to be killed.
TEST(DaemonGpuWorkerRole, Run) {
  const char* sock = std::getenv(kWorkerEnv);
  if (!sock) GTEST_SKIP() << "worker role of DaemonGpuTest.KilledRank* (spawned by it)";
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CUDA_OK(cudaSetDevice(device_of(kWorld - 1)));  // this worker process on its rank's GPU
  CUDA_OK(cudaFree(nullptr));
  cudaStream_t st = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  epd_client_t* c = nullptr;
  ASSERT_EQ(epd_client_connect(sock, &c), EPD_OK) << epd_client_last_error(nullptr);
  const char* ex = std::getenv(kWorkerExecutorEnv);
  const GroupSpec spec = kill_spec(ex && std::string(ex) == "inline" ? EPD_EXECUTOR_INLINE : EPD_EXECUTOR_DAEMON);
  epd_group_spec_t cs = spec.to_c();
  cs.rank = kWorld - 1;
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(c, &cs, &g), EPD_OK) << epd_client_last_error(c);
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.n_tokens = 0;
  ASSERT_EQ(epd_group_dispatch_async(g, 0, &a, st), EPD_OK) << epd_group_last_error(g);
  ASSERT_EQ(epd_group_dispatch_wait_async(g, 0, st), EPD_OK) << epd_group_last_error(g);
  std::printf("RANG\n");
  std::fflush(stdout);
  ::poll(nullptr, 0, 120000);  // not a synchronisation: the parent SIGKILLs this process long before
  std::printf("ERROR: the worker role was not killed\n");
}

TEST_F(DaemonGpuTest, KilledRankGivesPeerLostWithinTheTimeoutAndEveryRankRejoins) {
  killed_rank(EPD_EXECUTOR_DAEMON);
}

// The worker process's launches and this process's meet inside the kernels,
// which needs MPS (without it the join is refused: the next test).
TEST_F(DaemonGpuTest, InlineKilledRankGivesPeerLostWithinTheTimeoutAndEveryRankRejoins) {
  if (test_gpus() != 1) GTEST_SKIP() << "the inline executor needs every rank on one GPU (EPD_TEST_GPUS=1)";
  if (!detect_mps(0).active)
    GTEST_SKIP() << "an inline group in two processes needs MPS (InlineRanksInSeveralProcessesWithoutMpsAreRefused runs)";
  killed_rank(EPD_EXECUTOR_INLINE);
}

// Without MPS, an inline group whose ranks sit in two processes is refused at
// the join, for every rank, with the reason and the fix; epd keeps serving.
TEST_F(DaemonGpuTest, InlineRanksInSeveralProcessesWithoutMpsAreRefused) {
  if (test_gpus() != 1) GTEST_SKIP() << "the inline executor needs every rank on one GPU (EPD_TEST_GPUS=1)";
  if (detect_mps(0).active) GTEST_SKIP() << "MPS is active: such a group is allowed (InlineKilledRank... runs it)";
  const GroupSpec spec = kill_spec(EPD_EXECUTOR_INLINE);
  connect_all();
  if (HasFatalFailure()) return;
  job::Child child = job::Child::spawn({"/proc/self/exe", "--gtest_filter=DaemonGpuWorkerRole.Run"},
                                       {std::string(kWorkerEnv) + "=" + socket(),
                                        std::string(kWorkerExecutorEnv) + "=" + executor_tag(EPD_EXECUTOR_INLINE)});
  ASSERT_GT(child.pid(), 0);
  watchdog_->add_pid(child.pid());
  std::vector<epd_status_t> rc(kWorld, EPD_OK);
  std::vector<std::string> msg(kWorld);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r + 1 < kWorld; ++r)
    threads.emplace_back([&, r] {
      rc[r] = ranks_.join_rank(spec, r);
      msg[r] = epd_client_last_error(ranks_.client(r));
    });
  for (auto& t : threads) t.join();
  for (int32_t r = 0; r + 1 < kWorld; ++r) {
    EXPECT_EQ(rc[r], EPD_ERR_UNSUPPORTED) << "rank " << r << ": " << msg[r];
    EXPECT_NE(msg[r].find("2 processes"), std::string::npos) << msg[r];
    EXPECT_NE(msg[r].find("MPS is not active"), std::string::npos) << msg[r];
  }
  EXPECT_NE(child.wait(kDeadlineMs), -1) << "the worker's join was not answered";
  EXPECT_EQ(query_daemon(socket()).daemon_pid, daemon().child().pid());
}

void DaemonGpuTest::killed_rank(epd_executor_t executor) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", executor " + executor_tag(executor));
  const GroupSpec spec = kill_spec(executor);
  connect_all();
  if (HasFatalFailure()) return;
  job::Child child = job::Child::spawn({"/proc/self/exe", "--gtest_filter=DaemonGpuWorkerRole.Run"},
                                       {std::string(kWorkerEnv) + "=" + socket(),
                                        std::string(kWorkerExecutorEnv) + "=" + executor_tag(executor)});
  ASSERT_GT(child.pid(), 0);
  watchdog_->add_pid(child.pid());
  const std::vector<int32_t> parent = {0, 1, 2, 3, 4, 5, 6};
  ranks_.join(spec, parent);  // returns once the child's rank 7 is in too
  if (HasFatalFailure()) return;
  std::string line, seen;
  bool rang = false;
  while (!rang && child.read_line(line, kDeadlineMs)) {
    seen += line + "\n";
    rang = line == "RANG";
  }
  ASSERT_TRUE(rang) << "the worker never rang its dispatch; its output:\n" << seen;

  // Ranks 0..6 complete the dispatch with rank 7, then ring the combine rank 7 never rings.
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.n_tokens = 0;
  for (int32_t r : parent)
    ASSERT_EQ(epd_group_dispatch_async(ranks_.group(r), 0, &a, ranks_.stream(r)), EPD_OK)
        << epd_group_last_error(ranks_.group(r));
  for (int32_t r : parent) ASSERT_EQ(epd_group_dispatch_wait_async(ranks_.group(r), 0, ranks_.stream(r)), EPD_OK);
  for (int32_t r : parent)
    ASSERT_EQ(epd_group_gpu_status(ranks_.group(r), 0, kDeadlineMs), EPD_OK)
        << "rank " << r << ": " << epd_group_last_error(ranks_.group(r));
  for (int32_t r : parent)
    ASSERT_EQ(epd_group_combine_async(ranks_.group(r), 0, EPD_WEIGHTS_ALREADY_APPLIED, nullptr, 0, ranks_.stream(r)),
              EPD_OK);
  for (int32_t r : parent) ASSERT_EQ(epd_group_combine_wait_async(ranks_.group(r), 0, ranks_.stream(r)), EPD_OK);

  // The survivors' waits end before the killed worker is reaped: a process
  // with a CUDA context takes hundreds of ms to exit (the driver tears the
  // context down), and epd's exit watch sees it exiting from the start.
  const int64_t t0 = job::now_ns();
  child.kill(SIGKILL);
  double first_ms = 0.0;
  for (int32_t r : parent) {
    const epd_status_t rc = epd_group_gpu_status(ranks_.group(r), 0, 0);  // 0: the group's timeout_ms
    const double ms = static_cast<double>(job::now_ns() - t0) / 1e6;
    EXPECT_EQ(rc, EPD_ERR_PEER_LOST) << "rank " << r << ": " << epd_group_last_error(ranks_.group(r));
    EXPECT_LT(ms, static_cast<double>(spec.timeout_ms)) << "rank " << r;
    if (r == 0) first_ms = ms;
  }
  const double all_ms = static_cast<double>(job::now_ns() - t0) / 1e6;
  ASSERT_NE(child.wait(kDeadlineMs), -1);
  const double reaped_ms = static_cast<double>(job::now_ns() - t0) / 1e6;
  std::printf("PEER_LOST seen by rank 0 %.3f ms after SIGKILL, by all 7 survivors %.3f ms; the worker reaped "
              "%.3f ms after SIGKILL (executor %s): %s\n",
              first_ms, all_ms, reaped_ms, executor_tag(executor), epd_group_last_error(ranks_.group(0)));
  ranks_.sync_all("after the abort (the combine waits must be released)");
  if (HasFatalFailure()) return;
  // The group is aborted until every rank re-joins: later enqueues are refused.
  EXPECT_EQ(epd_group_dispatch_async(ranks_.group(0), 1, &a, ranks_.stream(0)), EPD_ERR_PEER_LOST)
      << epd_group_last_error(ranks_.group(0));

  // The daemon is healthy: a new session is answered.
  EXPECT_EQ(query_daemon(socket()).daemon_pid, daemon().child().pid());

  ranks_.leave(parent);
  ranks_.join_all(spec);
  if (HasFatalFailure()) return;
  Group m(spec);
  m.poison(seed + 1);
  ranks_.alloc_buffers(m);
  std::mt19937_64 rng(seed + 2);
  for (int32_t s = 0; s < 2; ++s) {
    ASSERT_TRUE(m.stage(s, Routing::kSkewed, random_n(rng, kWorld, spec.max_tokens_per_rank), seed + 3 + s).is_ok());
    ranks_.run_step(m, Step{s, EPD_WEIGHTS_ALREADY_APPLIED}, "after the re-join, slot " + std::to_string(s));
    if (HasFatalFailure()) return;
  }
  ranks_.leave_all();
}

// ---- epctl topology: CUDA's peer facts --------------------------------------------------------------

// What `epctl --json topology` says about the GPUs: every visible one with its
// bus id, every ordered pair once, and peer access as CUDA reports it to
// this process.
TEST_F(DaemonGpuTest, TopologyShowsEveryGpuPairAndItsLink) {
  std::string body;
  ASSERT_EQ(query_daemon_status(socket(), "topology", true, body), EPD_OK) << body;
  const size_t at = body.find("\"gpu_peers\"");
  ASSERT_NE(at, std::string::npos) << body;
  // The gpu_peers object alone (hwloc's "gpus" list follows it): up to its matching brace.
  size_t end = body.find('{', at), depth = 0;
  ASSERT_NE(end, std::string::npos) << body;
  for (; end < body.size(); ++end) {
    depth += body[end] == '{';
    depth -= body[end] == '}';
    if (depth == 0) break;
  }
  const std::string peers = body.substr(at, end + 1 - at);
  EXPECT_NE(peers.find("\"available\":true"), std::string::npos) << peers;
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t i = peers.find(what); i != std::string::npos; i = peers.find(what, i + 1)) ++n;
    return n;
  };
  auto visible = gpu_device_count();
  ASSERT_TRUE(visible.is_ok());
  const size_t n = static_cast<size_t>(*visible);
  EXPECT_EQ(count("\"pci_busid\""), n) << peers;
  EXPECT_EQ(count("\"from\":"), n * (n - 1)) << peers;
  if (test_gpus() > 1) {
    int access = 0;
    ASSERT_EQ(cudaDeviceCanAccessPeer(&access, 0, 1), cudaSuccess);
    EXPECT_EQ(peers.find("\"access\":true") != std::string::npos, access != 0) << peers;
    std::printf("gpu_peers: %s\n", peers.c_str());
  }
}

// ---- argument checks on a GPU group ---------------------------------------------------------------

// A GPU group whose last rank never joins: the pending joins time out naming
// it, the group (armed, never used) is destroyed, epd keeps answering and
// stops on SIGTERM (TearDown checks exit 0).
TEST_F(DaemonGpuTest, GroupWhoseJoinTimesOutIsDestroyedAndEpdStaysResponsive) {
  GroupSpec spec = gpu_spec("never", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, 128, 16, 500, 71);
  connect_all();
  std::vector<epd_status_t> rc(kWorld, EPD_OK);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < kWorld - 1; ++r)
    threads.emplace_back([&, r] { rc[r] = ranks_.join_rank(spec, r); });
  for (auto& t : threads) t.join();
  for (int32_t r = 0; r < kWorld - 1; ++r) {
    EXPECT_EQ(rc[r], EPD_ERR_TIMEOUT) << "rank " << r;
    const std::string msg = epd_client_last_error(ranks_.client(r));
    EXPECT_NE(msg.find("rank 7"), std::string::npos) << msg;
  }
  EXPECT_EQ(query_daemon(socket()).daemon_pid, daemon().child().pid());
}

TEST_F(DaemonGpuTest, ArgumentErrorsNameTheValueAndHostCallsAreRefused) {
  GroupSpec spec = make_spec(1, 8, 2, 128, 16, EPD_DTYPE_BF16, EPD_QUANT_NONE, EPD_LAYOUT_RANK_MAJOR,
                             EPD_MODE_LOW_LATENCY, false, 1);
  spec.name = "args";
  spec.generation = 1;
  connect_all();
  if (HasFatalFailure()) return;
  ranks_.join(spec, {0});
  if (HasFatalFailure()) return;
  epd_group_t* g = ranks_.group(0);
  cudaStream_t s = ranks_.stream(0);
  auto last = [&] { return std::string(epd_group_last_error(g)); };
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  EXPECT_EQ(epd_group_dispatch_async(nullptr, 0, &a, s), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_gpu_status(nullptr, 0, 0), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_dispatch_async(g, 0, nullptr, s), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("args is NULL"), std::string::npos) << last();
  epd_gpu_dispatch_args_t small = a;
  small.struct_size = 4;
  EXPECT_EQ(epd_group_dispatch_async(g, 0, &small, s), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("struct_size = 4"), std::string::npos) << last();
  EXPECT_EQ(epd_group_dispatch_async(g, 7, &a, s), EPD_ERR_BAD_SLOT);
  EXPECT_NE(last().find("slot = 7"), std::string::npos) << last();
  a.n_tokens = 17;
  EXPECT_EQ(epd_group_dispatch_async(g, 0, &a, s), EPD_ERR_CAPACITY_EXCEEDED);
  EXPECT_NE(last().find("n_tokens = 17"), std::string::npos) << last();
  a.n_tokens = -1;
  EXPECT_EQ(epd_group_dispatch_async(g, 0, &a, s), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("n_tokens = -1 is negative"), std::string::npos) << last();
  a.n_tokens = 0;
  EXPECT_EQ(epd_group_dispatch_wait_async(g, 0, s), EPD_ERR_NO_DISPATCH) << last();
  EXPECT_EQ(epd_group_gpu_status(g, 0, 100), EPD_OK) << last();  // nothing enqueued yet
  epd_gpu_views_t v{};
  v.struct_size = 8;
  EXPECT_EQ(epd_group_gpu_views(g, 0, &v), EPD_ERR_INVALID_ARGUMENT);
  // Host calls on a GPU group.
  epd_dispatch_args_t ha{};
  ha.struct_size = sizeof ha;
  EXPECT_EQ(epd_group_dispatch(g, 0, &ha), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(last().find("epd_group_dispatch_async"), std::string::npos) << last();
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  EXPECT_EQ(epd_group_dispatch_wait(g, 0, 100, &res), EPD_ERR_UNSUPPORTED);
  EXPECT_EQ(epd_group_combine(g, 0, EPD_WEIGHTS_ONES), EPD_ERR_UNSUPPORTED);
  const void* out = nullptr;
  EXPECT_EQ(epd_group_combine_wait(g, 0, 100, &out), EPD_ERR_UNSUPPORTED);
  // A world-1 round trip, with a weight mode rank_major refuses on the way.
  ASSERT_EQ(epd_group_dispatch_async(g, 0, &a, s), EPD_OK) << last();
  EXPECT_EQ(epd_group_dispatch_async(g, 0, &a, s), EPD_ERR_SLOT_BUSY) << last();
  ASSERT_EQ(epd_group_dispatch_wait_async(g, 0, s), EPD_OK) << last();
  EXPECT_EQ(epd_group_combine_async(g, 0, EPD_WEIGHTS_APPLY, nullptr, 0, s), EPD_ERR_BAD_WEIGHT_MODE) << last();
  ASSERT_EQ(epd_group_combine_async(g, 0, EPD_WEIGHTS_ONES, nullptr, 0, s), EPD_OK) << last();
  ASSERT_EQ(epd_group_combine_wait_async(g, 0, s), EPD_OK) << last();
  EXPECT_EQ(epd_group_gpu_status(g, 0, kDeadlineMs), EPD_OK) << last();
  ASSERT_TRUE(sync_within(s, kDeadlineMs));
  ranks_.leave({0});
}

}  // namespace
}  // namespace epd::test
