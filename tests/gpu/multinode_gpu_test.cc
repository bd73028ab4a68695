// multinode_gpu_test.cc — GPU ranks on two cluster nodes: two real `epd`
// daemons on this machine, node 0 and node 1, each with its own runtime
// directory, socket and config ([cluster] node_id, listen_address on
// 127.0.0.1, peers, secret; TCP over loopback, no network namespaces). One
// GPU group of 4 ranks spans them (ranks 0, 1 on node 0; 2, 3 on node 1; on
// GPU 0, or node 1's on GPU 1 when two GPUs are visible), all held by this
// process: 2 sessions per node's socket, one non-blocking CUDA stream per rank
// on its GPU. Each step runs dispatch and combine through the GPU client calls
// and compares the device regions byte for byte with HostExecutor run on a
// host mirror of the same inputs (both layouts, bf16 and fp8 dispatch, every
// valid weight mode, 0 tokens and full capacity, both slots; rank_major row
// counts also from the routing alone, since the cross-node path runs
// HostExecutor itself). A node daemon SIGKILLed while node 0's ranks have
// rung a dispatch that cannot complete: node 0's ranks see PEER_LOST (or
// TIMEOUT) within the group's timeout and their streams drain.
//
// Every wait has a deadline; a watchdog ends the daemons by pid. The daemons'
// logs are printed when a test fails. Skipped (exit 77) without a GPU or
// driver, or when the daemons do not advertise EPD_CAP_GPU_EXECUTOR.
#include <arpa/inet.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "daemon_ranks.h"
#include "epd/epd.h"
#include "gpu_armed.h"

namespace epd::test {
namespace {

// Before CUDA initialises (here and in the daemons, which inherit it): enough
// hardware queues that one stream's armed wait never stalls another's, and
// eager module loading.
const bool kEnvPrepared = (armed_prepare_environment(), true);

constexpr int32_t kWorld = 4;
constexpr int32_t kNodes = 2;
constexpr int kReadyMs = 30000;             // a daemon's READY=1
constexpr uint32_t kGroupTimeoutMs = 10000;  // the groups' timeout_ms
constexpr int kLossMarginMs = 3000;          // beyond the group's timeout, for PEER_LOST / TIMEOUT to arrive
constexpr const char* kSecret = "multinode-gpu-test-cluster-secret-0123456789";

int32_t node_of(int32_t rank) { return rank * kNodes / kWorld; }

// One GPU for every rank, or node 1's ranks on GPU 1 when two are visible
// (EPD_TEST_GPUS=1 keeps one).
int32_t test_gpus() {
  static const int32_t n = [] {
    auto count = gpu_device_count();
    int32_t g = count && *count >= kNodes ? kNodes : 1;
    if (const char* e = std::getenv("EPD_TEST_GPUS"); e && std::atoi(e) > 0) g = std::min(g, std::atoi(e));
    return g;
  }();
  return n;
}
int32_t device_of(int32_t rank) { return test_gpus() > 1 ? node_of(rank) : 0; }

// How a failure names rank r: with its node.
std::string rank_name(int32_t r) { return "rank " + std::to_string(r) + " (node " + std::to_string(node_of(r)) + ")"; }

// The cross-node path runs HostExecutor itself: after a step's dispatch, row
// counts also from the routing alone (rank_major: one row per (source token,
// destination rank)).
void expect_rank_major_rows(Group& m, int32_t slot, const std::string& what) {
  if (m.spec.layout != EPD_LAYOUT_RANK_MAJOR) return;
  const auto prefix = rank_major_prefix_rows(m, slot);
  for (int32_t d = 0; d < kWorld; ++d) {
    int32_t want = 0;
    for (int32_t src = 0; src < kWorld; ++src) want += prefix[src][m.n[static_cast<size_t>(src)]][d];
    int32_t got = 0;
    std::memcpy(&got, m.host[d].data() + m.layout.ranks[d].slot[slot].recv_total, sizeof got);
    ASSERT_EQ(got, want) << what << ": recv_total of " << rank_name(d);
  }
}

GroupSpec gpu_spec(const char* name, epd_layout_t layout, epd_mode_t mode, epd_quant_t quant, uint64_t seed) {
  GroupSpec s = make_spec(kWorld, 64, 4, 256, 32, EPD_DTYPE_BF16, quant, layout, mode, /*shuffled_owner=*/true, seed);
  s.name = name;
  s.generation = 1;
  s.timeout_ms = kGroupTimeoutMs;
  for (int32_t r = 0; r < kWorld; ++r) s.placement[static_cast<size_t>(r)] = epd_placement_t{node_of(r), device_of(r)};
  return s;
}

// `n` distinct free TCP ports on 127.0.0.1: bound to port 0 together (so they
// differ), read back, closed for the daemons to take. Another process may take
// one in between; the caller retries when a daemon reports EADDRINUSE.
std::vector<int> free_loopback_ports(int n, std::string& why) {
  std::vector<int> fds, ports;
  for (int i = 0; i < n; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      why = std::string("socket: ") + strerror(errno);
      break;
    }
    fds.push_back(fd);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      why = std::string("bind to 127.0.0.1:0: ") + strerror(errno);
      break;
    }
    ports.push_back(ntohs(a.sin_port));
  }
  for (int fd : fds) close(fd);
  if (static_cast<int>(ports.size()) != n) ports.clear();
  return ports;
}

// One node's epd: its directory (config, socket, notify socket, log), started
// with the cluster's addresses (index = node id), readiness through its own
// NOTIFY_SOCKET, stderr appended to the log. The destructor SIGKILLs it by
// pid if still running. One test thread.
class NodeDaemon {
 public:
  NodeDaemon(const std::string& root, int32_t node) : dir_(root + "/n" + std::to_string(node)), node_(node) {}
  ~NodeDaemon() {
    if (child_.running()) {
      child_.kill(SIGKILL);
      (void)child_.wait(10000);
    }
    if (notify_fd_ >= 0) close(notify_fd_);
  }
  NodeDaemon(const NodeDaemon&) = delete;
  NodeDaemon& operator=(const NodeDaemon&) = delete;

  std::string socket() const { return dir_ + "/epd.sock"; }
  std::string log_path() const { return dir_ + "/epd.log"; }
  job::Child& child() { return child_; }
  std::string log() const {
    std::ifstream f(log_path());
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }

  // Writes the config and starts epd; "" once it reported READY=1, else why not
  // (the daemon is then ended).
  std::string start(const std::vector<std::string>& addresses, int timeout_ms) {
    if (mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) return "mkdir " + dir_ + ": " + strerror(errno);
    const std::string cfg = dir_ + "/epd.toml", notify = dir_ + "/notify.sock";
    {
      std::ofstream f(cfg, std::ios::trunc);
      f << "[cluster]\nnode_id = " << node_ << "\nlisten_address = \"" << addresses[static_cast<size_t>(node_)]
        << "\"\nsecret = \"" << kSecret << "\"\ntransport = \"tcp\"\npeers = [";
      for (size_t n = 0; n < addresses.size(); ++n) f << (n ? ", " : "") << "\"" << addresses[n] << "\"";
      f << "]\n";
      if (!f) return "cannot write " + cfg;
    }
    if (chmod(cfg.c_str(), 0600) != 0) return "chmod " + cfg + ": " + strerror(errno);  // it holds the secret
    std::ofstream(log_path(), std::ios::trunc).flush();  // this start's log only
    if (notify_fd_ >= 0) close(notify_fd_);
    unlink(notify.c_str());
    notify_fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", notify.c_str());
    if (notify_fd_ < 0 || bind(notify_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      return "cannot bind " + notify + ": " + strerror(errno);
    // sh execs epd in place: the pid we hold is the daemon's.
    child_ = job::Child::spawn({"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>>\"$EPD_TEST_LOG\"", epd_path(), "--config", cfg,
                                "--socket", socket(), "--log-target", "stderr", "--log-level", "info"},
                               {"NOTIFY_SOCKET=" + notify, "EPD_TEST_LOG=" + log_path()}, false);
    if (child_.pid() <= 0) return "cannot start epd for node " + std::to_string(node_);
    const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
    for (;;) {
      const int64_t left_ms = (deadline - job::now_ns()) / 1000000;
      if (left_ms <= 0) break;
      pollfd p{notify_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left_ms, 200)) + 1) <= 0) {
        if (child_.wait(0) >= 0) break;  // exited before READY=1
        continue;
      }
      char b[1024];
      const ssize_t n = recv(notify_fd_, b, sizeof b - 1, 0);
      if (n <= 0) continue;
      b[n] = 0;
      if (std::strstr(b, "READY=1")) return "";
    }
    const int rc = child_.wait(0);
    if (rc < 0) {
      child_.kill(SIGKILL);
      (void)child_.wait(10000);
    }
    return "node " + std::to_string(node_) + "'s epd did not report READY=1 within " + std::to_string(timeout_ms) +
           " ms" + (rc >= 0 ? " (it exited with " + std::to_string(rc) + ")" : "");
  }

  // SIGTERM, then SIGKILL when it has not exited within timeout_ms; the exit
  // code of the SIGTERM (-1: it had to be killed). -2 when it was not running.
  int stop(int timeout_ms) {
    if (!child_.running()) return -2;
    child_.kill(SIGTERM);
    const int rc = child_.wait(timeout_ms);
    if (rc >= 0) return rc;
    child_.kill(SIGKILL);
    (void)child_.wait(timeout_ms);
    return -1;
  }

 private:
  std::string dir_;
  int32_t node_;
  int notify_fd_ = -1;
  job::Child child_;
};

class MultinodeGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto count = gpu_device_count();
    if (!count) GTEST_SKIP() << count.status().message();
    const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(std::string(t->test_suite_name()) + "." + t->name(), 300);
    dir_ = std::make_unique<job::TempDir>("epd-mngpu");
    ASSERT_FALSE(dir_->path().empty()) << "mkdtemp failed";
    start_cluster();
    if (HasFatalFailure()) return;
    for (int32_t n = 0; n < kNodes; ++n) {
      const epd_client_info_t info = query_daemon(nodes_[static_cast<size_t>(n)]->socket());
      ASSERT_FALSE(HasFailure()) << "node " << n << "'s epd did not answer a new session";
      ASSERT_EQ(info.daemon_pid, nodes_[static_cast<size_t>(n)]->child().pid()) << "node " << n;
      if (!(info.capabilities & EPD_CAP_GPU_EXECUTOR))
        GTEST_SKIP() << "node " << n << "'s epd does not advertise EPD_CAP_GPU_EXECUTOR (capabilities 0x" << std::hex
                     << info.capabilities << ")";
    }
    open_gpu_contexts(test_gpus());
    if (HasFatalFailure()) return;
    std::printf("ranks over %d GPU(s); nodes at %s and %s\n", test_gpus(), addresses_[0].c_str(), addresses_[1].c_str());
    gpu_ready_ = true;
  }

  void TearDown() override {
    if (gpu_ready_) {
      EXPECT_TRUE(ranks_.release()) << "a rank's stream did not drain after its group was left";
      for (cudaEvent_t e : events_) cudaEventDestroy(e);
      events_.clear();
    }
    for (size_t n = 0; n < nodes_.size(); ++n) {
      const int rc = nodes_[n]->stop(10000);
      EXPECT_TRUE(rc == 0 || rc == -2) << "node " << n << "'s epd did not exit 0 on SIGTERM (" << rc << ")";
    }
    if (HasFailure())
      for (size_t n = 0; n < nodes_.size(); ++n) print_log(n);
    nodes_.clear();
    dir_.reset();
    watchdog_.reset();
  }

  void print_log(size_t node) const {
    std::string log = nodes_[node]->log();
    constexpr size_t kTail = 32768;
    if (log.size() > kTail) log = "...\n" + log.substr(log.size() - kTail);
    std::fprintf(stderr, "---- node %zu's epd log (%s) ----\n%s---- end of node %zu's log ----\n", node,
                 nodes_[node]->log_path().c_str(), log.c_str(), node);
  }

  // Both nodes on fresh loopback ports; a start that lost its port to another
  // process (EADDRINUSE) is retried on new ones, twice at most.
  void start_cluster() {
    std::string why;
    for (int attempt = 0; attempt < 3; ++attempt) {
      nodes_.clear();  // ends a previous attempt's daemons by pid
      const std::vector<int> ports = free_loopback_ports(kNodes, why);
      ASSERT_EQ(ports.size(), static_cast<size_t>(kNodes)) << why;
      addresses_.clear();
      for (int p : ports) addresses_.push_back("127.0.0.1:" + std::to_string(p));
      bool port_taken = false;
      why.clear();
      for (int32_t n = 0; n < kNodes && why.empty(); ++n) {
        nodes_.push_back(std::make_unique<NodeDaemon>(dir_->path(), n));
        why = nodes_.back()->start(addresses_, kReadyMs);
        if (nodes_.back()->child().pid() > 0) watchdog_->add_pid(nodes_.back()->child().pid());
        port_taken = !why.empty() && nodes_.back()->log().find("Address already in use") != std::string::npos;
      }
      if (why.empty()) return;
      if (!port_taken) break;
      std::printf("a port was taken before epd bound it (attempt %d): %s\n", attempt + 1, why.c_str());
    }
    FAIL() << why;  // TearDown prints the logs
  }

  // Sessions: ranks 0, 1 to node 0's socket, 2, 3 to node 1's; a stream each on its rank's GPU.
  void connect_all() {
    ranks_.connect([this](int32_t r) { return nodes_[static_cast<size_t>(node_of(r))]->socket(); });
  }

  struct Case {
    const char* name;
    epd_layout_t layout;
    epd_mode_t mode;
    epd_quant_t quant;
  };
  // Per case: a fresh group across both nodes, six verified steps alternating
  // the slots (random, full capacity, 0 tokens, masked with 0 and full ranks,
  // one expert, skewed), every weight mode valid for the layout, then leave.
  void run_cases(const std::vector<Case>& cases) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    connect_all();
    if (HasFatalFailure()) return;
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      const Case& c = cases[ci];
      const uint64_t cseed = seed * 131 + ci;
      const GroupSpec spec = gpu_spec(c.name, c.layout, c.mode, c.quant, cseed);
      ASSERT_TRUE(spec.validate().is_ok()) << spec.validate().message();
      ranks_.join_all(spec);
      if (HasFatalFailure()) return;
      Group m(spec);
      m.poison(cseed + 1);
      const int32_t M = spec.max_tokens_per_rank;
      std::mt19937_64 rng(cseed + 2);
      const std::vector<epd_weight_mode_t> modes =
          c.layout == EPD_LAYOUT_RANK_MAJOR
              ? std::vector<epd_weight_mode_t>{EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES}
              : std::vector<epd_weight_mode_t>{EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES};
      std::vector<int32_t> mixed = random_n(rng, kWorld, M);
      mixed[0] = 0;  // node 0 sends nothing from rank 0, node 1 a full rank 3
      mixed[3] = M;
      struct Round {
        Routing routing;
        std::vector<int32_t> n;
        int32_t slot;
      };
      const Round rounds[] = {
          {Routing::kUniform, random_n(rng, kWorld, M), 0},
          {Routing::kSkewed, std::vector<int32_t>(kWorld, M), 1},  // full capacity
          {Routing::kUniform, std::vector<int32_t>(kWorld, 0), 0},  // 0 tokens
          {Routing::kMasked, mixed, 1},                             // -1 masking
          {Routing::kOneExpert, random_n(rng, kWorld, M), 0},
          {Routing::kSkewed, random_n(rng, kWorld, M), 1},
      };
      for (size_t ri = 0; ri < std::size(rounds); ++ri) {
        const epd_weight_mode_t mode = modes[ri % modes.size()];
        const std::string what = std::string(c.name) + " round " + std::to_string(ri) + " (" +
                                 routing_name(rounds[ri].routing) + ")";
        const Status staged = m.stage(rounds[ri].slot, rounds[ri].routing, rounds[ri].n, cseed + 10 + ri);
        ASSERT_TRUE(staged.is_ok()) << staged.message();
        ranks_.run_step(m, Step{rounds[ri].slot, mode}, what, expect_rank_major_rows);
        if (HasFatalFailure()) return;
      }
      ranks_.leave_all();
    }
  }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<job::TempDir> dir_;
  std::vector<std::unique_ptr<NodeDaemon>> nodes_;  // [node]
  std::vector<std::string> addresses_;              // [node] "127.0.0.1:port"
  bool gpu_ready_ = false;
  DaemonRanks ranks_{kWorld, device_of, rank_name};
  std::vector<cudaEvent_t> events_;
};

// ---- results across nodes -----------------------------------------------------------------

TEST_F(MultinodeGpuTest, Bf16RanksOnTwoNodesMatchHostExecutorInBothLayouts) {
  run_cases({{"mn_rm_bf16", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE},
             {"mn_em_bf16", EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_HIGH_THROUGHPUT, EPD_QUANT_NONE}});
}

TEST_F(MultinodeGpuTest, Fp8DispatchOnTwoNodesMatchesHostExecutorInBothLayouts) {
  run_cases({{"mn_rm_fp8", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_HIGH_THROUGHPUT, EPD_QUANT_FP8_E4M3_BLOCK128},
             {"mn_em_fp8", EPD_LAYOUT_EXPERT_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_FP8_E4M3_BLOCK128}});
}

// ---- a node daemon SIGKILLed mid-step -----------------------------------------------------------

// Node 0's ranks ring a dispatch; node 1's never do, so it cannot complete.
// Node 1's epd is SIGKILLed: node 0's ranks get PEER_LOST (or the group's
// TIMEOUT) within the group's timeout plus a margin, their streams drain, and
// node 0's epd keeps answering.
TEST_F(MultinodeGpuTest, NodeDaemonKilledWhileNode0RangGivesPeerLostWithinTheTimeoutAndRejoins) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const GroupSpec spec = gpu_spec("mn_killed", EPD_LAYOUT_RANK_MAJOR, EPD_MODE_LOW_LATENCY, EPD_QUANT_NONE, seed);
  connect_all();
  if (HasFatalFailure()) return;
  ranks_.join_all(spec);
  if (HasFatalFailure()) return;
  Group m(spec);
  m.poison(seed + 1);
  std::mt19937_64 rng(seed + 2);
  ASSERT_TRUE(m.stage(0, Routing::kUniform, random_n(rng, kWorld, spec.max_tokens_per_rank), seed + 3).is_ok());
  ranks_.upload(m, 0);
  if (HasFatalFailure()) return;

  const std::vector<int32_t> rang = {0, 1};  // node 0's ranks
  for (int32_t r : rang) {
    ranks_.on(r);
    cudaEvent_t e = nullptr;
    CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_.push_back(e);
    epd_gpu_dispatch_args_t a{};
    a.struct_size = sizeof a;
    a.n_tokens = m.n[static_cast<size_t>(r)];
    epd_group_t* g = ranks_.group(r);
    ASSERT_EQ(epd_group_dispatch_async(g, 0, &a, ranks_.stream(r)), EPD_OK) << epd_group_last_error(g);
    CUDA_OK(cudaEventRecord(e, ranks_.stream(r)));  // passed once the doorbell is written
    ASSERT_EQ(epd_group_dispatch_wait_async(g, 0, ranks_.stream(r)), EPD_OK) << epd_group_last_error(g);
  }
  for (size_t i = 0; i < rang.size(); ++i) {
    const int64_t end = job::now_ns() + static_cast<int64_t>(kDeadlineMs) * 1000000;
    cudaError_t e = cudaErrorNotReady;
    while (e == cudaErrorNotReady && job::now_ns() < end) e = cudaEventQuery(events_[i]);
    ASSERT_EQ(e, cudaSuccess) << "rank " << rang[i] << "'s dispatch doorbell was not written: " << cudaGetErrorString(e);
    // Ranks 2 and 3 never rang: the dispatch wait must still hold the stream.
    EXPECT_EQ(cudaStreamQuery(ranks_.stream(rang[i])), cudaErrorNotReady)
        << "rank " << rang[i] << "'s dispatch completed without node 1's ranks";
  }

  const int64_t t0 = job::now_ns();
  nodes_[1]->child().kill(SIGKILL);
  ASSERT_NE(nodes_[1]->child().wait(kDeadlineMs), -1) << "node 1's epd did not die on SIGKILL";
  const int bound_ms = static_cast<int>(spec.timeout_ms) + kLossMarginMs;
  for (int32_t r : rang) {
    const epd_status_t rc = epd_group_gpu_status(ranks_.group(r), 0, static_cast<uint32_t>(bound_ms));
    const double status_ms = static_cast<double>(job::now_ns() - t0) / 1e6;
    const std::string msg = epd_group_last_error(ranks_.group(r));
    std::printf("rank %d: %s %.3f ms after SIGKILL: %s\n", r, epd_status_string(rc), status_ms, msg.c_str());
    EXPECT_TRUE(rc == EPD_ERR_PEER_LOST || rc == EPD_ERR_TIMEOUT) << "rank " << r << ": " << epd_status_string(rc)
                                                                  << ": " << msg;
    if (rc == EPD_ERR_PEER_LOST) {
      EXPECT_NE(msg.find("2, 3"), std::string::npos) << "rank " << r << ": the message does not name ranks 2, 3: " << msg;
    }
    // The stream is released by the daemon's completion word, not by our wait giving up.
    const int left_ms = std::max(1, bound_ms - static_cast<int>(status_ms));
    ASSERT_TRUE(sync_within(ranks_.stream(r), left_ms))
        << "rank " << r << "'s stream did not drain within " << bound_ms << " ms of the SIGKILL";
    const double drained_ms = static_cast<double>(job::now_ns() - t0) / 1e6;
    EXPECT_LT(drained_ms, static_cast<double>(bound_ms)) << "rank " << r;
  }
  // Node 0's epd is healthy: a new session is answered by the same daemon.
  EXPECT_EQ(query_daemon(nodes_[0]->socket()).daemon_pid, nodes_[0]->child().pid());
  ranks_.leave(rang);
  ranks_.drop({2, 3});  // their daemon is gone: the leave only releases this process's side

  // Node 1 comes back (node 0's epd keeps running): every rank joins the same
  // generation again, node 1's through new sessions, and a verified step runs.
  const std::string why = nodes_[1]->start(addresses_, kReadyMs);
  ASSERT_EQ(why, "") << why;
  watchdog_->add_pid(nodes_[1]->child().pid());
  for (int32_t r : {2, 3}) ranks_.reconnect(r, nodes_[1]->socket());
  if (HasFatalFailure()) return;
  ranks_.join_all(spec);
  if (HasFatalFailure()) return;
  for (int32_t s = 0; s < 2; ++s) {
    ASSERT_TRUE(m.stage(s, Routing::kSkewed, random_n(rng, kWorld, spec.max_tokens_per_rank), seed + 10 + s).is_ok());
    ranks_.run_step(m, Step{s, EPD_WEIGHTS_ALREADY_APPLIED}, "after node 1 restarted, slot " + std::to_string(s),
                    expect_rank_major_rows);
    if (HasFatalFailure()) return;
  }
  ranks_.leave_all();
}

}  // namespace
}  // namespace epd::test
