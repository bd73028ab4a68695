// daemon_bounds_test.cc — issue 14, findings 2 and 8 against the real `epd`:
// a JOIN carrying the spec whose workspace wrapped past 2^64 (sent raw, since
// libepd-client refuses it before sending) gets EPD_ERR_INVALID_SPEC naming
// the fields and the bytes, the daemon stays up, and a host group created
// before it keeps doing verified dispatch/combine round trips. Also through
// the daemon: n_tokens = -1 is EPD_ERR_INVALID_ARGUMENT naming the value, and
// a group whose expert_owner leaves a rank with no expert works (that rank
// receives nothing). Label: security.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>

#include "harness.h"
#include "protocol.h"
#include "spec.h"

namespace epd::test {
namespace {

using SecurityDaemonTest = DaemonTest;

epd_group_spec_t issue_spec() {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::strcpy(s.name, "huge");
  s.generation = 1;
  s.world_size = 1024;
  s.rank = 0;
  s.layout = EPD_LAYOUT_EXPERT_MAJOR;
  s.num_experts = 65536;
  s.top_k = 8;
  s.hidden = 262144;
  s.max_tokens_per_rank = 32767;
  s.slots = 8;
  return s;
}

// One verified dispatch/combine of rank `spec.rank` on `slot` (fp32,
// rank_major, weights ONES): every expert output row is 2 * its received x
// row, so out[t] = 2 * x[t] * (number of distinct destination ranks of t).
// The destination count is computed here from expert_owner, not by epd.
void round_trip(epd_group_t* g, const epd_group_spec_t& spec, int32_t slot, uint64_t seed) {
  SCOPED_TRACE("rank " + std::to_string(spec.rank) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int32_t n = static_cast<int32_t>(rng() % (spec.max_tokens_per_rank + 1));
  const int32_t H = spec.hidden, K = spec.top_k;
  std::vector<float> x(static_cast<size_t>(n) * H);
  for (float& v : x) v = static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 64.0f;
  std::vector<int32_t> ids(static_cast<size_t>(n) * K, -1);
  for (int32_t t = 0; t < n; ++t)
    for (int32_t k = 0; k < K; ++k) {
      if (rng() % 5 == 0) continue;  // masked
      const int32_t e = static_cast<int32_t>(rng() % spec.num_experts);
      bool dup = false;
      for (int32_t j = 0; j < k; ++j) dup = dup || ids[static_cast<size_t>(t) * K + j] == e;
      if (!dup) ids[static_cast<size_t>(t) * K + k] = e;
    }
  std::vector<float> w(static_cast<size_t>(n) * K, 1.0f);
  epd_dispatch_args_t a{sizeof(epd_dispatch_args_t), x.data(), ids.data(), EPD_ID_INT32, w.data(), n};
  ASSERT_EQ(epd_group_dispatch(g, slot, &a), EPD_OK) << epd_group_last_error(g);
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  ASSERT_EQ(epd_group_dispatch_wait(g, slot, 10000, &res), EPD_OK) << epd_group_last_error(g);
  int32_t local = 0;
  for (int32_t e = 0; e < spec.num_experts; ++e)
    local += (spec.expert_owner ? spec.expert_owner[e] : GroupSpec::contiguous_owner(e, spec.num_experts,
                                                                                        spec.world_size)) == spec.rank;
  EXPECT_EQ(res.num_local_experts, local);
  if (local == 0) {
    EXPECT_EQ(res.total_rows, 0);
  }
  for (int32_t r = 0; r < res.total_rows; ++r) {
    const float* in = static_cast<const float*>(res.x) + static_cast<size_t>(r) * H;
    float* out = static_cast<float*>(res.combine_in) + static_cast<size_t>(r) * H;
    for (int32_t i = 0; i < H; ++i) out[i] = 2.0f * in[i];
  }
  ASSERT_EQ(epd_group_combine(g, slot, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(g);
  const void* outp = nullptr;
  ASSERT_EQ(epd_group_combine_wait(g, slot, 10000, &outp), EPD_OK) << epd_group_last_error(g);
  const float* out = static_cast<const float*>(outp);
  for (int32_t t = 0; t < n; ++t) {
    std::vector<int32_t> dests;
    for (int32_t k = 0; k < K; ++k) {
      const int32_t e = ids[static_cast<size_t>(t) * K + k];
      if (e < 0) continue;
      const int32_t o = spec.expert_owner ? spec.expert_owner[e]
                                          : GroupSpec::contiguous_owner(e, spec.num_experts, spec.world_size);
      if (std::find(dests.begin(), dests.end(), o) == dests.end()) dests.push_back(o);
    }
    for (int32_t i = 0; i < H; ++i) {
      const float want = 2.0f * x[static_cast<size_t>(t) * H + i] * static_cast<float>(dests.size());
      ASSERT_EQ(out[static_cast<size_t>(t) * H + i], want) << "token " << t << " element " << i;
    }
  }
}

TEST_F(SecurityDaemonTest, WrappingSpecRefusedDaemonAliveOtherGroupWorks) {
  epd_client_t* c = connect_or_die(socket());
  const epd_group_spec_t alive = small_spec("alive", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(c, &alive, &g), EPD_OK) << epd_client_last_error(c);
  round_trip(g, alive, 0, 1);

  // The client library refuses the spec itself ...
  epd_client_t* c2 = connect_or_die(socket());
  const epd_group_spec_t huge = issue_spec();
  epd_group_t* gh = nullptr;
  EXPECT_EQ(epd_group_join(c2, &huge, &gh), EPD_ERR_INVALID_SPEC);
  EXPECT_NE(std::string(epd_client_last_error(c2)).find("group workspace needs more than"), std::string::npos)
      << epd_client_last_error(c2);
  epd_client_disconnect(c2);

  // ... so send the JOIN raw, as a hostile client would.
  const int fd = raw_connect(socket());
  ASSERT_GE(fd, 0);
  int32_t st = 0;
  std::string msg;
  uint16_t type = 0;
  ASSERT_TRUE(raw_send(fd, proto::encode(proto::Hello{static_cast<uint32_t>(getpid()), "hostile"}, 1)));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  ASSERT_EQ(type, static_cast<uint16_t>(proto::MsgType::kHelloReply));
  auto spec = GroupSpec::from_c(huge);
  ASSERT_TRUE(spec.is_ok());
  ASSERT_TRUE(raw_send(fd, proto::encode(proto::Join{spec.value()}, 2)));
  ASSERT_TRUE(raw_reply(fd, 10000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_INVALID_SPEC) << msg;
  for (const char* part : {"group workspace needs more than 18446744073709551615", "1099511627776",
                           "world_size = 1024", "slots = 8", "max_tokens_per_rank = 32767", "hidden = 262144",
                           "layout = expert_major"})
    EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  close(fd);

  // The daemon is alive and the first group still works, on both slots.
  EXPECT_TRUE(daemon().child().running());
  round_trip(g, alive, 1, 2);
  round_trip(g, alive, 0, 3);
  epd_client_info_t info{};
  info.struct_size = sizeof info;
  EXPECT_EQ(epd_client_query(c, &info), EPD_OK) << epd_client_last_error(c);
  epd_group_leave(g);
  epd_client_disconnect(c);
}

TEST_F(SecurityDaemonTest, NegativeTokenCountIsAnInvalidArgumentNamingIt) {
  epd_client_t* c = connect_or_die(socket());
  const epd_group_spec_t s = small_spec("neg", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(c, &s, &g), EPD_OK) << epd_client_last_error(c);
  std::vector<float> x(32, 1.0f);
  std::vector<int32_t> ids = {0, 1};
  epd_dispatch_args_t a{sizeof(epd_dispatch_args_t), x.data(), ids.data(), EPD_ID_INT32, nullptr, -1};
  EXPECT_EQ(epd_group_dispatch(g, 0, &a), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(epd_group_last_error(g)).find("n_tokens = -1 is negative"), std::string::npos)
      << epd_group_last_error(g);
  a.n_tokens = s.max_tokens_per_rank + 1;
  EXPECT_EQ(epd_group_dispatch(g, 0, &a), EPD_ERR_CAPACITY_EXCEEDED);
  EXPECT_NE(std::string(epd_group_last_error(g)).find("n_tokens = 9"), std::string::npos) << epd_group_last_error(g);
  // Nothing was rung: the slot still works.
  round_trip(g, s, 0, 4);
  epd_group_leave(g);
  epd_client_disconnect(c);
}

TEST_F(SecurityDaemonTest, ARankWithNoExpertReceivesNothingAndTheGroupWorks) {
  // Ranks 1 and 2 of 3 own nothing: every expert is rank 0's.
  static const int32_t owner[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<std::thread> ranks;
  for (int32_t r = 0; r < 3; ++r)
    ranks.emplace_back([&, r] {
      epd_client_t* c = connect_or_die(socket());
      epd_group_spec_t s = small_spec("lopsided", 3, r);
      s.num_experts = 8;
      s.expert_owner = owner;
      epd_group_t* g = nullptr;
      ASSERT_EQ(epd_group_join(c, &s, &g), EPD_OK) << epd_client_last_error(c);
      for (int step = 0; step < 4; ++step) round_trip(g, s, step % 2, 100 + 10 * step + r);
      epd_group_leave(g);
      epd_client_disconnect(c);
    });
  for (auto& t : ranks) t.join();
}

}  // namespace
}  // namespace epd::test
