// daemon_ranks.h — the client side of the GPU daemon tests: the ranks one test
// process holds through libepd-client (a session, a group handle and a
// non-blocking CUDA stream per rank, the stream on the rank's GPU), joined from
// threads, their workspaces read through epd_group_gpu_views, and one verified
// dispatch + combine step whose device bytes are compared with HostExecutor
// run on a host mirror (Group). Which socket and GPU a rank uses and how a
// failure names it are the test's; the rest is shared.
//
// Ownership: DaemonRanks owns the sessions, streams and copy buffers;
// release() ends them (the fixture's TearDown). Thread-safety: one test
// thread; join() runs one thread per rank, each touching only its own rank.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "epd/epd.h"
#include "gpu_test_util.h"
#include "harness.h"
#include "host_executor.h"

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

namespace epd::test {

constexpr int kDeadlineMs = 20000;  // any single wait of a test

// cudaStreamQuery until done, at most `ms` (a lost completion fails the test instead of hanging it).
inline bool sync_within(cudaStream_t s, int ms) {
  const int64_t end = job::now_ns() + static_cast<int64_t>(ms) * 1000000;
  for (;;) {
    const cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady || job::now_ns() > end) return false;
  }
}

// A seed for one test, printed so a failure can be replayed.
inline uint64_t fresh_seed() {
  const uint64_t seed = static_cast<uint64_t>(job::now_ns() % 1000003);
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// Token counts of `world` ranks, each in [0, max_tokens].
inline std::vector<int32_t> random_n(std::mt19937_64& rng, int32_t world, int32_t max_tokens) {
  std::vector<int32_t> n(static_cast<size_t>(world));
  for (auto& v : n) v = static_cast<int32_t>(rng() % static_cast<uint64_t>(max_tokens + 1));
  return n;
}

// Creates every GPU's primary context, the last one first, so GPU 0's stays current.
inline void open_gpu_contexts(int32_t gpus) {
  for (int32_t d = gpus - 1; d >= 0; --d) {
    CUDA_OK(cudaSetDevice(d));
    CUDA_OK(cudaFree(nullptr));
  }
}

// What a new session to `socket` learns from the daemon (the probe session is
// closed again); a test failure naming the error when it does not answer.
inline epd_client_info_t query_daemon(const std::string& socket) {
  epd_client_info_t info{};
  info.struct_size = sizeof info;
  epd_client_t* probe = connect_or_die(socket);
  if (!probe) {
    ADD_FAILURE() << "no session with the epd at " << socket;
    return info;
  }
  EXPECT_EQ(epd_client_query(probe, &info), EPD_OK) << epd_client_last_error(probe);
  epd_client_disconnect(probe);
  return info;
}

// How one verified step feeds the daemon.
struct Step {
  int32_t slot = 0;
  epd_weight_mode_t mode = EPD_WEIGHTS_ALREADY_APPLIED;
  bool copy_inputs = false;   // x, ids, weights copied from separate buffers (else written into send_* in place)
  bool null_weights = false;  // with copy_inputs: topk_weights NULL (weights 1)
  bool device_count = false;  // with copy_inputs: n_tokens read from device memory, max_tokens_per_rank rows copied
  bool copy_outputs = false;  // expert outputs through combine_async's expert_out (else combine_in in place)
};

class DaemonRanks {
 public:
  using DeviceOf = std::function<int32_t(int32_t rank)>;
  using NameOf = std::function<std::string(int32_t rank)>;
  // Checks of a step between the dispatch comparison and the combine.
  using AfterDispatch = std::function<void(Group& m, int32_t slot, const std::string& what)>;

  // `world` ranks, rank r on GPU device_of(r); failures name rank r as name_of(r).
  DaemonRanks(int32_t world, DeviceOf device_of, NameOf name_of = {})
      : world_(world), device_of_(std::move(device_of)), name_of_(std::move(name_of)) {
    if (!name_of_) name_of_ = [](int32_t r) { return "rank " + std::to_string(r); };
  }
  DaemonRanks(const DaemonRanks&) = delete;
  DaemonRanks& operator=(const DaemonRanks&) = delete;

  int32_t world() const { return world_; }
  std::string name(int32_t r) const { return name_of_(r); }
  epd_client_t* client(int32_t r) const { return clients_[static_cast<size_t>(r)]; }
  epd_group_t* group(int32_t r) const { return groups_[static_cast<size_t>(r)]; }
  cudaStream_t stream(int32_t r) const { return streams_[static_cast<size_t>(r)]; }
  uint8_t* base(int32_t r) const { return bases_[static_cast<size_t>(r)]; }  // workspace base in this process
  const epd_gpu_views_t& views(int32_t r, int32_t slot) const {
    return views_[static_cast<size_t>(r)][static_cast<size_t>(slot)];
  }

  // A session per rank to socket_of(r) and a non-blocking stream each on its
  // rank's GPU (the legacy stream's cudaMemcpy never waits for them).
  void connect(const std::function<std::string(int32_t rank)>& socket_of) {
    for (int32_t r = 0; r < world_; ++r) {
      clients_.push_back(connect_or_die(socket_of(r)));
      ASSERT_NE(clients_.back(), nullptr) << name(r);
      cudaStream_t s = nullptr;
      CUDA_OK(cudaSetDevice(device_of_(r)));
      CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      streams_.push_back(s);
    }
    CUDA_OK(cudaSetDevice(0));
    groups_.assign(static_cast<size_t>(world_), nullptr);
  }

  // Leaves every rank still joined (after a failure: the daemon aborts the
  // group and releases our waits), drains the streams and ends the sessions;
  // buffers and streams are freed only when every stream drained (cudaFree
  // synchronises the context). Returns whether they drained.
  bool release() {
    for (auto*& g : groups_) {
      if (g) epd_group_leave(g);
      g = nullptr;
    }
    bool idle = true;
    for (cudaStream_t s : streams_) idle = sync_within(s, kDeadlineMs) && idle;
    for (auto* c : clients_)
      if (c) epd_client_disconnect(c);
    clients_.clear();
    if (idle) {
      free_buffers();
      for (cudaStream_t s : streams_) cudaStreamDestroy(s);
    }
    streams_.clear();
    return idle;
  }

  // Makes rank r's GPU current (its workspace is mapped for that GPU only).
  void on(int32_t r) { ASSERT_EQ(cudaSetDevice(device_of_(r)), cudaSuccess) << name(r); }

  // epd_group_join of rank r without a check (join() checks).
  epd_status_t join_rank(const GroupSpec& spec, int32_t r) {
    epd_group_spec_t c = spec.to_c();
    c.rank = r;
    return epd_group_join(clients_[static_cast<size_t>(r)], &c, &groups_[static_cast<size_t>(r)]);
  }

  // Joins `ranks` of `spec` at once (each join returns when every rank is in),
  // then reads every joined rank's device addresses.
  void join(const GroupSpec& spec, const std::vector<int32_t>& ranks) {
    std::vector<epd_status_t> rc(static_cast<size_t>(world_), EPD_OK);
    std::vector<std::string> msg(static_cast<size_t>(world_));
    std::vector<std::thread> threads;
    for (int32_t r : ranks)
      threads.emplace_back([&, r] {
        rc[r] = join_rank(spec, r);
        if (rc[r] != EPD_OK) msg[r] = epd_client_last_error(client(r));
      });
    for (auto& t : threads) t.join();
    for (int32_t r : ranks) ASSERT_EQ(rc[r], EPD_OK) << "join of " << name(r) << " to " << spec.name << ": " << msg[r];
    const GroupLayout layout = GroupLayout::compute(spec);
    bases_.assign(static_cast<size_t>(world_), nullptr);
    views_.clear();  // (assign() of nested vectors trips g++ 13's -Warray-bounds at -O3)
    views_.resize(static_cast<size_t>(world_));
    for (auto& v : views_) v.resize(static_cast<size_t>(spec.slots));
    for (int32_t r : ranks)
      for (int32_t s = 0; s < spec.slots; ++s) {
        epd_gpu_views_t& v = views_[r][s];
        v.struct_size = sizeof v;
        ASSERT_EQ(epd_group_gpu_views(group(r), s, &v), EPD_OK) << name(r) << ": " << epd_group_last_error(group(r));
        EXPECT_EQ(v.device, spec.placement[static_cast<size_t>(r)].gpu) << name(r);
        EXPECT_EQ(v.capacity_rows, layout.ranks[r].recv_rows) << name(r);
        EXPECT_EQ(v.recv_scales != nullptr, layout.ranks[r].scale_blocks > 0) << name(r);
        ASSERT_NE(v.send_x, nullptr) << name(r) << ", slot " << s;
        uint8_t* base = static_cast<uint8_t*>(v.send_x) - layout.ranks[r].slot[s].send_x;
        if (s == 0) bases_[r] = base;
        ASSERT_EQ(base, bases_[r]) << "slot " << s << " of rank " << r << " is not in the rank's workspace";
      }
  }
  void join_all(const GroupSpec& spec) { join(spec, all()); }

  void leave(const std::vector<int32_t>& ranks) {
    for (int32_t r : ranks) {
      EXPECT_EQ(epd_group_leave(group(r)), EPD_OK) << name(r);
      groups_[static_cast<size_t>(r)] = nullptr;
    }
  }
  void leave_all() { leave(all()); }
  // Leaves without a check: the ranks' daemon may be gone, the leave only
  // releases this process's side.
  // A new session for rank r to `socket` (its daemon was restarted); the old
  // one is closed. Call with the rank not joined.
  void reconnect(int32_t r, const std::string& socket) {
    auto& c = clients_[static_cast<size_t>(r)];
    if (c) epd_client_disconnect(c);
    c = connect_or_die(socket);
    ASSERT_NE(c, nullptr) << name(r);
  }

  void drop(const std::vector<int32_t>& ranks) {
    for (int32_t r : ranks) {
      (void)epd_group_leave(group(r));
      groups_[static_cast<size_t>(r)] = nullptr;
    }
  }

  // Device buffers of Step's copy paths, sized for `m`, on each rank's GPU;
  // allocate while nothing of ours waits (cudaFree synchronises).
  void alloc_buffers(const Group& m) {
    free_buffers();
    const size_t M = static_cast<size_t>(m.spec.max_tokens_per_rank), K = static_cast<size_t>(m.spec.top_k);
    for (int32_t r = 0; r < world_; ++r) {
      const RankLayout& l = m.layout.ranks[r];
      on(r);
      for (size_t bytes : {M * l.in_row_bytes, M * K * 4, M * K * 4, static_cast<size_t>(l.recv_rows) * l.in_row_bytes,
                           sizeof(int32_t)}) {
        void* p = nullptr;
        CUDA_OK(cudaMalloc(&p, bytes));
        buffers_.push_back(p);
      }
    }
    CUDA_OK(cudaSetDevice(0));
  }
  // [x, ids, weights, expert_out, n_tokens] of rank r.
  void* buffer(int32_t r, int which) const { return buffers_[static_cast<size_t>(r) * kBuffersPerRank + which]; }
  int32_t* n_device(int32_t r) const { return static_cast<int32_t*>(buffer(r, 4)); }

  // Host mirror slot area -> every rank's workspace (so both executors start from the same bytes).
  void upload(Group& m, int32_t slot) { copy_slot(m, slot, cudaMemcpyHostToDevice); }
  // Every rank's workspace slot area -> the host mirror.
  void download(Group& m, int32_t slot) { copy_slot(m, slot, cudaMemcpyDeviceToHost); }

  // The daemons' outputs of `slot` equal the mirror's after HostExecutor ran on it.
  void expect_same(Group& m, int32_t slot, bool combine, const std::string& what) {
    for (int32_t r = 0; r < world_; ++r) {
      const RankLayout& l = m.layout.ranks[r];
      std::vector<uint8_t> d(l.bytes);
      const uint64_t at = l.slot[slot].send_hdr;
      on(r);
      CUDA_OK(cudaMemcpy(d.data() + at, base(r) + at, l.slot_bytes, cudaMemcpyDeviceToHost));
      const auto regions = combine ? combine_regions(m.spec, l, slot) : dispatch_regions(l, slot);
      for (auto [b, e] : regions)
        ASSERT_EQ(first_difference(d.data(), m.host[r].data(), b, e, l, slot), "")
            << what << ": " << (combine ? "combine" : "dispatch") << " differs on " << name(r) << ", slot " << slot;
    }
    CUDA_OK(cudaSetDevice(0));
  }

  void expect_status_ok(int32_t slot, const std::string& what) {
    for (int32_t r = 0; r < world_; ++r)
      ASSERT_EQ(epd_group_gpu_status(group(r), slot, kDeadlineMs), EPD_OK)
          << what << ", " << name(r) << ": " << epd_group_last_error(group(r));
  }
  void sync_all(const std::string& what) {
    for (int32_t r = 0; r < world_; ++r)
      ASSERT_TRUE(sync_within(stream(r), kDeadlineMs)) << what << ": stream of rank " << r << " did not drain";
  }

  // One dispatch + combine of every rank on st.slot through the daemons, the
  // same on the mirror with HostExecutor, outputs compared (after_dispatch, if
  // given, checks between the two). Inputs: m.stage() of the slot; a Step
  // with copies needs alloc_buffers(m) first.
  void run_step(Group& m, const Step& st, const std::string& what, const AfterDispatch& after_dispatch = {}) {
    const int32_t slot = st.slot, M = m.spec.max_tokens_per_rank, K = m.spec.top_k;
    if (st.copy_inputs || st.copy_outputs || st.device_count) {
      ASSERT_EQ(buffers_.size(), static_cast<size_t>(world_) * kBuffersPerRank) << what << ": alloc_buffers() first";
    }
    if (st.null_weights)
      for (int32_t r = 0; r < world_; ++r) {
        float* w = reinterpret_cast<float*>(m.host[r].data() + m.layout.ranks[r].slot[slot].send_weights);
        for (int32_t i = 0; i < M * K; ++i) w[i] = 1.0f;
      }
    upload(m, slot);
    if (::testing::Test::HasFatalFailure()) return;
    for (int32_t r = 0; r < world_; ++r) {
      const RankLayout& l = m.layout.ranks[r];
      const SlotOffsets& o = l.slot[slot];
      const size_t x_bytes = static_cast<size_t>(M) * l.in_row_bytes, id_bytes = static_cast<size_t>(M) * K * 4;
      on(r);
      if (st.copy_inputs) {  // the caller's copies, then poison in the send slot (ids far out of range)
        CUDA_OK(cudaMemcpy(buffer(r, 0), m.host[r].data() + o.send_x, x_bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(buffer(r, 1), m.host[r].data() + o.send_ids, id_bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(buffer(r, 2), m.host[r].data() + o.send_weights, id_bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemset(base(r) + o.send_x, 0x55, x_bytes));
        CUDA_OK(cudaMemset(base(r) + o.send_ids, 0x7f, id_bytes));
        CUDA_OK(cudaMemset(base(r) + o.send_weights, 0x55, id_bytes));
      }
      if (st.copy_outputs) {
        const size_t bytes = static_cast<size_t>(l.recv_rows) * l.in_row_bytes;
        CUDA_OK(cudaMemcpy(buffer(r, 3), m.host[r].data() + o.combine_in, bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemset(base(r) + o.combine_in, 0x55, bytes));
      }
      if (st.device_count) {
        CUDA_OK(cudaMemcpy(n_device(r), &m.n[static_cast<size_t>(r)], sizeof(int32_t), cudaMemcpyHostToDevice));
      }
    }
    CUDA_OK(cudaSetDevice(0));
    for (int32_t r = 0; r < world_; ++r) {
      epd_gpu_dispatch_args_t a{};
      a.struct_size = sizeof a;
      a.n_tokens = m.n[static_cast<size_t>(r)];
      if (st.copy_inputs) {
        a.x = buffer(r, 0);
        a.topk_ids = static_cast<const int32_t*>(buffer(r, 1));
        a.topk_weights = st.null_weights ? nullptr : static_cast<const float*>(buffer(r, 2));
        if (st.device_count) {
          a.n_tokens_device = n_device(r);
          a.n_tokens = M;
        }
      }
      ASSERT_EQ(epd_group_dispatch_async(group(r), slot, &a, stream(r)), EPD_OK)
          << what << ", " << name(r) << ": " << epd_group_last_error(group(r));
    }
    for (int32_t r = 0; r < world_; ++r)
      ASSERT_EQ(epd_group_dispatch_wait_async(group(r), slot, stream(r)), EPD_OK)
          << what << ", " << name(r) << ": " << epd_group_last_error(group(r));
    expect_status_ok(slot, what + " dispatch");
    sync_all(what + " dispatch");
    if (::testing::Test::HasFatalFailure()) return;
    HostExecutor hx(m.spec, m.host_bases());
    const Status hd = hx.dispatch(slot);
    ASSERT_TRUE(hd.is_ok()) << what << ": host dispatch: " << hd.message();
    expect_same(m, slot, false, what);
    if (::testing::Test::HasFatalFailure()) return;
    if (after_dispatch) {
      after_dispatch(m, slot, what);
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (int32_t r = 0; r < world_; ++r) {
      const int64_t rows = st.copy_outputs ? m.layout.ranks[r].recv_rows : 0;
      ASSERT_EQ(epd_group_combine_async(group(r), slot, st.mode, st.copy_outputs ? buffer(r, 3) : nullptr, rows, stream(r)),
                EPD_OK)
          << what << ", " << name(r) << ": " << epd_group_last_error(group(r));
    }
    for (int32_t r = 0; r < world_; ++r)
      ASSERT_EQ(epd_group_combine_wait_async(group(r), slot, stream(r)), EPD_OK)
          << what << ", " << name(r) << ": " << epd_group_last_error(group(r));
    expect_status_ok(slot, what + " combine");
    sync_all(what + " combine");
    if (::testing::Test::HasFatalFailure()) return;
    const Status hc = hx.combine(slot, st.mode);
    ASSERT_TRUE(hc.is_ok()) << what << ": host combine: " << hc.message();
    expect_same(m, slot, true, what + " weights=" + weight_mode_name(st.mode));
  }

 private:
  static constexpr size_t kBuffersPerRank = 5;

  std::vector<int32_t> all() const {
    std::vector<int32_t> ranks(static_cast<size_t>(world_));
    for (int32_t r = 0; r < world_; ++r) ranks[static_cast<size_t>(r)] = r;
    return ranks;
  }

  // The slot area (send header to the end of the slot) of every rank, each with its GPU current.
  void copy_slot(Group& m, int32_t slot, cudaMemcpyKind kind) {
    for (int32_t r = 0; r < world_; ++r) {
      const RankLayout& l = m.layout.ranks[r];
      const uint64_t at = l.slot[slot].send_hdr;
      uint8_t* dev = base(r) + at;
      uint8_t* host = m.host[r].data() + at;
      const bool up = kind == cudaMemcpyHostToDevice;
      on(r);
      CUDA_OK(cudaMemcpy(up ? dev : host, up ? host : dev, l.slot_bytes, kind));
    }
    CUDA_OK(cudaSetDevice(0));
  }

  void free_buffers() {
    for (void* p : buffers_) cudaFree(p);
    buffers_.clear();
  }

  int32_t world_;
  DeviceOf device_of_;
  NameOf name_of_;
  std::vector<epd_client_t*> clients_;              // [rank]
  std::vector<epd_group_t*> groups_;                // [rank]
  std::vector<cudaStream_t> streams_;               // [rank], on the rank's GPU
  std::vector<uint8_t*> bases_;                     // [rank] workspace base in this process
  std::vector<std::vector<epd_gpu_views_t>> views_;  // [rank][slot]
  std::vector<void*> buffers_;                      // [rank][x, ids, weights, expert_out, n_tokens]
};

}  // namespace epd::test
