// deprecated_names_test.cc — the 0.1 names of the C ABI (epd_dispatch, ...,
// epd_gpu_views, epd_last_error, epd_workspace_bytes), kept until 0.3, still
// link against libepd-client and behave exactly as their epd_<object>_<verb>
// replacements: the same statuses, the same messages, the same data (the
// group calls against the real epd).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "harness.h"

// This file calls the deprecated names on purpose.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace epd::test {
namespace {

using DeprecatedNamesTest = DaemonTest;

// Fresh random inputs of one round of a one-rank group (small_spec: fp32,
// hidden 32, 4 experts, top_k 2): distinct expert ids per token, so every
// token sends exactly one row to the only rank.
struct Round {
  std::vector<float> x;
  std::vector<int32_t> ids;
  int32_t n = 0;
};

Round make_round(std::mt19937& rng, const epd_group_spec_t& s) {
  Round r;
  r.n = std::uniform_int_distribution<int32_t>(1, s.max_tokens_per_rank)(rng);
  r.x.resize(static_cast<size_t>(r.n) * s.hidden);
  std::uniform_real_distribution<float> val(-4.0f, 4.0f);
  for (float& v : r.x) v = val(rng);
  std::uniform_int_distribution<int32_t> expert(0, s.num_experts - 1);
  for (int32_t t = 0; t < r.n; ++t) {
    const int32_t a = expert(rng);
    const int32_t b = (a + 1 + std::uniform_int_distribution<int32_t>(0, s.num_experts - 2)(rng)) % s.num_experts;
    r.ids.push_back(a);
    r.ids.push_back(b);
  }
  return r;
}

epd_dispatch_args_t args_of(const Round& r) {
  epd_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.x = r.x.data();
  a.topk_ids = r.ids.data();
  a.id_dtype = EPD_ID_INT32;
  a.n_tokens = r.n;
  return a;
}

// Identity experts: combine_in = the received rows, so with one rank and
// EPD_WEIGHTS_ONES each token comes back as its own x (one row per token).
void identity_experts(const epd_dispatch_result_t& res) {
  ASSERT_EQ(res.x_row_bytes, res.combine_row_bytes);
  std::memcpy(res.combine_in, res.x, static_cast<size_t>(res.total_rows) * res.x_row_bytes);
}

TEST_F(DeprecatedNamesTest, HostCallsAndLastErrorBehaveAsTheNewNames) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  epd_client_t* c = connect_or_die(socket());
  ASSERT_NE(c, nullptr);
  const epd_group_spec_t s = small_spec("old_names", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(c, &s, &g), EPD_OK) << epd_client_last_error(c);

  // One round through the old names, one through the new, with fresh inputs:
  // both give each token back (stale output from the other round would show).
  for (const bool old_names : {true, false}) {
    SCOPED_TRACE(old_names ? "0.1 names" : "0.2 names");
    const Round r = make_round(rng, s);
    const epd_dispatch_args_t a = args_of(r);
    epd_dispatch_result_t res{};
    res.struct_size = sizeof res;
    const void* out = nullptr;
    if (old_names) {
      ASSERT_EQ(epd_dispatch(g, 1, &a), EPD_OK) << epd_last_error(g);
      ASSERT_EQ(epd_dispatch_wait(g, 1, 5000, &res), EPD_OK) << epd_last_error(g);
      identity_experts(res);
      ASSERT_EQ(epd_combine(g, 1, EPD_WEIGHTS_ONES), EPD_OK) << epd_last_error(g);
      ASSERT_EQ(epd_combine_wait(g, 1, 5000, &out), EPD_OK) << epd_last_error(g);
    } else {
      ASSERT_EQ(epd_group_dispatch(g, 1, &a), EPD_OK) << epd_group_last_error(g);
      ASSERT_EQ(epd_group_dispatch_wait(g, 1, 5000, &res), EPD_OK) << epd_group_last_error(g);
      identity_experts(res);
      ASSERT_EQ(epd_group_combine(g, 1, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(g);
      ASSERT_EQ(epd_group_combine_wait(g, 1, 5000, &out), EPD_OK) << epd_group_last_error(g);
    }
    EXPECT_EQ(res.total_rows, r.n);
    ASSERT_NE(out, nullptr);
    EXPECT_EQ(std::memcmp(out, r.x.data(), r.x.size() * sizeof(float)), 0);
  }

  // A group's error: the old and the new call fail alike, and the old
  // accessor returns the new one's string.
  epd_dispatch_args_t bad{};
  bad.struct_size = sizeof bad;
  EXPECT_EQ(epd_dispatch(g, 2, &bad), EPD_ERR_BAD_SLOT);
  const std::string old_msg = epd_last_error(g);
  EXPECT_NE(old_msg.find("slot = 2"), std::string::npos) << old_msg;
  EXPECT_EQ(old_msg, epd_group_last_error(g));
  EXPECT_EQ(epd_group_dispatch(g, 2, &bad), EPD_ERR_BAD_SLOT);
  EXPECT_EQ(old_msg, epd_group_last_error(g));
  EXPECT_EQ(epd_combine(g, 0, EPD_WEIGHTS_ONES), epd_group_combine(g, 0, EPD_WEIGHTS_ONES));
  EXPECT_EQ(std::string(epd_last_error(g)), epd_group_last_error(g));

  // A client's error (a join refused on the client's side).
  epd_group_spec_t invalid = small_spec("old_names", 1, 0);
  invalid.top_k = 0;
  epd_group_t* none = nullptr;
  EXPECT_EQ(epd_group_join(c, &invalid, &none), EPD_ERR_INVALID_SPEC);
  const std::string client_msg = epd_client_last_error(c);
  EXPECT_NE(client_msg.find("top_k"), std::string::npos) << client_msg;
  EXPECT_EQ(client_msg, epd_last_error(c));

  // Handles of the wrong kind get a fixed answer, never a crash.
  EXPECT_STREQ(epd_client_last_error(reinterpret_cast<const epd_client_t*>(g)), "not an epd_client_t handle");
  EXPECT_STREQ(epd_group_last_error(reinterpret_cast<const epd_group_t*>(c)), "not an epd_group_t handle");
  EXPECT_STREQ(epd_group_last_error(nullptr), "");
  const int not_a_handle = 0x12345678;
  EXPECT_STREQ(epd_last_error(&not_a_handle), "not an epd handle");

  EXPECT_EQ(epd_group_leave(g), EPD_OK);
  epd_client_disconnect(c);
}

// NULL: the calling thread's last handle-less failure (a connect).
TEST(DeprecatedNames, LastErrorOfNullIsTheFailedConnect) {
  epd_client_t* c = nullptr;
  const std::string nowhere = "/nonexistent-epd-test-dir/epd.sock";
  EXPECT_EQ(epd_client_connect(nowhere.c_str(), &c), EPD_ERR_DAEMON_LOST);
  EXPECT_EQ(c, nullptr);
  const std::string msg = epd_client_last_error(nullptr);
  EXPECT_NE(msg.find(nowhere), std::string::npos) << msg;
  EXPECT_EQ(msg, epd_last_error(nullptr));
}

// The GPU calls' old names on a host group: the same refusal, the same message.
TEST_F(DeprecatedNamesTest, GpuCallsBehaveAsTheNewNames) {
  epd_client_t* c = connect_or_die(socket());
  ASSERT_NE(c, nullptr);
  const epd_group_spec_t s = small_spec("old_gpu_names", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(c, &s, &g), EPD_OK) << epd_client_last_error(c);
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  epd_gpu_views_t v{};
  v.struct_size = sizeof v;
  struct Pair {
    const char* name;
    epd_status_t old_rc, new_rc;
    std::string old_msg, new_msg;
  };
  std::vector<Pair> pairs;
  auto both = [&](const char* name, auto old_call, auto new_call) {
    Pair p{name, old_call(), EPD_OK, {}, {}};
    p.old_msg = epd_group_last_error(g);
    p.new_rc = new_call();
    p.new_msg = epd_group_last_error(g);
    pairs.push_back(p);
  };
  both("dispatch_async", [&] { return epd_dispatch_async(g, 0, &a, nullptr); },
       [&] { return epd_group_dispatch_async(g, 0, &a, nullptr); });
  both("dispatch_wait_async", [&] { return epd_dispatch_wait_async(g, 0, nullptr); },
       [&] { return epd_group_dispatch_wait_async(g, 0, nullptr); });
  both("combine_async", [&] { return epd_combine_async(g, 0, EPD_WEIGHTS_ONES, nullptr, 0, nullptr); },
       [&] { return epd_group_combine_async(g, 0, EPD_WEIGHTS_ONES, nullptr, 0, nullptr); });
  both("combine_wait_async", [&] { return epd_combine_wait_async(g, 0, nullptr); },
       [&] { return epd_group_combine_wait_async(g, 0, nullptr); });
  both("gpu_status", [&] { return epd_gpu_status(g, 0, 10); }, [&] { return epd_group_gpu_status(g, 0, 10); });
  both("gpu_views", [&] { return epd_gpu_views(g, 0, &v); }, [&] { return epd_group_gpu_views(g, 0, &v); });
  for (const Pair& p : pairs) {
    EXPECT_EQ(p.old_rc, EPD_ERR_UNSUPPORTED) << p.name;
    EXPECT_EQ(p.new_rc, EPD_ERR_UNSUPPORTED) << p.name;
    EXPECT_EQ(p.old_msg, p.new_msg) << p.name;
    EXPECT_NE(p.new_msg.find(std::string("epd_group_") + p.name), std::string::npos) << p.new_msg;
  }
  EXPECT_EQ(v.send_x, nullptr);  // outputs written only on success
  EXPECT_EQ(epd_dispatch_async(nullptr, 0, &a, nullptr), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_gpu_status(nullptr, 0, 10), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_leave(g), EPD_OK);
  epd_client_disconnect(c);
}

// epd_workspace_bytes is epd_group_spec_workspace_bytes: the same bytes (the
// per-rank sizes of epd_group_workspace_bytes summed over a device's ranks),
// the same refusals.
TEST(DeprecatedNames, WorkspaceBytesIsTheSpecQuery) {
  epd_group_spec_t s = small_spec("bytes", 4, 0);
  const epd_placement_t where[4] = {{0, 0}, {0, 0}, {0, 1}, {1, 0}};
  s.placement = where;
  std::vector<uint64_t> per_rank(4);
  for (int32_t r = 0; r < 4; ++r) ASSERT_EQ(epd_group_workspace_bytes(&s, r, &per_rank[r]), EPD_OK);
  const struct {
    int32_t node, gpu;
    uint64_t want;
  } cases[] = {{0, 0, per_rank[0] + per_rank[1]}, {0, 1, per_rank[2]}, {1, 0, per_rank[3]}, {0, EPD_GPU_HOST, 0}};
  for (const auto& k : cases) {
    uint64_t old_bytes = 1, new_bytes = 2;
    EXPECT_EQ(epd_workspace_bytes(&s, k.node, k.gpu, &old_bytes), EPD_OK);
    EXPECT_EQ(epd_group_spec_workspace_bytes(&s, k.node, k.gpu, &new_bytes), EPD_OK);
    EXPECT_EQ(old_bytes, k.want) << "node " << k.node << ", gpu " << k.gpu;
    EXPECT_EQ(new_bytes, k.want) << "node " << k.node << ", gpu " << k.gpu;
  }
  s.hidden = 0;
  uint64_t untouched = 7;
  EXPECT_EQ(epd_workspace_bytes(&s, 0, 0, &untouched), EPD_ERR_INVALID_SPEC);
  const std::string old_msg = epd_client_last_error(nullptr);
  EXPECT_NE(old_msg.find("hidden"), std::string::npos) << old_msg;
  EXPECT_EQ(epd_group_spec_workspace_bytes(&s, 0, 0, &untouched), EPD_ERR_INVALID_SPEC);
  EXPECT_EQ(old_msg, epd_client_last_error(nullptr));
  EXPECT_EQ(untouched, 7u);  // outputs written only on success
  EXPECT_EQ(epd_workspace_bytes(nullptr, 0, 0, &untouched), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_spec_workspace_bytes(&s, 0, 0, nullptr), EPD_ERR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace epd::test

#pragma GCC diagnostic pop
